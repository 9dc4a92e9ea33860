"""Linear attention: a kernel feature map replaces the softmax, so attention costs O(L), not O(L²) (§5.2).

Softmax attention weighs value j by exp(q_i·k_j/√d). If a similarity factors as φ(q)ᵀφ(k),
associativity lets us sum the keys once, (φ(Q)φ(K)ᵀ)V = φ(Q)(φ(K)ᵀV), and never build the
(Lq, Lk) weights. That is why every kernel here returns the output only, not the weights.

* :func:`linear_attention`: φ(x) = elu(x) + 1 (Katharopoulos et al. 2020).
* :func:`performer_attention`: positive random features whose inner products estimate the
  softmax kernel exp(qᵀk/√d) without bias (FAVOR+, Choromanski et al. 2021).
"""
import math

import torch
import torch.nn.functional as F

from . import _checks
from .attention import check_qkv

STABILISERS = (None, "row", "sequence")


def elu_plus_one(x):
    """φ(x) = elu(x) + 1 = x + 1 for x > 0, eˣ for x ≤ 0: a positive, smooth feature map.

    Elementwise, (..., d) -> (..., d); every feature is > 0, so the normaliser of
    linear attention is positive. Explained in §5.2.
    """
    return F.elu(x) + 1


def _key_padding_mask(mask, key):
    """Check a key padding mask (..., Lk), True = may attend, against key (..., Lk, d)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
    shape = tuple(key.shape[:-1])
    ok = mask.dim() <= len(shape)
    if ok:
        try:
            ok = tuple(torch.broadcast_shapes(mask.shape, shape)) == shape
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but key is {tuple(key.shape)}; a key padding "
            f"mask must broadcast to (..., Lk) = {shape} (for padding_mask's (B, 1, Lk), "
            "use mask.squeeze(-2))"
        )
    if mask.device != key.device:
        raise ValueError(f"mask is on {mask.device} but key is on {key.device}")
    return mask


def _attend_with_features(phi_q, phi_k, value, mask, causal, eps):
    """out_i = φ(q_i)ᵀ S / φ(q_i)ᵀ z, S = Σ_j φ(k_j) v_jᵀ, z = Σ_j φ(k_j) (over j ≤ i if causal)."""
    if mask is not None:  # a masked key contributes nothing to S or z
        phi_k = phi_k * mask.unsqueeze(-1).to(phi_k.dtype)
    lq, lk = phi_q.shape[-2], phi_k.shape[-2]
    if causal and lk > 0:
        # prefix sums S_j = Σ_{j'≤j} φ(k_j') v_j'ᵀ and z_j = Σ_{j'≤j} φ(k_j'); query i reads
        # the state after key min(i, Lk - 1) (the top-left causal mask j ≤ i)
        states = torch.cumsum(phi_k.unsqueeze(-1) * value.unsqueeze(-2), dim=-3)  # (..., Lk, r, dv)
        normalisers = torch.cumsum(phi_k, dim=-2)  # (..., Lk, r)
        last = torch.arange(lq, device=phi_q.device).clamp(max=lk - 1)
        numerator = torch.einsum("...ir,...ire->...ie", phi_q, states[..., last, :, :])
        denominator = (phi_q * normalisers[..., last, :]).sum(-1, keepdim=True)
    else:
        numerator = phi_q @ (phi_k.transpose(-2, -1) @ value)  # φ(Q) (φ(K)ᵀ V)
        denominator = phi_q @ phi_k.sum(-2).unsqueeze(-1)  # φ(Q) (φ(K)ᵀ 1)
    return numerator / denominator.clamp_min(eps)


def linear_attention(query, key, value, mask=None, *, feature_map=elu_plus_one, causal=False,
                     eps=1e-6):
    """Linear attention φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1), i.e. out_i = Σ_j s_ij v_j / Σ_j s_ij, s_ij = φ(q_i)ᵀφ(k_j).

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, dv) -> output (..., Lq, dv) only:
    the (Lq, Lk) weights are never formed. ``feature_map`` maps (..., L, d) to (..., L, r)
    with features ≥ 0 (default elu(x) + 1, Katharopoulos et al. 2020). ``mask`` (..., Lk)
    is a key padding mask, True = may attend (masked keys get zero features). ``causal``
    restricts query i to keys j ≤ i with prefix sums. The denominator is clamped at ``eps``,
    so a query with no allowed key gets a zero output, never NaN.
    Cost O((Lq + Lk)·r·dv) time; memory O(r·dv) for the summed state, but the causal form
    keeps every prefix state, O(Lk·r·dv) (a recurrent loop would need only O(r·dv)).
    Explained in §5.2.
    """
    check_qkv(query, key, value)
    if not callable(feature_map):
        raise TypeError(f"feature_map must be callable, got {type(feature_map).__name__}")
    _checks.positive(eps, "eps")
    mask = _key_padding_mask(mask, key)
    phi_q, phi_k = feature_map(query), feature_map(key)
    for name, phi, x in (("query", phi_q, query), ("key", phi_k, key)):
        if not isinstance(phi, torch.Tensor) or phi.shape[:-1] != x.shape[:-1]:
            got = tuple(phi.shape) if isinstance(phi, torch.Tensor) else type(phi).__name__
            raise ValueError(
                f"feature_map must map {name} {tuple(x.shape)} to (..., L, r) with the same "
                f"leading shape, got {got}"
            )
    if phi_q.shape[-1] != phi_k.shape[-1]:
        raise ValueError(
            f"feature_map gave {phi_q.shape[-1]} features for query but {phi_k.shape[-1]} for key"
        )
    return _attend_with_features(phi_q, phi_k, value, mask, causal, eps)


def orthogonal_random_features(d, m, *, generator=None, dtype=torch.float32, device=None):
    """Projection ω_1, …, ω_m ∈ ℝᵈ: blocks of d orthogonal rows, each ω_r ~ N(0, I_d) marginally.

    Each block of d rows is the Q of the QR decomposition of a d×d Gaussian matrix (signs fixed
    so that Q is Haar-distributed); every row is then rescaled to the norm of an independent
    Gaussian vector (chi-distributed with d degrees of freedom). The last block keeps only
    m mod d rows. Orthogonal rows lower the variance of the Performer's estimate.
    Returns (m, d) of ``dtype`` on ``device``, drawn from ``generator`` (on its device).
    Cost O(⌈m/d⌉·d³) time, O(m·d) memory. Explained in §5.2.
    """
    _checks.positive(d, "d", integer=True)
    _checks.positive(m, "m", integer=True)
    _checks.generator(generator)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    source = generator.device if generator is not None else torch.device("cpu")
    blocks = -(-m // d)
    gaussian = torch.randn(blocks, d, d, generator=generator, dtype=torch.float64, device=source)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar: Q·diag(sign r_ii)
    directions = q.transpose(-2, -1).reshape(blocks * d, d)[:m]  # rows of Qᵀ: orthonormal
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64, device=source).norm(dim=-1)
    return (directions * norms.unsqueeze(-1)).to(dtype=dtype, device=device)


def favor_features(x, projection, *, scale=None, stabiliser=None):
    """Positive random features φ(x) = exp(ωᵀx' − ‖x'‖²/2)/√m with x' = x·√scale.

    For ω ~ N(0, I), E[φ(q)ᵀφ(k)] = exp(scale·qᵀk): the softmax kernel (scale = 1/√d by
    default) estimated without bias, from positive features (FAVOR+, Choromanski et al. 2021).
    x (..., L, d), projection (m, d) -> (..., L, m).
    ``stabiliser`` subtracts the largest exponent before exp, so nothing overflows:
    "row" per row (for queries: a factor per query cancels in attention's normaliser),
    "sequence" over each whole (L, m) block (for keys: one factor shared by all keys of a
    sequence cancels too). Both change φ by a constant factor; only None gives the
    unbiased kernel estimate. Cost O(L·m·d) time, O(L·m) memory. Explained in §5.2.
    """
    _checks.tensor(x, "x", min_dim=2)
    _checks.tensor(projection, "projection", min_dim=2)
    _checks.same_kind({"x": x, "projection": projection})
    if projection.dim() != 2 or projection.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"projection must have shape (m, d) = (m, {x.shape[-1]}) for x {tuple(x.shape)}, "
            f"got {tuple(projection.shape)}"
        )
    scale = 1.0 / math.sqrt(x.shape[-1]) if scale is None else _checks.positive(scale, "scale")
    if stabiliser not in STABILISERS:
        raise ValueError(f"stabiliser must be one of {STABILISERS}, got {stabiliser!r}")
    x = x * math.sqrt(scale)
    exponent = x @ projection.T - (x * x).sum(-1, keepdim=True) / 2  # ωᵀx' − ‖x'‖²/2
    if stabiliser == "row":
        exponent = exponent - exponent.amax(-1, keepdim=True).detach()
    elif stabiliser == "sequence":
        exponent = exponent - exponent.amax((-2, -1), keepdim=True).detach()
    return torch.exp(exponent) / math.sqrt(projection.shape[0])


def default_features(d):
    """The Performer's default number of random features, m = max(d, ⌊d·ln d⌋). §5.2."""
    _checks.positive(d, "d", integer=True)
    return max(d, int(d * math.log(d)))


def performer_attention(query, key, value, mask=None, *, features=None, generator=None,
                        causal=False, projection=None, scale=None):
    """Performer (FAVOR+): softmax(QKᵀ·scale)V ≈ φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1), φ = favor_features.

    query (..., Lq, d), key (..., Lk, d), value (..., Lk, dv) -> output (..., Lq, dv) only.
    ``projection`` (m, d) fixes the random features; otherwise ``features`` = m orthogonal
    random features (default :func:`default_features`) are drawn from ``generator``.
    ``mask`` (..., Lk) is a key padding mask (True = may attend), ``causal`` restricts query i
    to keys j ≤ i, as in :func:`linear_attention`; a query with no allowed key gets zeros.
    Keys are stabilised by one constant per sequence, which depends on every key, so under
    ``causal`` a later key changes earlier outputs by rounding only (or, in low precision,
    by underflow of the earlier keys' features if it is much larger).
    Cost O((Lq + Lk)·m·(d + dv)) time, O((Lq + Lk)·m + m·dv) memory
    (causal: O(Lk·m·dv)). Explained in §5.2.
    """
    check_qkv(query, key, value)
    d = query.shape[-1]
    if projection is None:
        features = default_features(d) if features is None else features
        _checks.positive(features, "features", integer=True)
        projection = orthogonal_random_features(d, features, generator=generator,
                                                dtype=query.dtype, device=query.device)
    else:
        _checks.tensor(projection, "projection", min_dim=2)
        if projection.dim() != 2 or projection.shape[-1] != d:
            raise ValueError(f"projection must have shape (m, d) = (m, {d}), got {tuple(projection.shape)}")
        if features is not None and features != projection.shape[0]:
            raise ValueError(
                f"features={features} but projection has {projection.shape[0]} rows; pass one of them"
            )
    mask = _key_padding_mask(mask, key)
    phi_q = favor_features(query, projection, scale=scale, stabiliser="row")
    phi_k = favor_features(key, projection, scale=scale, stabiliser="sequence")
    return _attend_with_features(phi_q, phi_k, value, mask, causal, torch.finfo(query.dtype).tiny)
