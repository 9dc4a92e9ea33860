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
``vision``          SE, CBAM, attention gate, non-local block, ViT              3.6, 4.3
``positions``       sinusoidal, learned, relative, T5, RoPE, ALiBi               5.1
``linear``          linear attention, Performer (FAVOR+)                         5.2
``lowrank``         Nyström, Linformer, singular values of attention             5.2
``flash``           tiled attention with the online softmax                      5.3
``checkpoint``      activation checkpointing and its memory                      5.3
``interpret``       rollout, gradients, integrated gradients, Grad-CAM, occlusion  5.4
``bench``           time and memory of every kernel against SDPA                 5.2, 5.3
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
