"""attnbook: the kernels, models, plots and widgets of *Attention Mechanisms: An Interactive Textbook*.

Every function says in its docstring which section of the book explains it.
"""
from .attention import attention
from .masks import causal_mask, make_mask, padding_mask, sliding_window_mask
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .scores import (AdditiveScore, additive_scores, cosine_scores, dot_scores, general_scores,
                     scaled_dot_scores)
from .softmax import entropy, masked_softmax

__version__ = "0.1.0"

__all__ = [
    "AdditiveScore", "MultiHeadAttention", "additive_scores", "attention", "causal_mask",
    "cosine_scores", "dot_scores", "entropy", "general_scores", "make_mask", "masked_softmax",
    "merge_heads", "padding_mask", "scaled_dot_scores", "sliding_window_mask", "split_heads",
]
