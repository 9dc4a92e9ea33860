"""Images and words in one space: captioned digits, a CLIP-style model, videos and captions (§4.6, §6.3).

The data are scikit-learn's 8 × 8 digits (:mod:`attnbook.digits`) with captions generated from
the label and from two attributes measured on the image: how much ink it holds (``thick`` /
``thin``, relative to the other digits of its class) and which way it leans (``leaning left`` /
``leaning right``). Captions are written with several templates ("a thick seven", "the number
seven , thin , leaning left", ...), so that the text encoder has to read them.

:class:`CLIP` is the contrastive model of Radford et al. (2021) at the scale of the digits: an
image encoder (a small CNN or ViT), a text encoder (a one-layer Transformer with mean pooling),
linear projections to a shared space, L2 normalisation and a learned temperature, trained with
the symmetric InfoNCE loss (:func:`info_nce`). :func:`train_clip` trains it deterministically in
a few seconds; :func:`similarity`, :func:`retrieve`, :func:`retrieval_accuracy` and
:func:`zero_shot` use it.

Videos are sequences of digit frames (:func:`make_videos`); :class:`VideoAligner` lets each word
of a caption attend over the frames (cross-attention) and :class:`Captioner` writes the caption
with a Transformer decoder that cross-attends to the frames.
"""
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .digits import DigitCNN, DigitViT, load_digits_tensors, random_shifts, split
from .positions import sinusoidal_encoding
from .train import fit, seed_everything
from .transformer import CrossAttention, Decoder, Encoder

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
VOCAB = (PAD, BOS, EOS, *DIGIT_NAMES, "a", "digit", "handwritten", "the", "number", "written", ",",
         "thick", "thin", "leaning", "left", "right", "then")
WORD_INDEX = {w: i for i, w in enumerate(VOCAB)}
THICKNESS = {-1: "thin", 0: None, 1: "thick"}
LEAN = {-1: "left", 0: None, 1: "right"}
# (prefix, attributes before the digit name?): "a thick seven leaning left",
# "a digit seven , thick , leaning left", ...
TEMPLATES = ((("a",), True), (("a", "handwritten"), True), (("a", "digit"), False),
             (("the", "number"), False))
PROMPT = ("a", "digit")         # the zero-shot prompt "a digit seven" has no attribute


# ---------------------------------------------------------------- argument checks

def _int(value, name, minimum=0):
    return _checks.integer(value, name, minimum)


def _images(images, name="images"):
    _checks.tensor(images, name)
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"{name} must be (N, 1, 8, 8), got shape {tuple(images.shape)}")
    return images


def _tokens(tokens, name="tokens"):
    _checks.tensor(tokens, name, floating=False)
    if tokens.dim() != 2 or tokens.dtype != torch.int64:
        raise ValueError(f"{name} must be a 2-D int64 tensor (N, L) of word indices, got shape "
                         f"{tuple(tokens.shape)} and dtype {tokens.dtype}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= len(VOCAB)):
        raise ValueError(f"{name} must hold indices in 0 .. {len(VOCAB) - 1}, got {tokens.min().item()} "
                         f".. {tokens.max().item()}")
    return tokens


# ---------------------------------------------------------------- attributes and captions

def ink(images):
    """Σ_ij x_ij: the amount of ink of each image (a thick stroke holds more), (N,).

    images (N, 1, H, W) -> (N,). Cost O(N·H·W). Explained in §4.6.
    """
    _checks.tensor(images, "images", min_dim=3)
    return images.flatten(1).sum(1)


def lean(images):
    """c_top − c_bottom: how far the upper half's ink lies right of the lower half's, (N,), in pixels.

    c = Σ_j j·x_ij / Σ_ij x_ij is the horizontal centre of mass of a half (rows 0 .. H/2 − 1,
    then the rest); a positive value means the top leans right, like "/". A half without ink
    counts as centred. images (N, 1, H, W) -> (N,). Cost O(N·H·W). Explained in §4.6.
    """
    _checks.tensor(images, "images", min_dim=3)
    x = images.flatten(0, -3) if images.dim() > 3 else images
    x = x.reshape(images.shape[0], *images.shape[-2:])
    h, w = x.shape[-2:]
    cols = torch.arange(w, dtype=x.dtype)

    def centre(part):
        mass = part.sum((-2, -1))
        return torch.where(mass > 0, (part.sum(-2) * cols).sum(-1) / mass.clamp_min(1e-12), (w - 1) / 2)

    return centre(x[:, :h // 2]) - centre(x[:, h // 2:])


def terciles(values, labels):
    """−1, 0 or +1 per example: below the first tercile of its class, between, or above the second.

    Within each class k the cut points are the 1/3 and 2/3 quantiles of ``values`` over the
    examples of class k, so each class has about a third of each level: "thick" means thick
    *for a seven*. values (N,) float, labels (N,) int -> (N,) int64. Cost O(N log N). §4.6.
    """
    _checks.tensor(values, "values")
    _checks.tensor(labels, "labels", floating=False)
    if values.dim() != 1 or values.shape != labels.shape:
        raise ValueError(f"values and labels must be 1-D of one length, got {tuple(values.shape)} "
                         f"and {tuple(labels.shape)}")
    out = torch.zeros(len(values), dtype=torch.int64)
    for k in labels.unique().tolist():
        member = labels == k
        low, high = torch.quantile(values[member].double(), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
        v = values[member].double()
        out[member] = (v > high).long() - (v < low).long()
    return out


def caption(label, thickness=0, leaning=0, template=0):
    """The caption of a digit as a list of words, e.g. ["a", "thick", "seven", "leaning", "left"].

    label 0 .. 9; thickness and leaning in {−1, 0, +1} (0: not mentioned); template indexes
    :data:`TEMPLATES`: a prefix, then the attributes before the name ("a thin seven leaning
    left") or after it, between commas ("a digit seven , thin , leaning left"). §4.6.
    """
    label, template = _int(label, "label"), _int(template, "template")
    if label > 9 or template >= len(TEMPLATES):
        raise ValueError(f"label must be in 0 .. 9 and template in 0 .. {len(TEMPLATES) - 1}, "
                         f"got {label} and {template}")
    if thickness not in THICKNESS or leaning not in LEAN:
        raise ValueError(f"thickness and leaning must be -1, 0 or 1, got {thickness} and {leaning}")
    prefix, before = TEMPLATES[template]
    thick = [THICKNESS[thickness]] if thickness else []
    lean_words = ["leaning", LEAN[leaning]] if leaning else []
    if before:
        return [*prefix, *thick, DIGIT_NAMES[label], *lean_words]
    after = [part for part in (thick, lean_words) if part]
    return [*prefix, DIGIT_NAMES[label], *[w for part in after for w in [",", *part]]]


def tokenize(captions, length=None):
    """Word lists to indices into :data:`VOCAB`, then [EOS] and padding: (N, L) int64.

    captions: a list of word lists (or of strings, split at spaces). ``length`` L (default:
    the longest caption + 1 for [EOS]); a caption that does not fit is a ValueError. §4.6.
    """
    captions = [c.split() if isinstance(c, str) else list(c) for c in captions]
    if not captions:
        raise ValueError("captions is empty")
    unknown = sorted({w for c in captions for w in c if w not in WORD_INDEX})
    if unknown:
        raise ValueError(f"captions use words outside the vocabulary: {unknown}")
    longest = max(len(c) for c in captions) + 1
    length = longest if length is None else _int(length, "length", 1)
    if length < longest:
        raise ValueError(f"length={length} is too short for a caption of {longest - 1} words and [EOS]")
    out = torch.full((len(captions), length), WORD_INDEX[PAD], dtype=torch.int64)
    for i, c in enumerate(captions):
        out[i, :len(c) + 1] = torch.tensor([WORD_INDEX[w] for w in c] + [WORD_INDEX[EOS]])
    return out


def detokenize(tokens):
    """(N, L) indices to strings, stopping at [EOS] and skipping [PAD] and [BOS]. §4.6."""
    tokens = _tokens(tokens)
    out = []
    for row in tokens.tolist():
        words = []
        for t in row:
            if VOCAB[t] == EOS:
                break
            if VOCAB[t] not in (PAD, BOS):
                words.append(VOCAB[t])
        out.append(" ".join(words))
    return out


@dataclasses.dataclass
class CaptionedDigits:
    """The digits with one generated caption each (§4.6).

    images (N, 1, 8, 8), labels (N,), thickness and leaning (N,) in {−1, 0, +1}, template (N,),
    captions (N strings), tokens (N, L), train and test (index tensors). ``content`` (N,) is one
    integer per (label, thickness, leaning): two captions with the same content say the same
    thing in different words, and :func:`retrieval_accuracy` counts either as right.
    """
    images: torch.Tensor
    labels: torch.Tensor
    thickness: torch.Tensor
    leaning: torch.Tensor
    template: torch.Tensor
    captions: list
    tokens: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor

    @property
    def content(self):
        return self.labels * 9 + (self.thickness + 1) * 3 + (self.leaning + 1)


def captioned_digits(seed=0, test_size=0.22):
    """Build :class:`CaptionedDigits`: the 1,797 digits, their attributes and a caption each.

    thickness = :func:`terciles` of :func:`ink`, leaning = terciles of :func:`lean`, both
    within each class; the template is drawn uniformly with a generator seeded by ``seed``;
    the split is :func:`attnbook.digits.split` (1,402 / 395 with the defaults). Deterministic.
    Cost O(N·64). Explained in §4.6.
    """
    images, labels = load_digits_tensors()
    g = torch.Generator().manual_seed(_int(seed, "seed"))
    thickness, leaning = terciles(ink(images), labels), terciles(lean(images), labels)
    template = torch.randint(len(TEMPLATES), (len(labels),), generator=g)
    words = [caption(*args) for args in zip(labels.tolist(), thickness.tolist(), leaning.tolist(),
                                            template.tolist())]
    train, test = split(labels, test_size, seed=seed)
    return CaptionedDigits(images, labels, thickness, leaning, template, [" ".join(w) for w in words],
                           tokenize(words), train, test)


def prompts(template=PROMPT):
    """The ten zero-shot prompts "a digit zero" … "a digit nine" as tokens (10, L). §4.6."""
    return tokenize([[*template, name] for name in DIGIT_NAMES])


# ---------------------------------------------------------------- the model

class TextEncoder(nn.Module):
    """t = mean_{i not padding} Encoder(W_e[w_i] + PE_i): a one-layer Transformer with mean pooling.

    tokens (B, L) int64 (0 = padding) -> (B, E). ``positions=False`` leaves out the sinusoidal
    position encodings: the encoder is then exactly invariant to the order of the words (a bag
    of words). Cost O(B·L²·E + B·L·E²). Explained in §4.6.
    """

    def __init__(self, embed_dim=32, heads=2, layers=1, *, positions=True, max_length=16):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), embed_dim, padding_idx=WORD_INDEX[PAD])
        self.encoder = Encoder(layers, embed_dim, heads, 2 * embed_dim, norm_first=True)
        self.positions = bool(positions)
        self.register_buffer("pe", sinusoidal_encoding(max_length, embed_dim), persistent=False)

    def forward(self, tokens):
        tokens = _tokens(tokens)
        if tokens.shape[1] > len(self.pe):
            raise ValueError(f"tokens has length {tokens.shape[1]} but the encoder takes at most {len(self.pe)}")
        keep = tokens != WORD_INDEX[PAD]                                  # (B, L)
        x = self.embed(tokens) + (self.pe[:tokens.shape[1]] if self.positions else 0)
        x, _ = self.encoder(x, keep[:, None, :])
        keep = keep.unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(1) / keep.sum(1).clamp_min(1)


class CLIP(nn.Module):
    """logits_ij = s · ⟨f(x_i), g(t_j)⟩ with f, g L2-normalised projections: a CLIP for digits.

    f(x) = normalise(W_x · ImageEncoder(x)), g(t) = normalise(W_t · TextEncoder(t)), both in a
    shared space of ``dim`` D; s = exp(logit_scale) is the learned inverse temperature,
    initialised to 1/0.07 and clamped at 100 as in Radford et al. (2021). ``image_encoder`` is
    "cnn" (:class:`attnbook.digits.DigitCNN`'s features) or "vit" (:class:`DigitViT`'s class
    token; it trains more slowly: with the defaults of :func:`train_clip` it stays far behind the
    CNN); ``temperature`` fixes s = 1/temperature instead of learning it.
    forward(images (B, 1, 8, 8), tokens (B', L)) -> logits (B, B'). Explained in §4.6.
    """

    def __init__(self, dim=32, *, image_encoder="cnn", text_dim=32, positions=True, temperature=None):
        super().__init__()
        _checks.positive(dim, "dim", integer=True)
        # the encoder's linear head is the projection W_x to the shared space
        if image_encoder == "cnn":
            self.image_encoder = DigitCNN(channels=(16, 32), classes=dim)
        elif image_encoder == "vit":
            self.image_encoder = DigitViT(embed_dim=32, depth=1, heads=2, classes=dim)
        else:
            raise ValueError(f"image_encoder must be 'cnn' or 'vit', got {image_encoder!r}")
        self.text_encoder = TextEncoder(text_dim, positions=positions)
        self.text_proj = nn.Linear(text_dim, dim, bias=False)
        if temperature is None:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        else:
            _checks.positive(temperature, "temperature")
            self.register_buffer("logit_scale", torch.tensor(math.log(1 / temperature)))

    @property
    def scale(self):
        """s = exp(logit_scale), clamped at 100: the inverse temperature (a tensor)."""
        return self.logit_scale.exp().clamp(max=100.0)

    def encode_image(self, images):
        """f(x): (B, 1, 8, 8) -> (B, D), unit length."""
        images = _images(images)
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, tokens):
        """g(t): (B, L) -> (B, D), unit length."""
        return F.normalize(self.text_proj(self.text_encoder(tokens)), dim=-1)

    def forward(self, images, tokens):
        return self.scale * self.encode_image(images) @ self.encode_text(tokens).T


def info_nce(logits):
    """L = ½ [CE(S, diag) + CE(Sᵀ, diag)]: the symmetric InfoNCE loss of a (B, B) similarity matrix.

    S_ij = s·⟨f(x_i), g(t_j)⟩ scores image i against text j; pair i is (x_i, t_i), so the
    right answer of row i and of column i is i, and the other B − 1 entries are its negatives:
    L = −(1/2B) Σ_i [log softmax_j(S_ij)|_{j=i} + log softmax_j(S_ji)|_{j=i}]
    (van den Oord et al., 2018; Radford et al., 2021). logits (B, B) -> scalar.
    Cost O(B²). Explained in §4.6.
    """
    _checks.tensor(logits, "logits")
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be a square (B, B) matrix, got shape {tuple(logits.shape)}")
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_clip(data=None, *, seed=0, steps=300, batch_size=128, lr=3e-3, dim=32, image_encoder="cnn",
               positions=True, temperature=None, max_shift=0):
    """Train a :class:`CLIP` on the training pairs of ``data`` and return it (in eval mode).

    Each of ``steps`` AdamW steps (:func:`attnbook.train.fit`, cosine decay, clipping at 1)
    draws ``batch_size`` B training pairs without replacement, with a generator seeded by
    ``seed``, and minimises :func:`info_nce` on their B × B logits: each pair has B − 1
    negatives. ``data`` defaults to ``captioned_digits(seed)``. ``max_shift`` > 0 moves each
    image by a random offset (augmentation). The model is initialised after
    ``seed_everything(seed)``, so one seed gives one model. The losses are kept in
    ``model.losses``. About 2 s for the defaults on one CPU core. Explained in §4.6.
    """
    data = captioned_digits(seed) if data is None else data
    if not isinstance(data, CaptionedDigits):
        raise TypeError(f"data must be CaptionedDigits, got {type(data).__name__}")
    _checks.positive(batch_size, "batch_size", integer=True)
    if batch_size < 2 or batch_size > len(data.train):
        raise ValueError(f"batch_size must be in 2 .. {len(data.train)} (the training pairs), got {batch_size}")
    seed_everything(_int(seed, "seed"))
    model = CLIP(dim, image_encoder=image_encoder, positions=positions, temperature=temperature)
    g = torch.Generator().manual_seed(seed)
    images, tokens = data.images[data.train], data.tokens[data.train]

    def batch(step):
        i = torch.randperm(len(images), generator=g)[:batch_size]
        return random_shifts(images[i], max_shift, g), tokens[i]

    model.losses = fit(model, batch, lambda m, b: info_nce(m(*b)), steps=steps, lr=lr)
    return model


@torch.no_grad()
def similarity(model, images, tokens):
    """C_ij = ⟨f(x_i), g(t_j)⟩, the cosine similarity of image i and text j: (N, M), no grad.

    Without the temperature, so values lie in [−1, 1]. images (N, 1, 8, 8), tokens (M, L).
    Cost: N + M encoder passes and an N × M × D product. Explained in §4.6.
    """
    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a CLIP, got {type(model).__name__}")
    model.eval()
    return model.encode_image(images) @ model.encode_text(tokens).T


def retrieve(sim, k=1):
    """The indices of the k largest entries of each row of ``sim`` (N, M), best first: (N, k).

    Image → text retrieval on C; pass Cᵀ for text → image. Ties are broken by torch.topk.
    Cost O(N·M). Explained in §4.6.
    """
    _checks.tensor(sim, "sim")
    if sim.dim() != 2:
        raise ValueError(f"sim must be a 2-D (N, M) matrix, got shape {tuple(sim.shape)}")
    k = _int(k, "k", 1)
    if k > sim.shape[1]:
        raise ValueError(f"k={k} is more than the {sim.shape[1]} candidates (columns of sim)")
    return sim.topk(k, dim=1).indices


def retrieval_accuracy(sim, match, k=1):
    """(1/N) Σ_i [some j among the k best of row i has match_ij]: top-k retrieval accuracy.

    sim (N, M) scores; match (N, M) bool says which candidates are right answers (e.g. the
    captions with the same content, or the images of the same digit). A float in [0, 1].
    Cost O(N·M). Explained in §4.6.
    """
    _checks.tensor(match, "match", floating=False)
    if match.dtype != torch.bool or match.shape != sim.shape:
        raise ValueError(f"match must be a bool tensor of the shape of sim {tuple(sim.shape)}, "
                         f"got {tuple(match.shape)} and {match.dtype}")
    best = retrieve(sim, k)
    return match.gather(1, best).any(1).double().mean().item()


@torch.no_grad()
def zero_shot(model, images, template=PROMPT):
    """argmax_k ⟨f(x), g("a digit <name_k>")⟩: classification by the nearest prompt, (N,) int64.

    No classifier is trained: the ten prompts are encoded once and each image takes the label
    of the most similar one. Cost: N + 10 encoder passes. Explained in §4.6.
    """
    return similarity(model, images, prompts(template)).argmax(1)


# ---------------------------------------------------------------- videos

@dataclasses.dataclass
class Videos:
    """Synthetic videos of digits (§4.6): frames (V, T, 1, 8, 8), digits (V, K) the digit shown in
    each of the K segments, segments (V, T) the segment (0 .. K − 1) of each frame, captions
    (V strings such as "three then seven then one") and tokens (V, 2K) ending in [EOS]."""
    frames: torch.Tensor
    digits: torch.Tensor
    segments: torch.Tensor
    captions: list
    tokens: torch.Tensor


def make_videos(images, labels, count, *, digits=3, frames=9, min_frames=2, noise=0.15, max_shift=0, seed=0):
    """``count`` videos, each showing ``digits`` K different digits one after the other.

    Every video draws K distinct classes, one image of each (from ``images``, ``labels``), and
    splits its T = ``frames`` frames into K segments of at least ``min_frames`` (uniformly
    among such splits); each frame of a segment is its image moved by a random (dy, dx) in
    {−s, …, s}² (``max_shift``) plus Gaussian noise of standard deviation ``noise``. The caption
    names the digits in order: "three then seven then one". Deterministic for a ``seed``.
    -> :class:`Videos`. Cost O(count·T·64). Explained in §4.6.
    """
    _images(images)
    count, k, t = _int(count, "count", 1), _int(digits, "digits", 1), _int(frames, "frames", 1)
    low = _int(min_frames, "min_frames", 1)
    if k > 10 or k * low > t:
        raise ValueError(f"digits={k} segments of at least min_frames={low} frames do not fit in "
                         f"frames={t} (and at most 10 digits)")
    g = torch.Generator().manual_seed(_int(seed, "seed"))
    by_class = [(labels == c).nonzero().squeeze(1) for c in range(10)]
    shown = torch.stack([torch.randperm(10, generator=g)[:k] for _ in range(count)])          # (V, K)
    picks = torch.stack([torch.stack([by_class[c][torch.randint(len(by_class[c]), (), generator=g)]
                                      for c in row]) for row in shown.tolist()])             # (V, K)
    segments = []
    for _ in range(count):                    # K − 1 cut points among the allowed positions
        cuts = torch.randperm(t - k * low + k - 1, generator=g)[:k - 1].sort().values
        extra = torch.diff(torch.cat([torch.tensor([-1]), cuts, torch.tensor([t - k * low + k - 1])])) - 1
        segments.append(torch.repeat_interleave(torch.arange(k), extra + low))
    segments = torch.stack(segments)                                                          # (V, T)
    clips = images[picks.gather(1, segments)]                                                 # (V, T, 1, 8, 8)
    moved = random_shifts(clips.flatten(0, 1), max_shift, g).view_as(clips)
    clips = moved + noise * torch.randn(moved.shape, generator=g, dtype=moved.dtype)
    words = [[w for i, d in enumerate(row) for w in ([] if i == 0 else ["then"]) + [DIGIT_NAMES[d]]]
             for row in shown.tolist()]
    return Videos(clips, shown, segments, [" ".join(w) for w in words], tokenize(words))


@torch.no_grad()
def frame_features(model, frames):
    """f(x_t) for every frame: the frozen CLIP image embedding of each frame, (V, T, D), no grad.

    The video models below read these features rather than pixels, as video-text models built
    on CLIP do: the image encoder already knows the digits. frames (V, T, 1, 8, 8).
    Cost V·T image-encoder passes. Explained in §4.6.
    """
    if not isinstance(model, CLIP):
        raise TypeError(f"model must be a CLIP, got {type(model).__name__}")
    _checks.tensor(frames, "frames")
    if frames.dim() != 5 or tuple(frames.shape[2:]) != (1, 8, 8):
        raise ValueError(f"frames must be (V, T, 1, 8, 8), got shape {tuple(frames.shape)}")
    model.eval()
    return model.encode_image(frames.flatten(0, 1)).view(*frames.shape[:2], -1)


class FrameEncoder(nn.Module):
    """m_t = W f_t + b (+ PE_t): frame features to the model's width, plus the time's position encoding.

    features (V, T, F) -> memory (V, T, E); with ``positions`` the sinusoidal encoding of t
    is added, so that attention can tell early frames from late ones. Cost O(V·T·F·E). §4.6.
    """

    def __init__(self, in_dim, embed_dim=32, *, positions=True, max_frames=32):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)
        self.positions = bool(positions)
        self.register_buffer("pe", sinusoidal_encoding(max_frames, embed_dim), persistent=False)

    def forward(self, features):
        _checks.tensor(features, "features")
        if features.dim() != 3 or features.shape[-1] != self.proj.in_features:
            raise ValueError(f"features must be (V, T, {self.proj.in_features}), got shape {tuple(features.shape)}")
        if features.shape[1] > len(self.pe):
            raise ValueError(f"features has {features.shape[1]} frames but the encoder takes at most {len(self.pe)}")
        x = self.proj(features)
        return x + self.pe[:features.shape[1]] if self.positions else x


def _features(features, batch=None):
    _checks.tensor(features, "features")
    if features.dim() != 3 or (batch is not None and features.shape[0] != batch):
        raise ValueError(f"features must be (V, T, F){'' if batch is None else f' with V = {batch}'}, "
                         f"got shape {tuple(features.shape)}")
    return features


class VideoAligner(nn.Module):
    """ŷ_k = W_o Σ_t a_kt v_t with a_k = softmax_t(q(w_k)·k(m_t)/√d): each digit word looks for its frames.

    The query of word k is its embedding alone; keys and values come only from the frames
    (:class:`FrameEncoder` without positions, :class:`attnbook.transformer.CrossAttention`, one
    head), and the output must name the digit that the word names. No residual path carries
    the word to the output and the frames carry no time stamp, so the only way to predict the
    word is to attend to frames that show it: the alignment is learned without a single frame
    being labelled. words (V, K) digit labels, features (V, T, F) (:func:`frame_features`)
    -> (logits (V, K, 10), weights (V, K, T)). Cost O(V·K·T·E + V·T·F·E). Explained in §4.6.
    """

    def __init__(self, in_dim, embed_dim=32):
        super().__init__()
        self.frames = FrameEncoder(in_dim, embed_dim, positions=False)
        self.words = nn.Embedding(10, embed_dim)
        self.cross = CrossAttention(embed_dim, 1)
        self.out = nn.Linear(embed_dim, 10)

    def forward(self, words, features):
        _checks.tensor(words, "words", floating=False)
        features = _features(features)
        if words.dim() != 2 or words.shape[0] != features.shape[0]:
            raise ValueError(f"words must be (V, K) with the V of features {tuple(features.shape)}, "
                             f"got {tuple(words.shape)}")
        if words.numel() and (words.min() < 0 or words.max() > 9):
            raise ValueError(f"words must be digit labels 0 .. 9, got {words.min().item()} .. {words.max().item()}")
        y, weights = self.cross(self.words(words), self.frames(features))
        return self.out(y), weights[:, 0]


def alignment_accuracy(weights, segments, words_segment=None):
    """(1/VK) Σ_vk [segment(argmax_t a_vkt) = segment of word k]: words whose attention peaks in their frames.

    weights (V, K, T); segments (V, T) the segment of each frame; ``words_segment`` (V, K) the
    segment word k belongs to (default k). A float in [0, 1]; a uniform guess scores the
    average share of frames in the right segment (1/K on average). Cost O(V·K·T). §4.6.
    """
    _checks.tensor(weights, "weights", min_dim=3)
    _checks.tensor(segments, "segments", floating=False)
    if weights.dim() != 3 or segments.shape != (weights.shape[0], weights.shape[2]):
        raise ValueError(f"weights must be (V, K, T) and segments (V, T), got {tuple(weights.shape)} "
                         f"and {tuple(segments.shape)}")
    v, k, _ = weights.shape
    if words_segment is None:
        words_segment = torch.arange(k).expand(v, k)
    if words_segment.shape != (v, k):
        raise ValueError(f"words_segment must be (V, K) = ({v}, {k}), got {tuple(words_segment.shape)}")
    peak = segments.gather(1, weights.argmax(-1))                         # (V, K)
    return (peak == words_segment).double().mean().item()


def _draws(count, batch_size, seed):
    _checks.positive(batch_size, "batch_size", integer=True)
    g = torch.Generator().manual_seed(seed)
    return lambda step: torch.randperm(count, generator=g)[:batch_size]


def train_aligner(videos, features, *, seed=0, steps=200, batch_size=64, lr=1e-2, embed_dim=32):
    """Train a :class:`VideoAligner` to name each digit word from the frames it attends to.

    Cross-entropy of the K digit words of each video; ``steps`` AdamW steps on batches of
    ``batch_size`` videos drawn with a generator seeded by ``seed``. videos a :class:`Videos`,
    features (V, T, F) their frames' features. Returns the model (eval mode) with
    ``model.losses``. Explained in §4.6.
    """
    features = _features(features, len(videos.digits))
    seed_everything(_int(seed, "seed"))
    model = VideoAligner(features.shape[-1], embed_dim)

    def loss(m, i):
        logits, _ = m(videos.digits[i], features[i])
        return F.cross_entropy(logits.flatten(0, 1), videos.digits[i].flatten())

    model.losses = fit(model, _draws(len(features), batch_size, seed), loss, steps=steps, lr=lr)
    return model


class Captioner(nn.Module):
    """p(w_{i+1} | w_≤i, video) = softmax(W_o Decoder(W_e[w_≤i] + PE, FrameEncoder(video))): a video captioner.

    A :class:`attnbook.transformer.Decoder` (pre-norm, causal self-attention, then
    cross-attention from the words to the frames, whose features carry their time's position
    encoding). forward(tokens (V, L) starting with [BOS], features (V, T, F)) -> (logits
    (V, L, |VOCAB|), cross-attention weights (V, h, L, T) of the last layer).
    Cost O(V·(L² + L·T)·E + V·(L + T)·E²). Explained in §4.6.
    """

    def __init__(self, in_dim, embed_dim=32, heads=2, layers=1, *, max_length=16):
        super().__init__()
        self.frames = FrameEncoder(in_dim, embed_dim)
        self.embed = nn.Embedding(len(VOCAB), embed_dim)
        self.decoder = Decoder(layers, embed_dim, heads, 2 * embed_dim, norm_first=True)
        self.out = nn.Linear(embed_dim, len(VOCAB))
        self.register_buffer("pe", sinusoidal_encoding(max_length, embed_dim), persistent=False)

    def forward(self, tokens, features):
        tokens, features = _tokens(tokens), _features(features)
        if tokens.shape[1] > len(self.pe) or tokens.shape[0] != features.shape[0]:
            raise ValueError(f"tokens must be (V, L ≤ {len(self.pe)}) with the V of features "
                             f"{tuple(features.shape)}, got {tuple(tokens.shape)}")
        x = self.embed(tokens) + self.pe[:tokens.shape[1]]
        y, weights = self.decoder(x, self.frames(features))
        return self.out(y), weights[-1]["cross"]


def shift_right(tokens):
    """[BOS] w₁ … w_{L−1}: the decoder's input for targets w₁ … w_L (teacher forcing). (V, L). §4.6."""
    tokens = _tokens(tokens)
    return torch.cat([torch.full((len(tokens), 1), WORD_INDEX[BOS]), tokens[:, :-1]], dim=1)


def train_captioner(videos, features, *, seed=0, steps=200, batch_size=64, lr=1e-2, embed_dim=32):
    """Train a :class:`Captioner` with teacher forcing: input [BOS] w₁ … w_{L−1}, target w₁ … [EOS].

    Cross-entropy of every next word; ``steps`` AdamW steps on batches of ``batch_size``
    videos drawn with a generator seeded by ``seed``. Returns the model (eval mode) with
    ``model.losses``. Explained in §4.6.
    """
    features = _features(features, len(videos.tokens))
    seed_everything(_int(seed, "seed"))
    model = Captioner(features.shape[-1], embed_dim)

    def loss(m, i):
        target = videos.tokens[i]
        logits, _ = m(shift_right(target), features[i])
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=WORD_INDEX[PAD])

    model.losses = fit(model, _draws(len(features), batch_size, seed), loss, steps=steps, lr=lr)
    return model


@torch.no_grad()
def greedy_caption(model, features, length):
    """Greedy decoding: w_{i+1} = argmax p(· | w_≤i, video), from [BOS], for ``length`` words.

    -> (tokens (V, length), cross-attention weights (V, h, length, T): row i is the step that
    chose word i). Decodes by rerunning the prefix (no cache: the captions are short).
    Cost O(length) forward passes. Explained in §4.6.
    """
    if not isinstance(model, Captioner):
        raise TypeError(f"model must be a Captioner, got {type(model).__name__}")
    length = _int(length, "length", 1)
    model.eval()
    tokens = torch.full((features.shape[0], 1), WORD_INDEX[BOS])
    for _ in range(length):
        logits, weights = model(tokens, features)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[:, 1:], weights
