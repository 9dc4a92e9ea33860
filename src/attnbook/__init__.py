"""attnbook: the kernels, models, plots and widgets of *Attention Mechanisms: An Interactive Textbook*.

Every function says in its docstring which section of the book explains it. The core (the
three steps of attention, masks, multi-head attention) is importable from here; each family
of variants lives in a module named for it:

==================  ==========================================================  =======
module              what it holds                                               section
==================  ==========================================================  =======
``rnn``             Bahdanau and Luong attention, RNN encoder and decoder        1.2, 3.1
``hard``            hard (sampled) attention, REINFORCE, hybrid attention        3.1
``transformer``     self/cross-attention, encoder and decoder layers, KV cache   3.2, 4.1
``axial``           axial attention over rows then columns                       3.4
``sparse``          sliding window, block, global, strided, LSH patterns         3.5
``vision``          SE, CBAM, attention gate, non-local block, ViT              3.6, 4.4
``positions``       sinusoidal, learned, relative, T5, RoPE, ALiBi               5.1
``linear``          linear attention, Performer (FAVOR+)                         5.2
``lowrank``         Nyström, Linformer, singular values of attention             5.2
``flash``           tiled attention with the online softmax                      5.3
``checkpoint``      activation checkpointing and its memory                      5.3
``interpret``       rollout, gradients, integrated gradients, Grad-CAM, occlusion  5.4
``bench``           time and memory of every kernel against SDPA                 5.2, 5.3
==================  ==========================================================  =======

The chapters' data, tiny models and measurements live beside the kernels, one module per
section, so that a notebook shows only the lines that teach:

==================  ==========================================================  =======
module              what it holds                                               section
==================  ==========================================================  =======
``scenes``          synthetic cat/dog scenes with a head to find                 1.1
``pooling``         mean, fixed and attention pooling; a patch classifier        1.1
``seq2seq``         sequence tasks, an RNN encoder-decoder with/without attention 1.2
``history``         the milestones of attention and the timeline figure          1.3
``needle``          needle-in-a-haystack retrieval, REINFORCE gradient variance  3.1
``order``           order-dependent tasks, permutation tests, cross-attention    3.2
``heads``           a two-relation task, a two-head model, head ablation         3.3
``images``          synthetic images, row/column masks, score counts             3.4
``reach``           receptive fields of sparse patterns, LSH bucket statistics   3.5
``shapes``          synthetic images for segmentation and long-range tasks       3.6
``convnets``        tiny CNNs and U-Nets with and without attention blocks       3.6
``translation``     written dates to ISO dates, an encoder-decoder Transformer   4.1
``families``        BERT masking, GPT and LLaMA blocks (RMSNorm, SwiGLU, GQA)    4.2
``minilm``          all-MiniLM-L6-v2: checked weights, WordPiece, the encoder    4.3
``vision_apps``     ViT maps on digits, gated CNNs, a text-to-image denoiser     4.4
``audio``           synthetic speech and melodies, LAS, skewed relative attention 4.5
``multimodal``      captioned digits, a CLIP-style model, video-text alignment   4.6
``alignment``       the modality gap, attribute and word-order probes of CLIP    6.3
``extrapolation``   a copy-back task and a small model for each position scheme  5.1
``approx``          inputs, implied weight matrices and errors of approximations 5.2
``roofline``        FLOPs, bytes, saved tensors, tile frames, achieved GFLOP/s   5.3
``explain``         a small ViT on scenes, attribution scores, attention edits   5.4
``budget``          memory caps, safe lengths, power-law fits and projections    6.1
``digits``          scikit-learn's 8×8 digits, a small ViT and a CNN to compare  4.4, 6.2
``adaptive_span``   learned attention spans (soft ramp masks) per head or token  6.4
``knowledge_graph`` a generated knowledge graph and the attention mask it gives  6.4
``top_down``        cue-driven (top-down) against saliency (bottom-up) attention 6.4
``atlas``           every variant's steps, costs and uses; choosing one          7.1
``train``           seeding and the shared training loop                         all
``viz``             heatmaps, head grids, arcs between tokens                    all
``widgets``         the controls and explorers that work in the static book      all
``exercises``       checks that tell a student whether an answer is right       all
==================  ==========================================================  =======
"""
from . import (axial, checkpoint, flash, hard, interpret, linear, lowrank, positions, rnn, sparse,
               transformer, vision)
from .attention import attention
from .flash import tiled_attention
from .linear import linear_attention, performer_attention
from .lowrank import linformer_attention, nystrom_attention
from .masks import causal_mask, make_mask, padding_mask, sliding_window_mask
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .scores import (AdditiveScore, additive_scores, cosine_scores, dot_scores, general_scores,
                     scaled_dot_scores)
from .softmax import entropy, masked_softmax

__version__ = "0.2.0"

__all__ = [
    "AdditiveScore", "MultiHeadAttention", "additive_scores", "attention", "axial", "causal_mask",
    "checkpoint", "cosine_scores", "dot_scores", "entropy", "flash", "general_scores", "hard",
    "interpret", "linear", "linear_attention", "linformer_attention", "lowrank", "make_mask",
    "masked_softmax", "merge_heads", "nystrom_attention", "padding_mask", "performer_attention",
    "positions", "rnn", "scaled_dot_scores", "sliding_window_mask", "sparse", "split_heads",
    "tiled_attention", "transformer", "vision",
]
