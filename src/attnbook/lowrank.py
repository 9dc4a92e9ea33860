"""Low-rank attention: the (L, L) softmax matrix is close to a matrix of small rank (§5.2).

* :func:`attention_singular_values`, :func:`effective_rank`: measure how low the rank is.
* :func:`nystrom_attention`: rebuild the matrix from m landmark rows and columns
  (Nyströmformer, Xiong et al. 2021).
* :func:`linformer_attention`, :class:`LinformerSelfAttention`: project the keys and values
  along the sequence to k ≪ L positions (Linformer, Wang et al. 2020).

The approximations never form the (Lq, Lk) weights, so they return the output only.
"""
import math

import torch
from torch import nn

from . import _checks
from .attention import attention, check_qkv
from .multihead import merge_heads, split_heads
from .softmax import masked_softmax


def _scale(scale, d):
    return 1.0 / math.sqrt(d) if scale is None else _checks.positive(scale, "scale")


def attention_singular_values(query, key, mask=None, *, scale=None):
    """Singular values σ_1 ≥ … ≥ σ_r ≥ 0 of the weights A = softmax(QKᵀ·scale), scale = 1/√d.

    query (..., Lq, d), key (..., Lk, d) -> (..., min(Lq, Lk)), sorted in decreasing order.
    ``mask`` as in :func:`attnbook.attention` (True = may attend).
    Cost O(Lq·Lk·(d + min(Lq, Lk))) time, O(Lq·Lk) memory. Explained in §5.2.
    """
    check_qkv(query, key, key)
    scores = (query @ key.transpose(-2, -1)) * _scale(scale, query.shape[-1])
    return torch.linalg.svdvals(masked_softmax(scores, mask))


def effective_rank(sv, energy=0.9):
    """The smallest r with σ_1² + … + σ_r² ≥ energy·Σ σ_i²: the rank that keeps that energy.

    By Eckart–Young, the best rank-r approximation then has a squared Frobenius error of at
    most (1 − energy)·‖A‖²_F. sv (..., n) ≥ 0 -> (...,) int64; 0 for an all-zero matrix.
    Cost O(n log n). Explained in §5.2.
    """
    _checks.tensor(sv, "sv", min_dim=1)
    if not (sv >= 0).all():
        raise ValueError(f"sv must hold singular values ≥ 0 (and no NaN), got min {sv.min().item()}")
    _checks.positive(energy, "energy")
    if energy > 1:
        raise ValueError(f"energy must lie in (0, 1], got {energy}")
    power = sv.sort(dim=-1, descending=True).values ** 2
    kept = power.cumsum(-1)
    total = kept[..., -1:]
    rank = (kept < energy * total).sum(-1) + 1
    return torch.where(total[..., 0] > 0, rank, torch.zeros_like(rank))


def landmark_means(x, landmarks):
    """Landmarks x̃_s = mean of the s-th of m contiguous segments of the sequence.

    x (..., L, d) -> (..., m, d), 1 ≤ m ≤ L. When m does not divide L, the first L mod m
    segments hold ⌈L/m⌉ positions and the others ⌊L/m⌋ (as ``torch.tensor_split``);
    with m = L every token is its own landmark. Computed as P x with the (m, L) averaging
    matrix P: O(m·L·d) time, O(m·L) memory. Explained in §5.2.
    """
    _checks.tensor(x, "x", min_dim=2)
    length = x.shape[-2]
    _checks.positive(landmarks, "landmarks", integer=True)
    if landmarks > length:
        raise ValueError(f"landmarks={landmarks} exceeds the sequence length L={length} of {tuple(x.shape)}")
    small, extra = divmod(length, landmarks)
    sizes = torch.full((landmarks,), small, device=x.device)
    sizes[:extra] += 1
    segment = torch.repeat_interleave(torch.arange(landmarks, device=x.device), sizes)  # (L,)
    averaging = (segment == torch.arange(landmarks, device=x.device)[:, None]).to(x.dtype)
    return (averaging / sizes[:, None].to(x.dtype)) @ x


def iterative_pinv(matrix, iterations=6):
    """Moore–Penrose pseudo-inverse A⁺ by Z ← ¼ Z(13I − AZ(15I − AZ(7I − AZ))).

    Starts from Z₀ = Aᵀ/(‖A‖₁‖A‖∞), which makes the iteration converge to A⁺, with
    order 3 once close (Razavi et al. 2014, as in the Nyströmformer); matrices that are
    badly conditioned need more iterations. matrix (..., m, n) -> (..., n, m).
    Cost O(iterations·m²·(m + n)) time, O(m·(m + n)) memory; only matrix products, so fast
    on a GPU. Explained in §5.2.
    """
    _checks.tensor(matrix, "matrix", min_dim=2)
    _checks.positive(iterations, "iterations", integer=True)
    a = matrix
    norm_1 = a.abs().sum(-2).amax(-1)  # largest column sum
    norm_inf = a.abs().sum(-1).amax(-1)  # largest row sum
    z = a.transpose(-2, -1) / (norm_1 * norm_inf).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(query, key, value, *, landmarks, pinv_iterations=6, scale=None):
    """Nyström attention F · A⁺ · (B V) ≈ softmax(QKᵀ·scale) V with m landmarks Q̃, K̃.

    F = softmax(Q K̃ᵀ·scale) (Lq, m), A = softmax(Q̃ K̃ᵀ·scale) (m, m),
    B = softmax(Q̃ Kᵀ·scale) (m, Lk); Q̃, K̃ are segment means (:func:`landmark_means`),
    scale = 1/√d by default (Xiong et al. 2021). A⁺ comes from :func:`iterative_pinv` with
    ``pinv_iterations`` steps, or from ``torch.linalg.pinv`` when it is None. With
    m = Lq = Lk the landmarks are the tokens and (with the exact pinv) the output is exact.
    query (..., Lq, d), key (..., Lk, d), value (..., Lk, dv) -> output (..., Lq, dv) only;
    1 ≤ landmarks ≤ min(Lq, Lk). No mask. Cost O((Lq + Lk)·m·(d + dv) + m³) time,
    O((Lq + Lk)·m) memory. Explained in §5.2.
    """
    check_qkv(query, key, value)
    _checks.positive(landmarks, "landmarks", integer=True)
    shortest = min(query.shape[-2], key.shape[-2])
    if landmarks > shortest:
        raise ValueError(
            f"landmarks={landmarks} must be ≤ min(Lq, Lk) = {shortest} for query "
            f"{tuple(query.shape)} and key {tuple(key.shape)}"
        )
    if pinv_iterations is not None:
        _checks.positive(pinv_iterations, "pinv_iterations", integer=True)
    s = _scale(scale, query.shape[-1])
    query_landmarks = landmark_means(query, landmarks)
    key_landmarks = landmark_means(key, landmarks)
    kernel_f = masked_softmax(query @ key_landmarks.transpose(-2, -1) * s)  # (..., Lq, m)
    kernel_a = masked_softmax(query_landmarks @ key_landmarks.transpose(-2, -1) * s)  # (..., m, m)
    kernel_b = masked_softmax(query_landmarks @ key.transpose(-2, -1) * s)  # (..., m, Lk)
    if pinv_iterations is None:
        a_pinv = torch.linalg.pinv(kernel_a)
    else:
        a_pinv = iterative_pinv(kernel_a, pinv_iterations)
    return kernel_f @ (a_pinv @ (kernel_b @ value))


def _check_projection(proj, name, k, length, like):
    _checks.tensor(proj, name, min_dim=2)
    _checks.same_kind({"query": like, name: proj})
    if proj.dim() != 2 or proj.shape[-1] != length or (k is not None and proj.shape[0] != k):
        rows = "k" if k is None else str(k)
        raise ValueError(f"{name} must have shape ({rows}, Lk) = ({rows}, {length}), got {tuple(proj.shape)}")


def linformer_attention(query, key, value, proj_k, proj_v=None, *, scale=None):
    """Linformer: softmax(Q (E K)ᵀ·scale) (F V), keys and values projected to k positions.

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, dv), proj_k = E (k, Lk),
    proj_v = F (k, Lk) or None to share E (Wang et al. 2020) -> output (..., Lq, dv) only.
    With E = F = I (k = Lk) this is exact attention. No mask: a projection mixes every
    position. Cost O(k·Lk·(d + dv) + Lq·k·(d + dv)) time, O(Lq·k) memory. Explained in §5.2.
    """
    check_qkv(query, key, value)
    length = key.shape[-2]
    _check_projection(proj_k, "proj_k", None, length, query)
    proj_v = proj_k if proj_v is None else proj_v
    _check_projection(proj_v, "proj_v", proj_k.shape[0], length, query)
    return attention(query, proj_k @ key, proj_v @ value, scale=scale)[0]


class LinformerSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values are projected to k positions: O(L·k).

    head_i = softmax(X W_iQ (E X W_iK)ᵀ/√d_h) (F X W_iV), output Concat(head_i) Wᴼ, with
    E, F (k, seq_len) learned and shared by the heads (Wang et al. 2020), initialised
    N(0, 1/k); ``share_kv`` uses one matrix for both. x (B, L, E), L ≤ seq_len (the first L
    columns of E and F are used) -> (B, L, E). Cost O(B·L·k·E) time, O(B·h·L·k) memory.
    Explained in §5.2.
    """

    def __init__(self, embed_dim, seq_len, k, heads, *, share_kv=False, bias=True):
        super().__init__()
        _checks.positive(embed_dim, "embed_dim", integer=True)
        _checks.positive(seq_len, "seq_len", integer=True)
        _checks.positive(k, "k", integer=True)
        _checks.positive(heads, "heads", integer=True)
        if embed_dim % heads:
            raise ValueError(f"heads={heads} does not divide embed_dim={embed_dim}")
        if k > seq_len:
            raise ValueError(f"k={k} must be ≤ seq_len={seq_len}: the projection compresses the sequence")
        self.embed_dim, self.seq_len, self.k, self.heads = embed_dim, seq_len, k, heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.proj_k = nn.Parameter(torch.randn(k, seq_len) / math.sqrt(k))
        self.proj_v = None if share_kv else nn.Parameter(torch.randn(k, seq_len) / math.sqrt(k))

    def forward(self, x):
        """(B, L, E) -> (B, L, E) for L ≤ seq_len."""
        _checks.tensor(x, "x", min_dim=3)
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must have shape (B, L, {self.embed_dim}), got {tuple(x.shape)}")
        length = x.shape[1]
        if length > self.seq_len:
            raise ValueError(f"x has L={length} positions but seq_len={self.seq_len}")
        proj_k = self.proj_k[:, :length]
        proj_v = None if self.proj_v is None else self.proj_v[:, :length]
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(linformer_attention(q, k, v, proj_k, proj_v)))
