"""BERT / GPT / LLaMA pieces (§4.2) against torch.nn.RMSNorm, brute-force formulas, SDPA with
enable_gqa, multi-head attention with repeated heads, and full passes against cached decoding."""
import math

import pytest
import torch
import torch.nn.functional as F

from attnbook import attention
from attnbook.families import (IGNORE, GQASelfAttention, RMSNorm, SwiGLU, TinyLM, bar_id, bert_masking,
                               blank_accuracy, count_parameters, decode, echo_batch, generate,
                               grouped_query_attention, kv_cache_numbers_per_token, mask_id,
                               masked_lm_loss, next_token_loss)
from attnbook.transformer import KVCache

F64 = torch.float64


def perturbed(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ---------------------------------------------------------------- the echo language and masking

def test_echo_batch_follows_the_rule():
    t = echo_batch(5, 4, 6, generator=torch.Generator().manual_seed(0))
    assert t.shape == (5, 9) and t.dtype == torch.long
    assert (t[:, 4] == bar_id(6)).all()
    assert torch.equal(t[:, 5:], (t[:, :4] + 1) % 6)
    assert t[:, :4].max() < 6
    assert decode(torch.tensor([2, 0, 7, 8, 9])) == "cah|_"


@pytest.mark.parametrize("bad, error", [(dict(batch=0), ValueError), (dict(length=1.5), TypeError),
                                        (dict(letters=1), ValueError)])
def test_echo_batch_rejects_bad_sizes(bad, error):
    with pytest.raises(error, match=list(bad)[0]):
        echo_batch(**{"batch": 2, "length": 3, "letters": 8, **bad})


def test_bert_masking_follows_the_80_10_10_rule():
    letters = 8
    tokens = echo_batch(4000, 6, letters, generator=torch.Generator().manual_seed(0))
    inputs, targets = bert_masking(tokens, letters, generator=torch.Generator().manual_seed(1))
    chosen = targets != IGNORE
    assert torch.equal(targets[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])                 # unchosen tokens untouched
    assert not chosen[:, 6].any()                                         # the bar is never chosen
    rate = chosen.float().mean().item() * 13 / 12                          # 12 letters of 13 tokens
    assert abs(rate - 0.15) < 0.01
    masked = (inputs[chosen] == mask_id(letters)).float().mean().item()
    kept = (inputs[chosen] == tokens[chosen]).float().mean().item()        # 10 % kept + 10 % · 1/8 by chance
    assert abs(masked - 0.8) < 0.02 and abs(kept - (0.1 + 0.1 / letters)) < 0.02
    assert (inputs[chosen] != mask_id(letters)).logical_and(inputs[chosen] >= letters).sum() == 0


def test_bert_masking_rejects_bad_input():
    with pytest.raises(TypeError, match="tokens"):
        bert_masking(torch.zeros(2, 3), 8)
    with pytest.raises(ValueError, match="p must"):
        bert_masking(torch.zeros(2, 3, dtype=torch.long), 8, p=0.0)


# ---------------------------------------------------------------- RMSNorm, SwiGLU

def test_rms_norm_matches_the_formula_and_torch():
    x = torch.randn(3, 5, 7, dtype=F64)
    norm = perturbed(RMSNorm(7, eps=1e-5).double())
    brute = torch.empty_like(x)
    for i in range(3):
        for j in range(5):
            rms = math.sqrt(sum(v * v for v in x[i, j].tolist()) / 7 + 1e-5)
            brute[i, j] = norm.weight * x[i, j] / rms
    torch.testing.assert_close(norm(x), brute)
    theirs = torch.nn.RMSNorm(7, eps=1e-5, dtype=F64)
    theirs.weight.data.copy_(norm.weight.data)
    torch.testing.assert_close(norm(x), theirs(x))
    assert not torch.allclose(norm(x), F.layer_norm(x, (7,), norm.weight, None, 1e-5))   # the mean matters


def test_rms_norm_rejects_a_wrong_width():
    with pytest.raises(ValueError, match=r"width 6 \(shape \(2, 6\)\)"):
        RMSNorm(7)(torch.randn(2, 6))
    with pytest.raises(TypeError, match="x must be a floating"):
        RMSNorm(3)(torch.ones(2, 3, dtype=torch.long))


def test_swiglu_matches_the_formula():
    ffn = SwiGLU(6, 10).double()
    x = torch.randn(2, 4, 6, dtype=F64)
    w1, w2, w3 = ffn.w1.weight, ffn.w2.weight, ffn.w3.weight
    brute = torch.empty_like(x)
    for i in range(2):
        for j in range(4):
            a, b = w1 @ x[i, j], w3 @ x[i, j]
            brute[i, j] = w2 @ (a / (1 + torch.exp(-a)) * b)
    torch.testing.assert_close(ffn(x), brute)
    assert count_parameters(ffn) == 3 * 6 * 10
    with pytest.raises(ValueError, match="width 5"):
        ffn(torch.randn(2, 5))


# ---------------------------------------------------------------- grouped-query attention

@pytest.mark.parametrize("hq, hkv", [(6, 2), (6, 3), (6, 1), (4, 4)])
def test_gqa_equals_sdpa_and_repeated_heads(hq, hkv):
    q = torch.randn(2, hq, 5, 8, dtype=F64)
    k, v = torch.randn(2, hkv, 7, 8, dtype=F64), torch.randn(2, hkv, 7, 3, dtype=F64)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    out, w = grouped_query_attention(q, k, v, mask)
    assert out.shape == (2, hq, 5, 3) and w.shape == (2, hq, 5, 7)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
    g = hq // hkv
    for i in range(hq):                                                  # head i reads kv head i // g
        ref, ref_w = attention(q[:, i], k[:, i // g], v[:, i // g], mask)
        torch.testing.assert_close(out[:, i], ref)
        torch.testing.assert_close(w[:, i], ref_w)
    causal, _ = grouped_query_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))


def test_gqa_rejects_heads_that_do_not_group():
    q, k = torch.randn(1, 6, 3, 4), torch.randn(1, 4, 3, 4)
    with pytest.raises(ValueError, match="multiple of h_kv"):
        grouped_query_attention(q, k, k)
    with pytest.raises(ValueError, match="value has 2"):
        grouped_query_attention(q, torch.randn(1, 3, 3, 4), torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="query must"):
        grouped_query_attention(torch.randn(6, 3, 4), k, k)


def test_gqa_layer_is_rope_attention_with_shared_heads():
    layer = GQASelfAttention(16, 4, 2).double()
    x = torch.randn(2, 5, 16, dtype=F64)
    y, w = layer(x)
    q = layer.q_proj(x).view(2, 5, 4, 4).transpose(1, 2)
    k = layer.k_proj(x).view(2, 5, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    v = layer.v_proj(x).view(2, 5, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    pos = torch.arange(5)
    theta = 10000.0 ** (-torch.arange(0, 4, 2, dtype=F64) / 4)

    def rope(t):                                                         # brute force: turn each pair
        out = t.clone()
        for m in range(5):
            for i in range(2):
                c, s = math.cos(pos[m] * theta[i]), math.sin(pos[m] * theta[i])
                a, b = t[..., m, 2 * i], t[..., m, 2 * i + 1]
                out[..., m, 2 * i], out[..., m, 2 * i + 1] = a * c - b * s, a * s + b * c
        return out

    ref = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
    torch.testing.assert_close(y, layer.out_proj(ref.transpose(1, 2).reshape(2, 5, 16)))
    assert torch.all(w.triu(1) == 0)
    assert count_parameters(layer) == 2 * 16 * 16 + 2 * 16 * 8
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide"):
        GQASelfAttention(16, 4, 3)


# ---------------------------------------------------------------- the three models

@pytest.mark.parametrize("kind, kv", [("gpt", None), ("llama", 2), ("llama", 1)])
def test_cached_decoding_equals_the_full_pass(kind, kv):
    model = perturbed(TinyLM(kind, 10, 12, embed_dim=16, num_heads=4, num_kv_heads=kv)).eval()
    tokens = torch.randint(10, (3, 9))
    full, _ = model(tokens)
    cache = KVCache(2)
    steps = [model(tokens[:, :4], cache=cache)[0]] + [model(tokens[:, t:t + 1], cache=cache)[0] for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    head_dim, kv_heads = 4, (4 if kv is None else kv)
    assert cache.numel() == 3 * 9 * kv_cache_numbers_per_token(2, kv_heads, head_dim)
    with_cache, c = generate(model, tokens[:, :4], 5)
    without, none = generate(model, tokens[:, :4], 5, use_cache=False)
    assert torch.equal(with_cache, without) and none is None and c.length == 8   # the last token is not fed back


def test_causal_models_do_not_read_the_future_and_bert_does():
    tokens = torch.randint(10, (2, 8))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 10
    for kind in ("gpt", "llama", "bert"):
        model = perturbed(TinyLM(kind, 10, 8, embed_dim=16, num_kv_heads=2 if kind == "llama" else None)).eval()
        a, b = model(tokens)[0], model(changed)[0]
        same_past = torch.allclose(a[:, :5], b[:, :5])
        assert same_past == (kind != "bert"), kind


def test_parameters_of_the_blocks():
    e, h = 16, 4
    gpt = TinyLM("gpt", 10, 12, embed_dim=e, num_heads=h, num_layers=1)
    llama = TinyLM("llama", 10, 12, embed_dim=e, num_heads=h, num_layers=1, num_kv_heads=2, hidden_dim=40)
    assert count_parameters(gpt.body[0]) == 4 * e * e + 4 * e + 2 * e * 4 * e + 4 * e + e + 4 * e
    assert count_parameters(llama.body[0]) == 2 * e * e + 2 * e * 8 + 3 * e * 40 + 2 * e
    assert not any(n.endswith("bias") for n, _ in llama.named_parameters())


def test_losses_and_accuracies_run_and_check_their_input():
    tokens = echo_batch(8, 3, 8, generator=torch.Generator().manual_seed(0))
    for kind in ("bert", "gpt", "llama"):
        model = TinyLM(kind, 10, 7, embed_dim=16)
        loss = masked_lm_loss(model, tokens, 8) if kind == "bert" else next_token_loss(model, tokens)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert 0 <= blank_accuracy(model, tokens, 5, context="left") <= 1
    with pytest.raises(ValueError, match="position must be < L = 7"):
        blank_accuracy(model, tokens, 7)
    with pytest.raises(ValueError, match="context must be"):
        blank_accuracy(model, tokens, 2, context="right")
    with pytest.raises(ValueError, match="cannot continue a prefix"):
        generate(TinyLM("bert", 10, 7), tokens, 2)
    with pytest.raises(TypeError, match="only gpt and llama"):
        TinyLM("bert", 10, 7)(tokens, cache=KVCache(2))
    with pytest.raises(ValueError, match="kind must be one of"):
        TinyLM("t5", 10, 7)
    with pytest.raises(ValueError, match=r"tokens must lie in 0..9"):
        TinyLM("gpt", 10, 7)(tokens + 5)


def test_bert_left_context_masks_the_right_side():
    """blank_accuracy(context="left") must hide every later token from the encoder."""
    model = TinyLM("bert", 10, 7, embed_dim=16).eval()
    tokens = echo_batch(4, 3, 8, generator=torch.Generator().manual_seed(0))
    altered = tokens.clone()
    altered[:, 4:] = (altered[:, 4:] + 3) % 8
    with torch.no_grad():
        assert blank_accuracy(model, tokens, 2, context="left") == blank_accuracy(model, altered, 2, context="left")
