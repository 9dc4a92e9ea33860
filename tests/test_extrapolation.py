"""The train-short, test-long experiment (§5.1): task, models and metrics against independent references."""
import math

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from attnbook.extrapolation import (ENCODINGS, IGNORE, CopyBatch, PositionalTransformer, accuracy,
                                    accuracy_by_position, copy_back_task, copy_loss, length_sweep,
                                    plot_length_sweep)
from attnbook.positions import t5_relative_bucket
from attnbook.train import fit, seed_everything

V = 11  # an odd vocabulary: no size coincides with another


def model_for(encoding, **kwargs):
    torch.manual_seed(0)
    model = PositionalTransformer(V, encoding, dim=16, heads=2, max_length=8, **kwargs).double()
    if encoding == "t5":   # non-zero biases, so that the reference cannot pass by accident
        torch.nn.init.normal_(model.t5.embedding.weight)
    return model.eval()


def tokens(batch=3, length=7, seed=0):
    return torch.randint(V, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the task

@pytest.mark.parametrize("batch, length, shift", [(1, 2, 1), (3, 7, 2), (4, 9, 5)])
def test_copy_back_targets_equal_a_loop(batch, length, shift):
    b = copy_back_task(batch, length, shift=shift, vocab_size=V, generator=torch.Generator().manual_seed(1))
    assert b.tokens.shape == b.targets.shape == (batch, length) and b.tokens.dtype == torch.int64
    assert 0 <= b.tokens.min() and b.tokens.max() < V
    for n in range(batch):
        for i in range(length):
            assert b.targets[n, i] == (b.tokens[n, i - shift] if i >= shift else IGNORE)


def test_copy_back_is_reproducible_and_uses_every_token():
    a, b = (copy_back_task(64, 16, vocab_size=V, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a.tokens, b.tokens)
    assert set(a.tokens.flatten().tolist()) == set(range(V))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(batch=2, length=3, shift=3), ValueError, "shift must be smaller than length"),
    (dict(batch=2, length=5, vocab_size=1), ValueError, "vocab_size must be at least 2"),
    (dict(batch=0, length=5), ValueError, "batch"),
    (dict(batch=2, length=5.0), TypeError, "length"),
    (dict(batch=2, length=5, generator=0), TypeError, "generator"),
])
def test_copy_back_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        copy_back_task(**kwargs)


# ---------------------------------------------------------------- the model against a reference

def reference_logits(model, x):
    """The model's forward recomputed from its parameters with torch's SDPA and loops for the positions."""
    B, L = x.shape
    E, h = model.dim, model.heads
    d = E // h
    emb = model.embed.weight[x]
    i = torch.arange(L)
    if model.encoding == "sinusoidal":
        pe = torch.tensor([[math.sin(p / 10000 ** (2 * (c // 2) / E)) if c % 2 == 0
                            else math.cos(p / 10000 ** (2 * (c // 2) / E)) for c in range(E)] for p in range(L)],
                          dtype=emb.dtype)
        emb = emb + pe
    elif model.encoding == "learned":
        emb = emb + model.learned.embedding.weight[:L]
    bias = torch.zeros(h, L, L, dtype=emb.dtype)
    if model.encoding == "t5":
        table = model.t5.embedding.weight                                    # (buckets, h)
        for q in range(L):
            for k in range(L):
                bias[:, q, k] = table[t5_relative_bucket(torch.tensor(k - q), bidirectional=False,
                                                         num_buckets=model.t5.num_buckets,
                                                         max_distance=model.t5.max_distance)]
    elif model.encoding == "alibi":
        slopes = torch.tensor([2.0 ** (-8 * (n + 1) / h) for n in range(h)], dtype=emb.dtype)
        bias = -slopes[:, None, None] * (i[:, None] - i[None, :]).to(emb.dtype)
    bias = bias.masked_fill(i[None, :] > i[:, None], float("-inf"))
    hid = emb
    for block in model.blocks:
        a = block.attn.attn
        z = F.layer_norm(hid, (E,), block.norm1.weight, block.norm1.bias)
        q, k, v = (F.linear(z, p.weight, p.bias).view(B, L, h, d).transpose(1, 2)
                   for p in (a.q_proj, a.k_proj, a.v_proj))
        if model.encoding == "rope":                 # complex multiplication by e^{i m θ_j}
            theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
            rot = torch.polar(torch.ones(L, d // 2, dtype=torch.float64), i[:, None] * theta)
            q, k = (torch.view_as_real(torch.view_as_complex(t.reshape(B, h, L, d // 2, 2)) * rot).flatten(-2)
                    for t in (q, k))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        hid = hid + F.linear(out.transpose(1, 2).reshape(B, L, E), a.out_proj.weight, a.out_proj.bias)
        if block.ffn is not None:
            z = F.layer_norm(hid, (E,), block.norm2.weight, block.norm2.bias)
            f = block.ffn
            hid = hid + F.linear(F.relu(F.linear(z, f.linear1.weight, f.linear1.bias)), f.linear2.weight, f.linear2.bias)
    return F.linear(F.layer_norm(hid, (E,), model.norm.weight, model.norm.bias), model.out.weight, model.out.bias)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("layers, hidden", [(1, 0), (2, 24)])
def test_forward_equals_an_independent_reference(encoding, layers, hidden):
    extra = dict(t5_buckets=6, t5_max_distance=5) if encoding == "t5" else {}   # log-spaced buckets too
    model = model_for(encoding, layers=layers, hidden=hidden, **extra)
    x = tokens(3, 7)
    with torch.no_grad():
        logits, weights = model(x)
        torch.testing.assert_close(logits, reference_logits(model, x))
    assert logits.shape == (3, 7, V)
    assert len(weights) == layers and all(w.shape == (3, 2, 7, 7) for w in weights)
    for w in weights:                                       # rows sum to 1, nothing above the diagonal
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 7, dtype=w.dtype))
        assert (w.triu(1) == 0).all()


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("layer", [0, 1])
def test_scores_by_offset_average_the_scores_whose_softmax_is_the_weights(encoding, layer):
    model = model_for(encoding, layers=2)
    x = tokens(3, 7)
    profile = model.scores_by_offset(x, layer=layer)
    assert profile.shape == (2, 7)
    with torch.no_grad():
        h, mask = model._inputs(x)
        for block in model.blocks[:layer]:
            h, _ = block(h, mask)
        s = model.blocks[layer].attn.scores(model.blocks[layer].norm1(h), mask)
        torch.testing.assert_close(torch.softmax(s, -1), model(x)[1][layer])    # softmax(scores) = weights
    brute = torch.zeros(2, 7, dtype=s.dtype)
    for head in range(2):
        for r in range(7):
            brute[head, r] = torch.stack([s[b, head, i, i - r] for b in range(3) for i in range(r, 7)]).mean()
    torch.testing.assert_close(profile, brute)


def test_alibi_and_t5_profiles_differ_from_no_positions_by_their_bias():
    x = tokens(4, 9)
    none = model_for("none")
    for encoding in ("alibi", "t5"):
        model = model_for(encoding)
        none.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("t5.")})
        diff = model.scores_by_offset(x) - none.scores_by_offset(x)
        r = torch.arange(9, dtype=diff.dtype)
        if encoding == "alibi":
            want = -torch.tensor([0.0625, 0.00390625], dtype=diff.dtype)[:, None] * r   # slopes 2^-4, 2^-8
        else:
            bucket = t5_relative_bucket(-torch.arange(9), bidirectional=False, num_buckets=8, max_distance=8)
            want = model.t5.embedding.weight[bucket].T.detach()
        torch.testing.assert_close(diff, want)


def test_scores_by_offset_rejects_a_bad_layer():
    with pytest.raises(ValueError, match="layer must be an integer in 0 … 0"):
        model_for("none").scores_by_offset(tokens(), layer=1)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_model_is_causal(encoding):
    model = model_for(encoding, layers=2)
    x = tokens(2, 8)
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % V                           # change the future only
    with torch.no_grad():
        a, b = model(x)[0], model(y)[0]
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_t5_starts_at_zero_bias_and_then_equals_the_model_without_positions():
    t5 = PositionalTransformer(V, "t5", dim=16, heads=2, max_length=8).double().eval()
    none = PositionalTransformer(V, "none", dim=16, heads=2, max_length=8).double().eval()
    none.load_state_dict({k: v for k, v in t5.state_dict().items() if not k.startswith("t5.")})
    assert (t5.t5.embedding.weight == 0).all()
    x = tokens(2, 12)                                       # also beyond max_length
    with torch.no_grad():
        torch.testing.assert_close(t5(x)[0], none(x)[0])


@pytest.mark.parametrize("max_length, buckets", [(16, 16), (40, 32), (100, 32)])
def test_t5_buckets_cover_the_training_length(max_length, buckets):
    model = PositionalTransformer(V, "t5", max_length=max_length)
    assert (model.t5.num_buckets, model.t5.max_distance) == (buckets, max_length)
    seen = t5_relative_bucket(-torch.arange(max_length), bidirectional=False, num_buckets=buckets,
                              max_distance=max_length)
    assert set(seen.tolist()) == set(range(buckets))        # every bucket is met within the training length


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_only_the_learned_table_is_undefined_beyond_max_length(encoding):
    model = model_for(encoding)
    assert model.defined_for(8)
    assert model.defined_for(30) == (encoding != "learned")
    if encoding == "learned":
        with pytest.raises(ValueError, match="max_length=8"):
            model(tokens(1, 9))
    else:
        assert model(tokens(1, 30))[0].shape == (1, 30, V)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(encoding="absolute"), ValueError, "encoding must be one of"),
    (dict(encoding="none", heads=3), ValueError, "does not divide"),
    (dict(encoding="rope", dim=12, heads=4), ValueError, "even head width"),
    (dict(encoding="none", hidden=-1), ValueError, "hidden must be ≥ 0"),
    (dict(encoding="none", hidden=8.0), TypeError, "hidden must be an integer"),
    (dict(encoding="none", layers=0), ValueError, "layers"),
])
def test_model_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        PositionalTransformer(V, **{"dim": 16, "heads": 2, **kwargs})


@pytest.mark.parametrize("x, error, message", [
    (torch.zeros(2, 5), TypeError, "integer token ids"),
    (torch.zeros(5, dtype=torch.long), ValueError, r"\(B, L\)"),
    (torch.full((2, 5), V), ValueError, "must lie in 0"),
    ([[0, 1]], TypeError, "torch.Tensor"),
])
def test_model_rejects_bad_tokens(x, error, message):
    with pytest.raises(error, match=message):
        model_for("none")(x)


# ---------------------------------------------------------------- loss, accuracy, sweep

def test_loss_and_accuracies_equal_a_direct_computation():
    model = model_for("rope")
    batch = copy_back_task(5, 7, shift=3, vocab_size=V, generator=torch.Generator().manual_seed(2))
    logits = model(batch.tokens)[0]
    want = F.cross_entropy(logits[:, 3:].reshape(-1, V), batch.tokens[:, :-3].reshape(-1))
    torch.testing.assert_close(copy_loss(model, batch), want)
    hits = (logits.argmax(-1)[:, 3:] == batch.tokens[:, :-3]).double()
    by_position = accuracy_by_position(model, batch)
    assert by_position.shape == (7,) and torch.isnan(by_position[:3]).all()
    torch.testing.assert_close(by_position[3:], hits.mean(0).float())
    assert accuracy(model, batch) == pytest.approx(hits.mean().item())


def test_undefined_lengths_give_nan_not_a_number_made_up():
    model = model_for("learned")
    long = copy_back_task(2, 12, vocab_size=V)
    assert math.isnan(accuracy(model, long))
    assert torch.isnan(accuracy_by_position(model, long)).all()
    sweep = length_sweep(model, [8, 16], batch=4, vocab_size=V, generator=torch.Generator().manual_seed(0))
    assert list(sweep) == [8, 16] and 0 <= sweep[8] <= 1 and math.isnan(sweep[16])


def test_length_sweep_is_reproducible_and_checks_its_lengths():
    model = model_for("alibi")
    a, b = (length_sweep(model, (8, 24), batch=4, vocab_size=V, generator=torch.Generator().manual_seed(4))
            for _ in range(2))
    assert a == b
    for bad, error in (([0], ValueError), ("816", TypeError), ([], ValueError), ([8.0], TypeError)):
        with pytest.raises(error):
            length_sweep(model, bad, vocab_size=V)


def test_metrics_reject_other_models_and_batches():
    batch = copy_back_task(2, 6, vocab_size=V)
    with pytest.raises(TypeError, match="PositionalTransformer"):
        accuracy(torch.nn.Linear(2, 2), batch)
    with pytest.raises(TypeError, match="CopyBatch"):
        copy_loss(model_for("none"), (batch.tokens, batch.targets))
    with pytest.raises(ValueError, match="same shape"):
        accuracy(model_for("none"), CopyBatch(batch.tokens, batch.targets[:, :4]))


def test_a_relative_encoding_learns_the_task_and_the_untrained_model_does_not():
    g = seed_everything(0)
    model = PositionalTransformer(8, "rope", dim=16, heads=2, max_length=8)
    probe = copy_back_task(64, 8, shift=1, vocab_size=8, generator=torch.Generator().manual_seed(9))
    assert accuracy(model.eval(), probe) < 0.4
    fit(model, lambda step: copy_back_task(32, 8, shift=1, vocab_size=8, generator=g), copy_loss,
        steps=120, lr=1e-2)
    assert accuracy(model, probe) > 0.9


# ---------------------------------------------------------------- figure

def test_plot_length_sweep_draws_one_line_per_encoding_and_skips_undefined_points():
    fig, ax = plt.subplots()
    sweeps = {"learned": {16: 1.0, 32: math.nan}, "alibi": {16: 0.3, 32: 0.31, 64: 0.29}}
    assert plot_length_sweep(ax, sweeps, 16, chance=1 / 16) is ax
    lines = [line for line in ax.get_lines() if line.get_label() in ("learned", "ALiBi")]
    assert [line.get_label() for line in lines] == ["learned", "ALiBi"]
    assert list(lines[0].get_xdata()) == [16, 32] and math.isnan(lines[0].get_ydata()[1])
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="a key of sweeps"):
        plot_length_sweep(ax, {"absolute": {16: 1.0}}, 16)
    with pytest.raises(TypeError, match="non-empty dict"):
        plot_length_sweep(ax, {}, 16)
