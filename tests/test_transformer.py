"""Transformer blocks and the KV cache (§3.2, §4.1, §5.3) against torch.nn.Transformer*Layer,
attnbook.MultiHeadAttention and torch.nn.MultiheadAttention, plus their properties."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from support import DEVICES, DTYPES, randn, tol
from torch import nn

from attnbook import MultiHeadAttention, causal_mask, padding_mask
from attnbook.transformer import (CrossAttention, Decoder, DecoderLayer, Encoder, EncoderLayer, FeedForward,
                                  KVCache, LayerCache, SelfAttention)

E, HEADS, HIDDEN = 12, 3, 20
F64 = torch.float64


def perturbed(module):
    """Random values in every parameter: torch starts biases at 0 and LayerNorms at (1, 0)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64).to(p))
    return module


def torch_layer(kind, norm_first, activation, dtype=F64, device="cpu"):
    cls = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
    layer = cls(E, HEADS, HIDDEN, dropout=0.0, activation=activation, batch_first=True,
                norm_first=norm_first, dtype=dtype, device=device)
    return perturbed(layer).eval()


def keep_from_torch(key_padding_mask):
    """torch's key_padding_mask (B, Lk), True = ignore -> attnbook's (B, 1, Lk), True = may attend."""
    return ~key_padding_mask[:, None, :]


def close(got, want, dtype):
    torch.testing.assert_close(got, want, **tol(dtype))


def exact(got, want):
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------- layers against torch

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masks", ["none", "padding", "causal+padding", "float"])
def test_encoder_layer_from_torch_reproduces_torch(device, dtype, norm_first, activation, masks):
    ref = torch_layer("encoder", norm_first, activation, dtype, device)
    layer = EncoderLayer.from_torch(ref)
    b, length = 3, 5
    x = randn(b, length, E, dtype=dtype, device=device)
    kpm = ~padding_mask([5, 2, 4], length, device=device).squeeze(1)  # (B, L), True = padding
    if masks == "none":
        want, mask = ref(x), None
    elif masks == "padding":
        want, mask = ref(x, src_key_padding_mask=kpm), keep_from_torch(kpm)
    elif masks == "causal+padding":
        torch_causal = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        want = ref(x, src_mask=torch_causal, src_key_padding_mask=kpm)
        mask = keep_from_torch(kpm) & causal_mask(length, device=device)
    else:  # a float mask is added to the scores in both conventions
        mask = randn(length, length, seed=3, dtype=dtype, device=device)
        want = ref(x, src_mask=mask)
    got, weights = layer(x, mask)
    assert got.dtype == dtype and got.device == x.device and weights.shape == (b, HEADS, length, length)
    close(got, want, dtype)
    if masks in ("padding", "causal+padding"):
        assert (weights[1, :, :, 2:] == 0).all()
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masks", ["causal", "causal+padding"])
def test_decoder_layer_from_torch_reproduces_torch(device, dtype, norm_first, activation, masks):
    ref = torch_layer("decoder", norm_first, activation, dtype, device)
    layer = DecoderLayer.from_torch(ref)
    b, t, s = 3, 4, 6                                              # target length != source length
    x, memory = randn(b, t, E, dtype=dtype, device=device), randn(b, s, E, seed=1, dtype=dtype, device=device)
    memory_kpm = ~padding_mask([6, 2, 5], s, device=device).squeeze(1)
    torch_causal = nn.Transformer.generate_square_subsequent_mask(t, device=device, dtype=dtype)  # 0 / -inf
    kwargs, tgt_mask = {}, None
    if masks == "causal+padding":
        torch_causal = torch_causal.isinf()                        # bool, True = not allowed
        tgt_kpm = ~padding_mask([4, 3, 1], t, device=device).squeeze(1)
        kwargs, tgt_mask = dict(tgt_key_padding_mask=tgt_kpm), keep_from_torch(tgt_kpm)
    want = ref(x, memory, tgt_mask=torch_causal, memory_key_padding_mask=memory_kpm, **kwargs)
    got, weights = layer(x, memory, tgt_mask, keep_from_torch(memory_kpm))
    close(got, want, dtype)
    assert weights["self"].shape == (b, HEADS, t, t) and weights["cross"].shape == (b, HEADS, t, s)
    assert (weights["self"].triu(1) == 0).all() and (weights["cross"][1, ..., 2:] == 0).all()
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_and_decoder_stacks_from_torch_reproduce_torch(norm_first):
    enc_layer, dec_layer = torch_layer("encoder", norm_first, "gelu"), torch_layer("decoder", norm_first, "relu")
    final = [perturbed(nn.LayerNorm(E, dtype=F64)) if norm_first else None for _ in range(2)]
    ref_enc = nn.TransformerEncoder(enc_layer, 2, norm=final[0], enable_nested_tensor=False).eval()
    ref_dec = nn.TransformerDecoder(dec_layer, 3, norm=final[1]).eval()
    with torch.no_grad():   # the clones share their values: make the layers differ
        for p in ref_enc.layers[1].parameters():
            p.mul_(0.9)
    encoder, decoder = Encoder.from_torch(ref_enc), Decoder.from_torch(ref_dec)
    assert (encoder.norm is None) == (not norm_first) and len(decoder.layers) == 3
    src, tgt = randn(2, 7, E), randn(2, 4, E, seed=1)
    kpm = ~padding_mask([7, 3], 7).squeeze(1)
    memory, enc_weights = encoder(src, keep_from_torch(kpm))
    close(memory, ref_enc(src, src_key_padding_mask=kpm), F64)
    assert len(enc_weights) == 2
    got, dec_weights = decoder(tgt, memory, memory_mask=keep_from_torch(kpm))
    want = ref_dec(tgt, memory, tgt_mask=~causal_mask(4), memory_key_padding_mask=kpm)
    close(got, want, F64)
    assert len(dec_weights) == 3 and dec_weights[2]["cross"].shape == (2, HEADS, 4, 7)


def test_stacks_have_a_final_norm_exactly_when_pre_norm_by_default():
    for cls in (Encoder, Decoder):
        assert cls(2, E, HEADS, HIDDEN).norm is None
        assert isinstance(cls(2, E, HEADS, HIDDEN, norm_first=True).norm, nn.LayerNorm)
        assert isinstance(cls(2, E, HEADS, HIDDEN, final_norm=True).norm, nn.LayerNorm)
        assert cls(2, E, HEADS, HIDDEN, norm_first=True, final_norm=False).norm is None


def test_from_torch_copies_do_not_share_storage():
    ref = torch_layer("decoder", True, "relu")
    layer = DecoderLayer.from_torch(ref)
    before = [p.clone() for p in layer.parameters()]
    with torch.no_grad():
        for p in ref.parameters():
            p.zero_()
    for p, q in zip(layer.parameters(), before):
        exact(p, q)


def test_bfloat16_encoder_layer_is_close_to_float64():
    layer = EncoderLayer(E, HEADS, HIDDEN, norm_first=True, activation="gelu").double()
    perturbed(layer)
    x = randn(2, 5, E)
    want, _ = layer(x)
    got, _ = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------- self- and cross-attention

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masks", ["none", "bool", "padding", "float", "heads"])
def test_self_attention_equals_multihead_attention_of_x_x_x(device, dtype, causal, masks):
    sa = perturbed(SelfAttention(E, HEADS, causal=causal).to(device=device, dtype=dtype))
    b, length = 2, 6
    x = randn(b, length, E, dtype=dtype, device=device)
    mask = {"none": None,
            "bool": torch.rand(b, length, length, device=device) < 0.6,
            "padding": padding_mask([6, 3], length, device=device),
            "float": randn(length, length, seed=2, dtype=dtype, device=device),
            "heads": torch.rand(b, HEADS, length, length, device=device) < 0.6}[masks]
    if mask is not None and mask.dtype == torch.bool:
        mask[..., 0] = True                                          # no empty row in either layer
    want_mask = mask
    if causal:
        keep = causal_mask(length, device=device)
        want_mask = keep if mask is None else (
            mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf")))
    got, weights = sa(x, mask)
    want, want_weights = sa.attn(x, x, x, want_mask)
    close(got, want, dtype)
    close(weights, want_weights, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_attention_matches_torch_multihead_attention_with_memory_padding(dtype):
    ref = perturbed(nn.MultiheadAttention(E, HEADS, kdim=7, vdim=7, batch_first=True, dtype=dtype)).eval()
    ca = CrossAttention(E, HEADS, kdim=7).to(dtype)
    ca.attn = MultiHeadAttention.from_torch(ref)
    x, memory = randn(3, 4, E, dtype=dtype), randn(3, 9, 7, seed=1, dtype=dtype)
    keep = padding_mask([9, 1, 5], 9)
    got, weights = ca(x, memory, keep)
    want, want_weights = ref(x, memory, memory, key_padding_mask=~keep.squeeze(1), need_weights=True,
                             average_attn_weights=False)
    close(got, want, dtype)
    close(weights, want_weights, dtype)
    assert weights.shape == (3, HEADS, 4, 9)


def test_fully_masked_query_gives_zero_weights_and_finite_gradients():
    sa = perturbed(SelfAttention(E, HEADS).double())
    x = randn(2, 4, E, grad=True)
    keep = torch.ones(2, 4, 4, dtype=torch.bool)
    keep[1, 2] = False
    y, weights = sa(x, keep)
    assert (weights[1, :, 2] == 0).all()
    exact(y[1, 2], sa.attn.out_proj.bias)                           # a zero attention output, then Wᴼ·0 + bᴼ
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_feed_forward_is_the_two_layer_formula_at_every_position():
    for activation, act in (("relu", torch.relu), ("gelu", lambda z: 0.5 * z * (1 + torch.erf(z / 2 ** 0.5)))):
        ffn = perturbed(FeedForward(E, HIDDEN, activation).double())
        x = randn(2, 3, 4, E)
        want = act(x @ ffn.linear1.weight.T + ffn.linear1.bias) @ ffn.linear2.weight.T + ffn.linear2.bias
        close(ffn(x), want, F64)


def test_dropout_acts_only_in_training():
    layer = perturbed(EncoderLayer(E, HEADS, HIDDEN, dropout=0.5).double())
    x = randn(2, 5, E)
    without = EncoderLayer(E, HEADS, HIDDEN).double()
    without.load_state_dict(layer.state_dict())
    exact(layer.eval()(x)[0], without(x)[0])
    assert not torch.allclose(layer.train()(x)[0], without(x)[0])


def test_dropout_one_drops_every_block_so_a_pre_norm_layer_is_the_identity():
    x, memory = randn(2, 5, E), randn(2, 3, E, seed=1)
    encoder = perturbed(EncoderLayer(E, HEADS, HIDDEN, norm_first=True, dropout=1.0).double()).train()
    decoder = perturbed(DecoderLayer(E, HEADS, HIDDEN, norm_first=True, dropout=1.0).double()).train()
    exact(encoder(x)[0], x)
    exact(decoder(x, memory)[0], x)
    post = perturbed(EncoderLayer(E, HEADS, HIDDEN, dropout=1.0).double()).train()
    exact(post(x)[0], post.norm2(post.norm1(x)))


def test_from_torch_copies_the_dropout_rate_and_the_mode():
    ref = nn.TransformerDecoderLayer(E, HEADS, HIDDEN, dropout=0.3, batch_first=True)
    layer = DecoderLayer.from_torch(ref)
    assert layer.training
    assert {m.p for m in layer.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert not EncoderLayer.from_torch(nn.TransformerEncoderLayer(E, HEADS, HIDDEN, batch_first=True).eval()).training


# ---------------------------------------------------------------- properties

@settings(max_examples=20, deadline=None)
@given(length=st.integers(2, 7), data=st.data())
def test_causal_outputs_ignore_later_tokens(length, data):
    k = data.draw(st.integers(1, length - 1), label="first changed position")
    sa = perturbed(SelfAttention(E, HEADS, causal=True).double())
    decoder = perturbed(Decoder(2, E, HEADS, HIDDEN, norm_first=data.draw(st.booleans())).double())
    x, memory = randn(2, length, E), randn(2, 3, E, seed=1)
    changed = x.clone()
    changed[:, k:] = randn(2, length - k, E, seed=2)
    for run in (lambda z: sa(z)[0], lambda z: decoder(z, memory)[0]):
        before, after = run(x), run(changed)
        exact(after[:, :k], before[:, :k])
        assert not torch.allclose(after[:, k], before[:, k])       # the changed token itself does change


@settings(max_examples=20, deadline=None)
@given(perm=st.permutations(list(range(6))))
def test_self_attention_without_positions_is_permutation_equivariant(perm):
    perm = torch.tensor(perm)
    x = randn(2, 6, E)
    for layer in (perturbed(SelfAttention(E, HEADS).double()),
                  perturbed(EncoderLayer(E, HEADS, HIDDEN, norm_first=True, activation="gelu").double())):
        y, weights = layer(x)
        y_perm, weights_perm = layer(x[:, perm])
        close(y_perm, y[:, perm], F64)
        close(weights_perm, weights[:, :, perm][:, :, :, perm], F64)
    if not torch.equal(perm, torch.arange(6)):                      # the property can fail: causal breaks it
        causal = perturbed(SelfAttention(E, HEADS, causal=True).double())
        assert not torch.allclose(causal(x[:, perm])[0], causal(x)[0][:, perm])


# ---------------------------------------------------------------- the KV cache

def decoder_and_inputs(batch, length, norm_first, dtype, device="cpu", layers=2):
    decoder = perturbed(Decoder(layers, E, HEADS, HIDDEN, memory_dim=7, norm_first=norm_first,
                                activation="gelu")).to(device=device, dtype=dtype).eval()
    x = randn(batch, length, E, dtype=dtype, device=device)
    memory = randn(batch, 5, 7, seed=1, dtype=dtype, device=device)
    memory_mask = padding_mask([5, 2, 4][:batch], 5, device=device)
    return decoder, x, memory, memory_mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (F64, 1e-10)])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch, length", [(1, 1), (2, 6), (3, 9)])
def test_incremental_decoding_with_the_cache_equals_the_full_pass(device, dtype, atol, norm_first, batch, length):
    decoder, x, memory, memory_mask = decoder_and_inputs(batch, length, norm_first, dtype, device)
    full, full_weights = decoder(x, memory, memory_mask=memory_mask)
    cache = KVCache(decoder.num_layers)
    for t in range(length):
        y, weights = decoder.forward_step(x[:, t:t + 1], memory, cache, memory_mask)
        torch.testing.assert_close(y, full[:, t:t + 1], rtol=0, atol=atol)
        for step, whole in zip(weights, full_weights):
            torch.testing.assert_close(step["self"], whole["self"][:, :, t:t + 1, :t + 1], rtol=0, atol=atol)
            torch.testing.assert_close(step["cross"], whole["cross"][:, :, t:t + 1], rtol=0, atol=atol)


@pytest.mark.parametrize("chunks", [[3, 1, 1, 2], [2, 5], [7]])
def test_decoding_in_chunks_with_the_cache_equals_the_full_pass(chunks):
    """A prompt of several tokens, then more: the new queries sit after the cached positions."""
    decoder, x, memory, memory_mask = decoder_and_inputs(2, 7, True, F64)
    full, _ = decoder(x, memory, memory_mask=memory_mask)
    cache, start, outputs = KVCache(2), 0, []
    for size in chunks:
        outputs.append(decoder.forward_step(x[:, start:start + size], memory, cache, memory_mask)[0])
        start += size
    torch.testing.assert_close(torch.cat(outputs, 1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("batch, layers", [(1, 1), (3, 2)])
def test_cache_grows_one_position_per_step_and_holds_2_layers_B_L_E_numbers(batch, layers):
    decoder, x, memory, memory_mask = decoder_and_inputs(batch, 4, False, torch.float32, layers=layers)
    cache = KVCache(layers)
    assert cache.length == 0 and cache.numel() == 0 and cache.nbytes() == 0
    for t in range(4):
        decoder.forward_step(x[:, t:t + 1], memory, cache, memory_mask)
        assert cache.length == t + 1
        for i in range(layers):
            assert cache[i].key.shape == cache[i].value.shape == (batch, HEADS, t + 1, E // HEADS)
        assert cache.numel() == 2 * layers * batch * (t + 1) * E
        assert cache.nbytes() == 4 * cache.numel()


def test_layer_cache_appends_along_the_positions():
    cache = LayerCache()
    k1, v1, k2, v2 = (randn(2, 3, n, 4, seed=s) for s, n in enumerate((2, 2, 1, 1)))
    cache.append(k1, v1)
    key, value = cache.append(k2, v2)
    exact(key, torch.cat([k1, k2], 2))
    exact(value, torch.cat([v1, v2], 2))
    assert cache.length == 3


def test_bad_step_leaves_the_cache_unchanged():
    decoder, x, memory, memory_mask = decoder_and_inputs(2, 3, False, F64)
    cache = KVCache(2)
    decoder.forward_step(x[:, :1], memory, cache, memory_mask)
    for bad in (lambda: decoder.forward_step(x[:, 1:2], memory[..., :6], cache),
                lambda: decoder.forward_step(x[:, 1:2], memory, cache, padding_mask([5, 2], 4)),
                lambda: decoder.forward_step(x[:1, 1:2], memory[:1], cache)):
        with pytest.raises(ValueError):
            bad()
        assert [c.length for c in cache.layers] == [1, 1]


# ---------------------------------------------------------------- bad input

X, MEMORY = randn(2, 5, E), randn(2, 4, E, seed=1)


@pytest.mark.parametrize("make, error, name", [
    (lambda: SelfAttention(10, 3), ValueError, "num_heads"),
    (lambda: EncoderLayer(10, 4, HIDDEN), ValueError, "num_heads"),
    (lambda: DecoderLayer(E, 0, HIDDEN), ValueError, "num_heads"),
    (lambda: CrossAttention(E, HEADS, kdim=5, vdim=6), ValueError, "kdim"),
    (lambda: CrossAttention(E, HEADS, kdim=0), ValueError, "kdim"),
    (lambda: FeedForward(E, 0), ValueError, "hidden_dim"),
    (lambda: FeedForward(E, HIDDEN, "tanh"), ValueError, "activation"),
    (lambda: EncoderLayer(E, HEADS, HIDDEN, activation="swish"), ValueError, "activation"),
    (lambda: DecoderLayer(E, HEADS, HIDDEN, activation=torch.relu), ValueError, "activation"),
    (lambda: EncoderLayer(E, HEADS, HIDDEN, dropout=1.5), ValueError, "dropout"),
    (lambda: FeedForward(E, HIDDEN, dropout="0.1"), TypeError, "dropout"),
    (lambda: Encoder(0, E, HEADS, HIDDEN), ValueError, "num_layers"),
    (lambda: Decoder(2.0, E, HEADS, HIDDEN), TypeError, "num_layers"),
    (lambda: KVCache(0), ValueError, "num_layers"),
])
def test_bad_construction_names_the_argument(make, error, name):
    with pytest.raises(error, match=name):
        make()


def _layers():
    return (SelfAttention(E, HEADS).double(), CrossAttention(E, HEADS, kdim=7).double(),
            EncoderLayer(E, HEADS, HIDDEN).double(), DecoderLayer(E, HEADS, HIDDEN).double(),
            Decoder(2, E, HEADS, HIDDEN).double())


@pytest.mark.parametrize("call, error, name", [
    (lambda sa, ca, enc, dec, stack: sa(X[0]), ValueError, "x"),                        # rank 2
    (lambda sa, ca, enc, dec, stack: enc(X[None]), ValueError, "x"),                    # rank 4
    (lambda sa, ca, enc, dec, stack: enc(X[..., :10]), ValueError, "x"),                # width
    (lambda sa, ca, enc, dec, stack: sa(X.long()), TypeError, "x"),
    (lambda sa, ca, enc, dec, stack: sa([[1.0]]), TypeError, "x"),
    (lambda sa, ca, enc, dec, stack: ca(X, MEMORY), ValueError, "memory"),              # width 12, not 7
    (lambda sa, ca, enc, dec, stack: dec(X, MEMORY[0]), ValueError, "memory"),          # rank 2
    (lambda sa, ca, enc, dec, stack: dec(X, MEMORY[:1]), ValueError, "memory"),         # batch
    (lambda sa, ca, enc, dec, stack: dec(X, MEMORY.float()), TypeError, "memory"),      # dtype
    (lambda sa, ca, enc, dec, stack: sa(X, torch.ones(6, 5, dtype=torch.bool)), ValueError, "mask"),
    (lambda sa, ca, enc, dec, stack: enc(X, torch.ones(2, 1, 1, 5, 5, dtype=torch.bool)), ValueError, "mask"),
    (lambda sa, ca, enc, dec, stack: enc(X, torch.ones(5, 5, dtype=torch.long)), TypeError, "mask"),
    (lambda sa, ca, enc, dec, stack: enc(X, torch.zeros(5, 5)), TypeError, "mask"),     # float32 mask, float64 x
    (lambda sa, ca, enc, dec, stack: enc(X, [[True]]), TypeError, "mask"),
    (lambda sa, ca, enc, dec, stack: dec(X, MEMORY, torch.ones(3, 5, 5, dtype=torch.bool)), ValueError, "tgt_mask"),
    (lambda sa, ca, enc, dec, stack: dec(X, MEMORY, None, torch.ones(2, 1, 5, dtype=torch.bool)),
     ValueError, "memory_mask"),
    (lambda sa, ca, enc, dec, stack: stack(X, MEMORY, memory_mask=torch.ones(5, 3, dtype=torch.bool)),
     ValueError, "memory_mask"),
    (lambda sa, ca, enc, dec, stack: sa(X, cache=KVCache(1)), TypeError, "cache"),
    (lambda sa, ca, enc, dec, stack: stack.forward_step(X, MEMORY, KVCache(3)), ValueError, "cache"),
    (lambda sa, ca, enc, dec, stack: stack.forward_step(X, MEMORY, None), TypeError, "cache"),
    (lambda sa, ca, enc, dec, stack: stack.forward_step(X, MEMORY, [LayerCache(), LayerCache()]), TypeError, "cache"),
])
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call(*_layers())


def test_cache_rejects_a_different_batch_or_dtype():
    cache = LayerCache()
    cache.append(randn(2, 3, 1, 4), randn(2, 3, 1, 4))
    with pytest.raises(ValueError, match="cache"):
        cache.append(randn(1, 3, 1, 4), randn(1, 3, 1, 4))
    with pytest.raises(TypeError, match="key"):
        cache.append(randn(2, 3, 1, 4, dtype=torch.float32), randn(2, 3, 1, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match="value"):
        cache.append(randn(2, 3, 1, 4), randn(2, 3, 2, 4))
    assert cache.length == 1


def test_from_torch_rejects_other_modules_and_activations():
    with pytest.raises(TypeError, match="layer"):
        EncoderLayer.from_torch(nn.TransformerDecoderLayer(E, HEADS, HIDDEN, batch_first=True))
    with pytest.raises(TypeError, match="layer"):
        DecoderLayer.from_torch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="encoder"):
        Encoder.from_torch(nn.TransformerEncoderLayer(E, HEADS, HIDDEN, batch_first=True))
    with pytest.raises(ValueError, match="activation"):
        EncoderLayer.from_torch(nn.TransformerEncoderLayer(E, HEADS, HIDDEN, activation=torch.tanh, batch_first=True))
    with pytest.raises(ValueError, match="activation"):
        DecoderLayer.from_torch(nn.TransformerDecoderLayer(E, HEADS, HIDDEN, batch_first=True,
                                                           activation=nn.GELU(approximate="tanh")))
