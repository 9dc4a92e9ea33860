"""Encoder-decoder attention for RNNs (§1.2, §3.1) against loops written from the papers."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEVICES, DTYPES, randn, tol

from attnbook.rnn import (AttentionDecoder, BahdanauAttention, LuongAttention, LuongLocalAttention,
                          RNNEncoder, final_state)

FAST = settings(max_examples=15, deadline=None)
B, LQ, LK, DQ, DK, DV, H = 2, 3, 5, 4, 6, 2, 7


def masks(kind, device="cpu"):
    """None, a key mask (B, Lk) of lengths 3 and 5, or a pair mask (B, Lq, Lk) with an empty row."""
    if kind == "none":
        return None
    if kind == "key":
        return torch.arange(LK, device=device) < torch.tensor([[3], [5]], device=device)
    m = torch.rand(B, LQ, LK, generator=torch.Generator().manual_seed(1)) > 0.4
    m[0, 1] = False
    return m.to(device)


def allowed_at(mask, b, t, s):
    if mask is None:
        return True
    return bool(mask[b, s] if mask.dim() == 2 else mask[b, t, s])


def loop_attention(score, q, k, v, mask):
    """context_bt = Σ_s a_bts v_bs, a_bt = softmax over the allowed s of score(q_bt, k_bs), by loops."""
    weights = torch.zeros(q.shape[0], q.shape[1], k.shape[1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            e = {s: score(q[b, t].double(), k[b, s].double())
                 for s in range(k.shape[1]) if allowed_at(mask, b, t, s)}
            if e:
                top = max(float(x) for x in e.values())
                total = sum(math.exp(float(x) - top) for x in e.values())
                for s, x in e.items():
                    weights[b, t, s] = math.exp(float(x) - top) / total
    return (weights @ v.double().cpu()).to(q.dtype), weights.to(q.dtype)


def inputs(dtype, device, dq=DQ, dk=DK):
    q = randn(B, LQ, dq, seed=1, dtype=dtype, device=device)
    k = randn(B, LK, dk, seed=2, dtype=dtype, device=device)
    v = randn(B, LK, DV, seed=3, dtype=dtype, device=device)
    return q, k, v


def check(got, want, dtype):
    torch.testing.assert_close(got.cpu(), want.cpu(), **tol(dtype))


# ---------------------------------------------------------------- global attention vs the papers

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["none", "key", "pair"])
def test_bahdanau_matches_paper_loop(device, dtype, kind):
    attn = BahdanauAttention(DQ, DK, H).to(device, dtype)
    W, U, v = (p.detach().double().cpu() for p in
               (attn.score.w_query.weight, attn.score.w_key.weight, attn.score.v.weight[0]))
    q, k, val = inputs(dtype, device)
    mask = masks(kind, device)
    context, weights = attn(q, k, val, mask)
    want_c, want_w = loop_attention(lambda h, hs: v @ torch.tanh(W @ h.cpu() + U @ hs.cpu()),
                                    q, k, val, None if mask is None else mask.cpu())
    assert context.shape == (B, LQ, DV) and weights.shape == (B, LQ, LK)
    assert context.dtype == dtype and context.device.type == device
    check(weights, want_w, dtype)
    check(context, want_c, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["none", "key", "pair"])
@pytest.mark.parametrize("score", ["dot", "general"])
def test_luong_matches_paper_loop(device, dtype, kind, score):
    dk = DQ if score == "dot" else DK
    attn = LuongAttention(DQ, dk, score).to(device, dtype)
    q, k, val = inputs(dtype, device, dk=dk)
    mask = masks(kind, device)
    if score == "dot":
        def pair(h, hs):
            return h @ hs
    else:
        W = attn.weight.detach().double().cpu()

        def pair(h, hs):
            return h.cpu() @ W @ hs.cpu()
    context, weights = attn(q, k, val, mask)
    want_c, want_w = loop_attention(pair, q.cpu(), k.cpu(), val, None if mask is None else mask.cpu())
    check(weights, want_w, dtype)
    check(context, want_c, dtype)


ATTENTIONS = {
    "bahdanau": lambda: BahdanauAttention(DQ, DK, H),
    "luong general": lambda: LuongAttention(DQ, DK, "general"),
    "local-p": lambda: LuongLocalAttention(DQ, DK, window=2),
}


@pytest.mark.parametrize("name", ATTENTIONS)
def test_one_decoder_step_is_one_row_of_many(name):
    attn = ATTENTIONS[name]().double()
    q, k, v = inputs(torch.float64, "cpu")
    mask = masks("key")
    many = attn(q, k, v, mask)
    one = attn(q[:, 1], k, v, mask)
    assert one[0].shape == (B, DV) and one[1].shape == (B, LK)
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b[:, 1])


@pytest.mark.parametrize("name", ["bahdanau", "luong general"])
def test_values_default_to_keys(name):
    attn = ATTENTIONS[name]().double()
    q, k, _ = inputs(torch.float64, "cpu")
    for a, b in zip(attn(q, k), attn(q, k, k)):
        torch.testing.assert_close(a, b)


@st.composite
def problems(draw):
    b, lq, lk = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from(DTYPES))
    q = torch.randn(b, lq, DQ, generator=g, dtype=dtype)
    k = torch.randn(b, lk, DK, generator=g, dtype=dtype) * draw(st.sampled_from([1.0, 30.0]))
    mask = torch.rand(b, *draw(st.sampled_from([(lk,), (lq, lk), (1, lk)])), generator=g) > 0.5
    return q, k, mask


@FAST
@given(problems(), st.sampled_from(["bahdanau", "luong general"]))
def test_weights_are_a_distribution_over_allowed_keys(problem, name):
    q, k, mask = problem
    attn = ATTENTIONS[name]().to(q.dtype)
    context, weights = attn(q, k, None, mask)
    full = (mask if mask.dim() == 3 else mask.unsqueeze(1)).expand_as(weights)
    assert torch.isfinite(context).all()
    assert (weights[~full] == 0).all()
    sums = weights.sum(-1)
    torch.testing.assert_close(sums, full.any(-1).to(q.dtype))


@pytest.mark.parametrize("name", ATTENTIONS)
def test_fully_masked_query_gets_zeros_and_finite_gradients(name):
    attn = ATTENTIONS[name]().double()
    q, k, v = inputs(torch.float64, "cpu")
    q.requires_grad_(True)
    mask = masks("key")
    mask[1] = False
    context, weights = attn(q, k, v, mask)[:2]
    assert (context[1] == 0).all() and (weights[1] == 0).all()
    context.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_huge_scores_stay_finite():
    attn = LuongAttention(DQ, DQ, "dot").double()
    q, k, v = inputs(torch.float64, "cpu", dk=DQ)
    context, weights = attn(q * 1e2, k * 1e2, v)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()


# ---------------------------------------------------------------- local attention

def loop_local(attn, q, k, v, mask, positions=None):
    """Luong et al. (2015), eqs. 9-10, by loops: p_t, the window, align, the Gaussian."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    Wp = attn.w_position.weight.detach().double().cpu()
    vp = attn.v_position.weight[0].detach().double().cpu()
    W = attn.weight.detach().double().cpu()
    D, sigma = attn.window, attn.window / 2
    weights = torch.zeros(q.shape[0], q.shape[1], k.shape[1], dtype=torch.float64)
    ps = torch.zeros(q.shape[0], q.shape[1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            S = sum(allowed_at(mask, b, t, s) for s in range(k.shape[1]))
            if positions is None:
                p = S / (1 + math.exp(-float(vp @ torch.tanh(Wp @ q[b, t]))))
            else:
                p = float(positions[t])
            ps[b, t] = p
            window = [s for s in range(k.shape[1]) if allowed_at(mask, b, t, s) and abs(s - p) <= D]
            e = {s: float(q[b, t] @ W @ k[b, s]) for s in window}
            if not e:
                continue
            total = sum(math.exp(x) for x in e.values())
            for s, x in e.items():
                gauss = math.exp(-(s - p) ** 2 / (2 * sigma ** 2)) if positions is None else 1.0
                weights[b, t, s] = math.exp(x) / total * gauss
    return weights @ v, weights, ps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["none", "key", "pair"])
@pytest.mark.parametrize("window", [1, 2])
def test_local_p_matches_paper_loop(device, dtype, kind, window):
    attn = LuongLocalAttention(DQ, DK, window=window).to(device, dtype)
    q, k, v = inputs(dtype, device)
    mask = masks(kind, device)
    context, weights, p = attn(q, k, v, mask)
    want_c, want_w, want_p = loop_local(attn, q, k, v, None if mask is None else mask.cpu())
    assert p.shape == (B, LQ)
    check(p, want_p.to(dtype), dtype)
    check(weights, want_w.to(dtype), dtype)
    check(context, want_c.to(dtype), dtype)


def test_local_p_weights_live_in_the_window_and_carry_the_gaussian():
    attn = LuongLocalAttention(DQ, DK, window=1).double()
    q, k, v = inputs(torch.float64, "cpu")
    q = q * 3  # spread the predicted positions
    mask = masks("key")
    _, weights, p = attn(q, k, v, mask)
    lengths = mask.sum(-1, keepdim=True).double()
    assert ((p >= 0) & (p <= lengths)).all()
    s = torch.arange(LK, dtype=torch.float64)
    outside = (s - p.unsqueeze(-1)).abs() > 1
    assert (weights[outside] == 0).all() and (weights[~mask.unsqueeze(1).expand_as(weights)] == 0).all()
    # local-m at the same positions is the bare align; the ratio is the Gaussian, σ = D/2.
    _, align, _ = attn(q, k, v, mask, positions=p.detach())
    inside = align > 0
    gauss = torch.exp(-(s - p.unsqueeze(-1)) ** 2 / (2 * 0.5 ** 2)).expand_as(weights)
    torch.testing.assert_close(weights[inside] / align[inside], gauss[inside])
    assert (weights.sum(-1) <= 1 + 1e-12).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_local_m_is_align_in_the_window_around_t(dtype):
    attn = LuongLocalAttention(DQ, DK, window=1).to(dtype)
    q, k, v = inputs(dtype, "cpu")
    t = torch.arange(LQ)
    context, weights, p = attn(q, k, v, positions=t)
    want_c, want_w, _ = loop_local(attn, q, k, v, None, positions=t)
    torch.testing.assert_close(p, t.to(dtype).expand(B, LQ))
    check(weights, want_w.to(dtype), dtype)
    check(context, want_c.to(dtype), dtype)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, LQ, dtype=dtype))
    # a window covering the whole source is global attention
    wide = LuongLocalAttention(DQ, DK, window=LK).to(dtype)
    wide.weight = attn.weight
    glob = LuongAttention(DQ, DK, "general").to(dtype)
    glob.weight = attn.weight
    for a, b in zip(wide(q, k, v, masks("key"), positions=t)[:2], glob(q, k, v, masks("key"))):
        check(a, b, dtype)


def test_local_m_single_step_takes_a_number():
    attn = LuongLocalAttention(DQ, DK, window=1).double()
    q, k, v = inputs(torch.float64, "cpu")
    context, weights, p = attn(q[:, 2], k, v, positions=2)
    assert p.shape == (B,) and (p == 2).all()
    assert (weights[:, [0, 4]] == 0).all() and (weights[:, 1:4] > 0).all()


@pytest.mark.parametrize("name", ATTENTIONS)
def test_bfloat16_runs_close_to_float64(name):
    attn = ATTENTIONS[name]().double()
    q, k, v = inputs(torch.float64, "cpu")
    want = attn(q, k, v, masks("key"))
    got = attn.bfloat16()(q.bfloat16(), k.bfloat16(), v.bfloat16(), masks("key"))
    for a, b in zip(got[:2], want[:2]):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), b, atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("name", ATTENTIONS)
def test_gradients_reach_every_parameter(name):
    attn = ATTENTIONS[name]().double()
    q, k, v = inputs(torch.float64, "cpu")
    q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    context = attn(q, k, v, masks("key"))[0]
    (context * randn(*context.shape, seed=9)).sum().backward()
    for p in [*attn.parameters(), q, k, v]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# ---------------------------------------------------------------- encoder and decoder

V, E, HID, LS, LT = 11, 5, 6, 7, 4
SRC_MASK = torch.arange(LS) < torch.tensor([[4], [7]])


def seq2seq(kind):
    enc = RNNEncoder(V, E, HID).double()
    attention = {"none": None, "bahdanau": BahdanauAttention(HID, 2 * HID, 8),
                 "luong": LuongAttention(HID, 2 * HID, "general"),
                 "local": LuongLocalAttention(HID, 2 * HID, window=2)}[kind]
    return enc, AttentionDecoder(V, E, HID, 2 * HID, attention).double()


def tokens(*shape, seed=0):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def test_encoder_skips_padding():
    enc, _ = seq2seq("none")
    src = tokens(2, LS)
    states, final = enc(src, SRC_MASK)
    assert states.shape == (2, LS, 2 * HID) and final.shape == (2, 2 * HID)
    assert (states[0, 4:] == 0).all()
    alone, alone_final = enc(src[:1, :4])
    torch.testing.assert_close(states[:1, :4], alone)
    torch.testing.assert_close(final[:1], alone_final)
    torch.testing.assert_close(final_state(states, SRC_MASK), final)
    torch.testing.assert_close(final_state(*enc(src)[:1]), enc(src)[1])


@pytest.mark.parametrize("kind", ["none", "bahdanau", "luong", "local"])
def test_decoder_shapes_and_padding(kind):
    enc, dec = seq2seq(kind)
    states, final = enc(tokens(2, LS), SRC_MASK)
    logits, weights = dec(tokens(2, LT, seed=1), states, SRC_MASK)
    assert logits.shape == (2, LT, V) and torch.isfinite(logits).all()
    if kind == "none":
        assert weights is None
        return
    assert weights.shape == (2, LT, LS)
    assert (weights[0, :, 4:] == 0).all()
    if kind != "local":
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, LT, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["bahdanau"])
def test_decoder_logits_depend_only_on_the_past(kind):
    enc, dec = seq2seq(kind)
    states, _ = enc(tokens(2, LS), SRC_MASK)
    y = tokens(2, LT, seed=1)
    z = y.clone()
    z[:, 2:] = (z[:, 2:] + 1) % V
    a, b = dec(y, states, SRC_MASK)[0], dec(z, states, SRC_MASK)[0]
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_without_attention_the_decoder_sees_only_the_final_state():
    for kind, sees_states in (("none", False), ("bahdanau", True)):
        enc, dec = seq2seq(kind)
        states, final = enc(tokens(2, LS), SRC_MASK)
        y = tokens(2, LT, seed=1)
        other = randn(*states.shape, seed=5)
        a = dec(y, states, SRC_MASK, encoder_final=final)[0]
        b = dec(y, other, SRC_MASK, encoder_final=final)[0]
        assert torch.allclose(a, b) != sees_states


@pytest.mark.parametrize("kind", ["none", "luong"])
def test_greedy_generation_agrees_with_teacher_forcing(kind):
    enc, dec = seq2seq(kind)
    states, _ = enc(tokens(2, LS), SRC_MASK)
    out, weights = dec.generate(states, SRC_MASK, bos=0, steps=5)
    assert out.shape == (2, 5) and (weights is None) == (kind == "none")
    inputs_ = torch.cat([torch.zeros(2, 1, dtype=torch.long), out[:, :-1]], 1)
    logits, teacher_weights = dec(inputs_, states, SRC_MASK)
    assert torch.equal(logits.argmax(-1), out)
    if weights is not None:
        torch.testing.assert_close(weights, teacher_weights)


@pytest.mark.parametrize("kind", ["bahdanau", "local"])
def test_seq2seq_gradients_reach_every_parameter(kind):
    enc, dec = seq2seq(kind)
    states, final = enc(tokens(2, LS), SRC_MASK)
    logits, _ = dec(tokens(2, LT, seed=1), states, SRC_MASK, encoder_final=final)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens(2 * LT, seed=2)).backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("device", DEVICES)
def test_seq2seq_runs_in_float32_on_every_device(device):
    enc = RNNEncoder(V, E, HID).to(device)
    dec = AttentionDecoder(V, E, HID, 2 * HID, BahdanauAttention(HID, 2 * HID, 8)).to(device)
    states, final = enc(tokens(2, LS).to(device), SRC_MASK.to(device))
    logits, weights = dec(tokens(2, LT).to(device), states, SRC_MASK.to(device))
    assert logits.dtype == torch.float32 and logits.device.type == device
    assert weights.shape == (2, LT, LS)


# ---------------------------------------------------------------- bad input

def test_bad_construction_names_the_argument():
    with pytest.raises(ValueError, match="score"):
        LuongAttention(4, 4, "cosine")
    with pytest.raises(ValueError, match="query_dim"):
        LuongAttention(4, 6, "dot")
    for window in (0, -1):
        with pytest.raises(ValueError, match="window"):
            LuongLocalAttention(4, 6, window=window)
    with pytest.raises(TypeError, match="window"):
        LuongLocalAttention(4, 6, window=1.5)
    with pytest.raises(ValueError, match="hidden_dim"):
        BahdanauAttention(4, 6, 0)
    with pytest.raises(ValueError, match="vocab"):
        RNNEncoder(0, 4, 4)
    with pytest.raises(ValueError, match="attention"):
        AttentionDecoder(V, E, HID, 2 * HID, BahdanauAttention(HID + 1, 2 * HID, 8))
    with pytest.raises(TypeError, match="attention"):
        AttentionDecoder(V, E, HID, 2 * HID, attention="bahdanau")


@pytest.mark.parametrize("name", ATTENTIONS)
def test_bad_attention_input_names_the_argument(name):
    attn = ATTENTIONS[name]().double()
    q, k, v = inputs(torch.float64, "cpu")
    bad = [
        (ValueError, "query", (q[0, 0], k, v, None)),
        (ValueError, "query", (q[None], k, v, None)),
        (ValueError, "keys", (q, k[0], v, None)),
        (ValueError, "values", (q, k, v[0], None)),
        (ValueError, "batch", (q[:1], k, v, None)),
        (ValueError, "query", (q[..., :3], k, v, None)),
        (ValueError, "keys", (q, k[..., :3], v, None)),
        (ValueError, "values", (q, k, v[:, :4], None)),
        (ValueError, "mask", (q, k, v, torch.ones(B, LK + 1, dtype=torch.bool))),
        (ValueError, "mask", (q, k, v, torch.ones(B, LQ, LK, 1, dtype=torch.bool))),
        (TypeError, "mask", (q, k, v, torch.ones(B, LK, dtype=torch.long))),
        (TypeError, "keys", (q, k.float(), v, None)),
        (TypeError, "query", (q.float(), k.float(), v.float(), None)),
        (TypeError, "query", (q.tolist(), k, v, None)),
    ]
    for error, match, args in bad:
        with pytest.raises(error, match=match):
            attn(*args)


def test_bad_local_input_names_the_argument():
    attn = LuongLocalAttention(DQ, DK, window=1).double()
    q, k, v = inputs(torch.float64, "cpu")
    with pytest.raises(ValueError, match="positions"):
        attn(q, k, v, positions=torch.arange(LQ + 1))
    with pytest.raises(ValueError, match="positions"):
        attn(q, k, v, positions=torch.tensor([0.0, math.nan, 1.0]))
    with pytest.raises(TypeError, match="positions"):
        attn(q, k, v, positions="monotonic")
    with pytest.raises(TypeError, match="mask"):
        attn(q, k, v, torch.zeros(B, LK, dtype=torch.float64))


def test_bad_seq2seq_input_names_the_argument():
    enc, dec = seq2seq("bahdanau")
    src = tokens(2, LS)
    states, _ = enc(src, SRC_MASK)
    y = tokens(2, LT)
    with pytest.raises(TypeError, match="tokens"):
        enc(src.double())
    with pytest.raises(ValueError, match="tokens"):
        enc(src + V)
    with pytest.raises(ValueError, match="tokens"):
        enc(src[0])
    with pytest.raises(ValueError, match="mask"):
        enc(src, torch.tensor([[True, False, True, True, False, False, False]] * 2))
    with pytest.raises(ValueError, match="mask"):
        enc(src, torch.zeros(2, LS, dtype=torch.bool))
    with pytest.raises(ValueError, match="targets"):
        dec(y - 1, states, SRC_MASK)
    with pytest.raises(ValueError, match="encoder_states"):
        dec(y, states[:1], SRC_MASK)
    with pytest.raises(ValueError, match="encoder_states"):
        dec(y, states[..., :-1], SRC_MASK)
    with pytest.raises(ValueError, match="src_mask"):
        dec(y, states, SRC_MASK[:, :3])
    with pytest.raises(ValueError, match="encoder_final"):
        dec(y, states, SRC_MASK, encoder_final=states[:, 0, :-1])
    with pytest.raises(ValueError, match="targets"):
        dec(y[:, :0], states, SRC_MASK)
    with pytest.raises(ValueError, match="steps"):
        dec.generate(states, SRC_MASK, bos=0, steps=0)
    with pytest.raises(ValueError, match="bos"):
        dec.generate(states, SRC_MASK, bos=V, steps=2)
    with pytest.raises(ValueError, match="states"):
        final_state(states[..., :-1])
