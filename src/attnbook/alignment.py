"""What a contrastive image-text model gets wrong: probes of the CLIP of §4.6 (§6.3).

Each function measures one failure of an aligned space: attribute words that are ignored
(:func:`attribute_accuracy`: the true caption against the same caption with one attribute
flipped), word order (:func:`shuffle_words`), and the **modality gap** (Liang et al., 2022):
image and text embeddings occupy different regions of the sphere, measured by the distance
between their centroids (:func:`modality_gap`) and removed by :func:`close_gap`.
"""
import torch
import torch.nn.functional as F

from . import _checks
from .multimodal import (CLIP, EOS, LEAN, PAD, THICKNESS, WORD_INDEX, CaptionedDigits, _tokens, caption,
                         similarity, tokenize)

FLIPS = {"thickness": THICKNESS, "leaning": LEAN}


def _embeddings(image_emb, text_emb):
    for t, name in ((image_emb, "image_emb"), (text_emb, "text_emb")):
        _checks.tensor(t, name)
        if t.dim() != 2:
            raise ValueError(f"{name} must be (N, D), got shape {tuple(t.shape)}")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb has width {image_emb.shape[1]} but text_emb has {text_emb.shape[1]}")
    return image_emb, text_emb


def modality_gap(image_emb, text_emb):
    """‖(1/N) Σ_i f_i − (1/M) Σ_j g_j‖: the distance between the centroids of the two modalities.

    image_emb (N, D) and text_emb (M, D), usually unit vectors -> a float. Liang et al. (2022)
    found this gap in every contrastive model they examined: the two modalities live in
    separate cones of the sphere. Cost O((N + M)·D). Explained in §6.3.
    """
    image_emb, text_emb = _embeddings(image_emb, text_emb)
    return (image_emb.mean(0) - text_emb.mean(0)).norm().item()


def close_gap(image_emb, text_emb, amount=1.0):
    """Move both modalities towards each other along Δ = mean f − mean g, then renormalise.

    f'_i = normalise(f_i − (a/2)·Δ), g'_j = normalise(g_j + (a/2)·Δ) with a = ``amount``
    (a = 1 makes the centroids coincide before renormalisation; a < 0 widens the gap). The
    intervention of Liang et al. (2022). -> (f', g'). Cost O((N + M)·D). Explained in §6.3.
    """
    image_emb, text_emb = _embeddings(image_emb, text_emb)
    delta = image_emb.mean(0) - text_emb.mean(0)
    return (F.normalize(image_emb - amount / 2 * delta, dim=-1),
            F.normalize(text_emb + amount / 2 * delta, dim=-1))


def flipped_captions(data, indices, attribute, *, drop=False):
    """The captions of ``indices`` with one attribute turned into its opposite, as tokens (n, L).

    attribute "thickness" swaps thick and thin, "leaning" swaps left and right; with
    ``drop=True`` the attribute's words are left out instead. The template and every other
    word stay. Only examples whose caption mentions the attribute make sense (see
    :func:`attribute_accuracy`). Explained in §6.3.
    """
    if not isinstance(data, CaptionedDigits):
        raise TypeError(f"data must be CaptionedDigits, got {type(data).__name__}")
    if attribute not in FLIPS:
        raise ValueError(f"attribute must be one of {sorted(FLIPS)}, got {attribute!r}")
    words = []
    for n in indices.tolist():
        values = {"thickness": data.thickness[n].item(), "leaning": data.leaning[n].item()}
        values[attribute] = 0 if drop else -values[attribute]
        words.append(caption(data.labels[n].item(), values["thickness"], values["leaning"], data.template[n].item()))
    return tokenize(words, length=data.tokens.shape[1])


def attribute_accuracy(model, data, indices, attribute, *, drop=False):
    """(1/n) Σ_i [⟨f_i, g(t_i)⟩ > ⟨f_i, g(flip(t_i))⟩] over the examples that mention the attribute.

    A two-way choice between the true caption and the same caption with the attribute flipped
    (or, with ``drop=True``, left out; :func:`flipped_captions`): chance is 1/2, and a model
    that ignores the attribute word scores 1/2 too (ties count as failures).
    -> (accuracy, n). Cost: 3n encoder passes. Explained in §6.3.
    """
    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a CLIP, got {type(model).__name__}")
    keep = indices[getattr(data, attribute)[indices] != 0]
    if len(keep) == 0:
        raise ValueError(f"no example among indices mentions {attribute}")
    f_true = similarity(model, data.images[keep], data.tokens[keep]).diag()
    f_flip = similarity(model, data.images[keep], flipped_captions(data, keep, attribute, drop=drop)).diag()
    return (f_true > f_flip).double().mean().item(), len(keep)


def shuffle_words(tokens, generator=None):
    """Each caption's words in a random order; [EOS] and padding stay at the end. (N, L) int64.

    A model whose text encoder ignores order gives the shuffled caption the same embedding
    (a bag of words, Yuksekgonul et al., 2023). Cost O(N·L). Explained in §6.3.
    """
    tokens = _tokens(tokens)
    out = tokens.clone()
    for row in out:
        words = ((row != WORD_INDEX[EOS]) & (row != WORD_INDEX[PAD])).sum().item()
        row[:words] = row[:words][torch.randperm(words, generator=generator)]
    return out
