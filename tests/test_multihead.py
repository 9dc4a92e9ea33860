"""MultiHeadAttention, split_heads, merge_heads (§2.4) against torch.nn.MultiheadAttention."""
import math

import pytest
import torch
from torch import nn

from attnbook import MultiHeadAttention, attention, causal_mask, merge_heads, padding_mask, split_heads

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)


def pair(embed=12, heads=3, kdim=None, vdim=None, bias=True, dtype=torch.float64):
    """A torch MultiheadAttention (batch-first, eval) and its attnbook copy."""
    torch_mha = nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True,
                                      dtype=dtype).eval()
    if bias:  # torch initialises the biases to 0; make them matter
        with torch.no_grad():
            torch_mha.in_proj_bias.normal_()
            torch_mha.out_proj.bias.normal_()
    return torch_mha, MultiHeadAttention.from_torch(torch_mha)


def inputs(b=2, lq=3, lk=5, embed=12, kdim=None, vdim=None, dtype=torch.float64):
    return (torch.randn(b, lq, embed, dtype=dtype), torch.randn(b, lk, kdim or embed, dtype=dtype),
            torch.randn(b, lk, vdim or embed, dtype=dtype))


def torch_forward(mha, q, k, v, **kwargs):
    return mha(q, k, v, need_weights=True, average_attn_weights=False, **kwargs)


def assert_same(got, want, dtype):
    torch.testing.assert_close(got[0], want[0], **tol(dtype))
    torch.testing.assert_close(got[1], want[1], **tol(dtype))


# ---------------------------------------------------------------- split / merge

@pytest.mark.parametrize("shape, heads", [((3, 8), 2), ((2, 5, 12), 3), ((2, 3, 4, 6), 6), ((1, 7, 5), 1)])
def test_split_heads_against_slices_and_merge_inverts_it(shape, heads):
    x = torch.randn(shape)
    d = shape[-1] // heads
    s = split_heads(x, heads)
    assert s.shape == (*shape[:-2], heads, shape[-2], d)
    for i in range(heads):
        torch.testing.assert_close(s[..., i, :, :], x[..., i * d:(i + 1) * d], rtol=0, atol=0)
    torch.testing.assert_close(merge_heads(s), x, rtol=0, atol=0)


@pytest.mark.parametrize("x, heads, error, name", [
    (torch.randn(2, 5, 12), 5, ValueError, "heads"),
    (torch.randn(2, 5, 12), 0, ValueError, "heads"),
    (torch.randn(2, 5, 12), 2.0, TypeError, "heads"),
    (torch.randn(2, 5, 12), "2", TypeError, "heads"),
    (torch.randn(12), 2, ValueError, "x"),
    (torch.randn(2, 12).long(), 2, TypeError, "x"),
    ([[1.0, 2.0]], 2, TypeError, "x"),
])
def test_split_heads_rejects_bad_input(x, heads, error, name):
    with pytest.raises(error, match=name):
        split_heads(x, heads)


def test_merge_heads_rejects_bad_input():
    with pytest.raises(ValueError, match="x"):
        merge_heads(torch.randn(5, 4))
    with pytest.raises(TypeError, match="x"):
        merge_heads([[[1.0]]])


# ---------------------------------------------------------------- against torch.nn.MultiheadAttention

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("embed, heads, kdim, vdim, bias", [
    (12, 3, None, None, True),
    (12, 4, None, None, False),
    (8, 2, 5, 7, True),      # separate q/k/v_proj_weight in torch
    (8, 8, 3, 6, False),
    (6, 1, None, 4, True),
])
def test_from_torch_reproduces_outputs_and_per_head_weights(dtype, embed, heads, kdim, vdim, bias):
    torch_mha, mha = pair(embed, heads, kdim, vdim, bias, dtype)
    assert torch_mha._qkv_same_embed_dim == (kdim in (None, embed) and vdim in (None, embed))
    q, k, v = inputs(2, 3, 5, embed, kdim, vdim, dtype)
    out, w = mha(q, k, v)
    assert out.shape == (2, 3, embed) and w.shape == (2, heads, 3, 5) and out.dtype == dtype
    assert_same((out, w), torch_forward(torch_mha, q, k, v), dtype)
    assert sum(p.numel() for p in mha.parameters()) == sum(p.numel() for p in torch_mha.parameters())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["LqLk", "BLqLk", "BhLqLk"])
def test_bool_mask_matches_torch_attn_mask(dtype, shape):
    b, h, lq, lk = 2, 3, 4, 6
    torch_mha, mha = pair(12, h, dtype=dtype)
    q, k, v = inputs(b, lq, lk, 12, dtype=dtype)
    full = torch.rand(b, h, lq, lk) < 0.6
    full[..., 0] = True
    if shape == "LqLk":
        keep, torch_mask = full[0, 0], ~full[0, 0]
    elif shape == "BLqLk":
        keep = full[:, 0]
        torch_mask = ~keep.repeat_interleave(h, dim=0)   # torch wants (B·h, Lq, Lk)
    else:
        keep, torch_mask = full, ~full.reshape(b * h, lq, lk)
    got = mha(q, k, v, keep)
    assert_same(got, torch_forward(torch_mha, q, k, v, attn_mask=torch_mask), dtype)
    full_keep = keep.unsqueeze(1) if keep.dim() == 3 else keep
    assert (got[1][~full_keep.expand(b, h, lq, lk)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_mask_matches_torch_key_padding_mask(dtype):
    torch_mha, mha = pair(8, 2, kdim=5, vdim=3, dtype=dtype)
    lengths, lk = [6, 2, 4], 6
    q, k, v = inputs(3, 4, lk, 8, 5, 3, dtype)
    keep = padding_mask(lengths, lk)   # (B, 1, Lk), True = may attend
    want = torch_forward(torch_mha, q, k, v, key_padding_mask=~keep.squeeze(1))  # torch: True = ignore
    got = mha(q, k, v, keep)
    assert_same(got, want, dtype)
    assert (got[1][1, :, :, 2:] == 0).all()
    both = causal_mask(4, lk) & keep
    want = torch_forward(torch_mha, q, k, v, key_padding_mask=~keep.squeeze(1), attn_mask=~causal_mask(4, lk))
    assert_same(mha(q, k, v, both), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float_mask_and_is_causal_match_torch(dtype):
    torch_mha, mha = pair(12, 4, dtype=dtype)
    q, k, v = inputs(2, 5, 3, 12, dtype=dtype)
    bias = torch.randn(5, 3, dtype=dtype)
    assert_same(mha(q, k, v, bias), torch_forward(torch_mha, q, k, v, attn_mask=bias), dtype)
    want = torch_forward(torch_mha, q, k, v, attn_mask=~causal_mask(5, 3))
    assert_same(mha(q, k, v, is_causal=True), want, dtype)
    assert_same(mha(q, k, v, causal_mask(5, 3)), want, dtype)


def test_forward_equals_per_head_attention_by_hand():
    """Independent of torch's module: project, slice per head, attend, concatenate, mix."""
    mha = MultiHeadAttention(8, 2, kdim=3, vdim=5).double()
    q, k, v = inputs(2, 4, 6, 8, 3, 5)
    keep = torch.rand(2, 4, 6) < 0.7
    keep[..., -1] = True
    out, w = mha(q, k, v, keep, temperature=1.7)
    Q, K, V = mha.q_proj(q), mha.k_proj(k), mha.v_proj(v)
    heads, weights = [], []
    for i in range(2):
        sl = slice(4 * i, 4 * (i + 1))
        scores = Q[..., sl] @ K[..., sl].transpose(1, 2) / math.sqrt(4) / 1.7
        a = torch.softmax(scores.masked_fill(~keep, -math.inf), dim=-1)
        weights.append(a)
        heads.append(a @ V[..., sl])
    torch.testing.assert_close(w, torch.stack(weights, 1))
    torch.testing.assert_close(out, mha.out_proj(torch.cat(heads, -1)))


def test_causal_multihead_outputs_ignore_later_positions():
    mha = MultiHeadAttention(8, 4).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    out, _ = mha(x, x, x, is_causal=True)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 8, dtype=torch.float64)
    out2, _ = mha(y, y, y, is_causal=True)
    torch.testing.assert_close(out2[:, :4], out[:, :4], rtol=0, atol=0)
    assert not torch.allclose(out2[:, 4:], out[:, 4:])


def test_gradients_match_torch_multihead_attention():
    torch_mha, mha = pair(8, 2, kdim=5, vdim=3)
    q, k, v = inputs(2, 3, 4, 8, 5, 3)
    g = torch.randn(2, 3, 8, dtype=torch.float64)
    (mha(q, k, v)[0] * g).sum().backward()
    (torch_forward(torch_mha, q, k, v)[0] * g).sum().backward()
    torch.testing.assert_close(mha.q_proj.weight.grad, torch_mha.q_proj_weight.grad)
    torch.testing.assert_close(mha.k_proj.weight.grad, torch_mha.k_proj_weight.grad)
    torch.testing.assert_close(mha.v_proj.weight.grad, torch_mha.v_proj_weight.grad)
    torch.testing.assert_close(mha.out_proj.weight.grad, torch_mha.out_proj.weight.grad)
    torch.testing.assert_close(torch.cat([mha.q_proj.bias.grad, mha.k_proj.bias.grad, mha.v_proj.bias.grad]),
                               torch_mha.in_proj_bias.grad)


def test_from_torch_copies_do_not_share_storage():
    torch_mha, mha = pair(8, 2)
    with torch.no_grad():
        torch_mha.in_proj_weight.zero_()
    assert mha.q_proj.weight.abs().sum() > 0


def test_fully_masked_query_gives_finite_output_and_gradients():
    mha = MultiHeadAttention(8, 2).double()
    q, k, v = inputs(2, 3, 4, 8)
    keep = torch.ones(2, 3, 4, dtype=torch.bool)
    keep[0, 1] = False
    out, w = mha(q, k, v, keep)
    assert torch.isfinite(out).all() and (w[0, :, 1] == 0).all()
    # with no key the row's attention is 0, so the output is the out_proj bias alone
    torch.testing.assert_close(out[0, 1], mha.out_proj.bias)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters())


# ---------------------------------------------------------------- bad input

def test_constructor_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(8, 0)
    with pytest.raises(ValueError, match="embed_dim"):
        MultiHeadAttention(0, 1)
    with pytest.raises(TypeError, match="embed_dim"):
        MultiHeadAttention(8.0, 2)
    with pytest.raises(TypeError, match="num_heads"):
        MultiHeadAttention(8, "2")


def test_from_torch_rejects_other_modules_and_bias_kv():
    with pytest.raises(TypeError, match="mha"):
        MultiHeadAttention.from_torch(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True))
    with pytest.raises(ValueError, match="add_zero_attn"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True, batch_first=True))


MHA = MultiHeadAttention(8, 2, kdim=5, vdim=3)
Qi, Ki, Vi = inputs(2, 3, 4, 8, 5, 3, torch.float32)


@pytest.mark.parametrize("args, error, name", [
    ((Qi[0], Ki, Vi), ValueError, "query"),                   # 2-D
    ((Qi, Ki[0], Vi), ValueError, "key"),
    ((Qi.unsqueeze(0), Ki, Vi), ValueError, "3-D"),           # 4-D
    ((torch.randn(2, 3, 6), Ki, Vi), ValueError, "query"),    # width 6 vs embed_dim 8
    ((Qi, torch.randn(2, 4, 8), Vi), ValueError, "key"),      # width 8 vs kdim 5
    ((Qi, Ki, torch.randn(2, 4, 5)), ValueError, "value"),    # width 5 vs vdim 3
    ((Qi, Ki, torch.randn(2, 6, 3)), ValueError, "value"),    # Lk 6 vs 4
    ((Qi, torch.randn(3, 4, 5), torch.randn(3, 4, 3)), ValueError, "batch"),
    ((Qi.long(), Ki, Vi), TypeError, "query"),
    ((Qi, Ki, Vi.tolist()), TypeError, "value"),
])
def test_forward_rejects_bad_input(args, error, name):
    with pytest.raises(error, match=name):
        MHA(*args)


@pytest.mark.parametrize("mask, error", [
    (torch.ones(4, dtype=torch.bool), ValueError),             # 1-D
    (torch.ones(3, 5, dtype=torch.bool), ValueError),          # Lk 5 vs 4
    (torch.ones(3, 3, 4, dtype=torch.bool), ValueError),       # batch 3 vs 2
    (torch.ones(2, 3, 3, 4, dtype=torch.bool), ValueError),    # 3 heads vs 2
    (torch.ones(1, 2, 2, 3, 4, dtype=torch.bool), ValueError),
    (torch.ones(3, 4, dtype=torch.int64), TypeError),
    (torch.zeros(3, 4, dtype=torch.float64), TypeError),       # float mask of another dtype
    ([[True] * 4] * 3, TypeError),
])
def test_forward_rejects_bad_mask(mask, error):
    with pytest.raises(error, match="mask"):
        MHA(Qi, Ki, Vi, mask)


def test_forward_rejects_bad_temperature_and_mask_with_is_causal():
    with pytest.raises(ValueError, match="temperature"):
        MHA(Qi, Ki, Vi, temperature=0.0)
    with pytest.raises(TypeError, match="temperature"):
        MHA(Qi, Ki, Vi, temperature="hot")
    with pytest.raises(ValueError, match="is_causal"):
        MHA(Qi, Ki, Vi, causal_mask(3, 4), is_causal=True)


def test_attention_is_used_per_head():
    """With identity projections and one head, MultiHeadAttention is plain attention."""
    mha = MultiHeadAttention(4, 1, bias=False).double()
    with torch.no_grad():
        for p in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj):
            p.weight.copy_(torch.eye(4))
    q, k, v = inputs(2, 3, 5, 4)
    out, w = mha(q, k, v)
    want = attention(q, k, v)
    torch.testing.assert_close(out, want[0])
    torch.testing.assert_close(w[:, 0], want[1])
