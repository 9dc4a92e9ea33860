"""attnbook.checkpoint (§5.3): same gradients as without checkpointing, less memory saved."""
import pytest
import torch
from support import DEVICES, DTYPES, randn
from torch import nn

from attnbook import MultiHeadAttention
from attnbook.checkpoint import Checkpointed, activation_memory, checkpointed


class SelfAttentionBlock(nn.Module):
    """x + MHA(x, x, x): a residual self-attention block (outputs only, not the weights)."""

    def __init__(self, width, heads):
        super().__init__()
        self.attention = MultiHeadAttention(width, heads)

    def forward(self, x, mask=None):
        return x + self.attention(x, x, x, mask)[0]


def mlp_block(width, hidden, dropout=0.0):
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, width), nn.ReLU())


def gradients(blocks, x, wrap, seed=1, **kwargs):
    """Gradients of a scalar loss w.r.t. x and every parameter, each block wrapped by ``wrap``."""
    torch.manual_seed(seed)  # the same dropout masks for both runs
    for p in blocks.parameters():
        p.grad = None
    x = x.detach().requires_grad_(True)
    y = x
    for block in blocks:
        y = wrap(block)(y, **kwargs)
    (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype, device=y.device)).sum().backward()
    return [x.grad] + [p.grad for p in blocks.parameters()]


def assert_identical(a, b):
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_stack_gradients_are_identical(device, dtype):
    blocks = nn.ModuleList(SelfAttentionBlock(8, 2) for _ in range(3)).to(device, dtype)
    x = randn(2, 5, 8, dtype=dtype, device=device)
    mask = torch.ones(5, 5, dtype=torch.bool, device=device).tril()
    plain = gradients(blocks, x, lambda b: b, mask=mask)
    assert all(g is not None and g.abs().sum() > 0 for g in plain)
    assert_identical(plain, gradients(blocks, x, Checkpointed, mask=mask))
    assert_identical(plain, gradients(blocks, x, checkpointed, mask=mask))


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_draws_the_same_mask_when_recomputed(device):
    blocks = nn.ModuleList(mlp_block(6, 16, dropout=0.5) for _ in range(4)).to(device, torch.float64)
    x = randn(3, 7, 6, device=device)
    plain = gradients(blocks, x, lambda b: b)
    assert_identical(plain, gradients(blocks, x, checkpointed))
    other_masks = gradients(blocks, x, lambda b: b, seed=2)
    assert any(not torch.equal(a, b) for a, b in zip(plain, other_masks))  # dropout does matter


def test_functions_and_modules_are_wrapped():
    layer = mlp_block(4, 8)
    assert isinstance(checkpointed(layer), Checkpointed) and checkpointed(layer).module is layer
    assert list(checkpointed(layer).parameters()) == list(layer.parameters())

    calls = []

    def double_tanh(x, *, gain):
        """A function with a keyword argument."""
        calls.append(gain)
        return gain * torch.tanh(x)

    wrapped = checkpointed(double_tanh)
    assert wrapped.__name__ == "double_tanh" and wrapped.__doc__ == double_tanh.__doc__
    x = randn(3, 4, grad=True)
    y = wrapped(x, gain=2.0)
    torch.testing.assert_close(y, double_tanh(x, gain=2.0), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, 2.0 * (1 - torch.tanh(x) ** 2))
    assert len(calls) == 3  # wrapped forward, the direct call, the recomputation in backward
    assert activation_memory(lambda t: wrapped(t, gain=1.0), x) == 0  # only x: not counted
    assert activation_memory(lambda t: double_tanh(t, gain=1.0), x) == 3 * 4 * 8  # tanh output


class CountingBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.calls = nn.Linear(4, 4), 0

    def forward(self, x):
        self.calls += 1
        return torch.relu(self.linear(x))


def test_backward_recomputes_the_forward_pass():
    block = CountingBlock()
    x = randn(2, 4, dtype=torch.float32, grad=True)
    Checkpointed(block)(x).sum().backward()
    assert block.calls == 2  # once forward, once again during backward
    block.calls = 0
    with torch.no_grad():
        Checkpointed(block)(x)
    assert block.calls == 1
    block(x).sum().backward()
    assert block.calls == 2


def linear_stack(depth, width, bias):
    return nn.Sequential(*(nn.Linear(width, width, bias=bias) for _ in range(depth)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("grad_input", [False, True])
def test_linear_stack_memory_is_exact_and_linear_in_length(dtype, bias, depth, grad_input):
    """Each Linear after the first saves its input (B, L, width): (depth − 1)·B·L·width numbers."""
    batch, width = 3, 4
    stack = linear_stack(depth, width, bias).to(dtype)
    itemsize = torch.finfo(dtype).bits // 8
    for length in [1, 2, 7, 16]:
        x = randn(batch, length, width, dtype=dtype, grad=grad_input)
        assert activation_memory(stack, x) == (depth - 1) * batch * length * width * itemsize


def test_every_saved_activation_counts_once():
    """ReLU and the next Linear save the same tensor: it is counted once (exact count)."""
    batch, length, width, hidden, depth = 2, 5, 3, 7, 4
    blocks = nn.Sequential(*(mlp_block(width, hidden) for _ in range(depth))).double()
    x = randn(batch, length, width)
    # each block keeps its two ReLU outputs: (hidden + width) numbers per position
    assert activation_memory(blocks, x) == depth * batch * length * (hidden + width) * 8


@pytest.mark.parametrize("length", [4, 32])
def test_checkpointing_saves_memory_in_a_deep_stack(length):
    batch, width, hidden, depth = 2, 8, 32, 6
    blocks = nn.Sequential(*(mlp_block(width, hidden) for _ in range(depth))).double()
    x = randn(batch, length, width)
    plain = activation_memory(blocks, x)
    checkpointed_stack = nn.Sequential(*(checkpointed(b) for b in blocks))
    saved = activation_memory(checkpointed_stack, x)
    assert plain == depth * batch * length * (hidden + width) * 8
    assert saved == (depth - 1) * batch * length * width * 8  # only the inputs of blocks 2..depth
    assert saved < plain / 4


def test_attention_memory_grows_with_the_square_of_the_length():
    """attnbook.attention keeps its (L × L) weights; the checkpointed block keeps only its input."""
    block = SelfAttentionBlock(8, 2).double()
    small, large = (activation_memory(block, randn(1, n, 8)) for n in (8, 16))
    assert 3 < large / small < 4  # the L² weights dominate the L·E projections
    assert activation_memory(Checkpointed(block), randn(1, 16, 8)) == 0  # its input is not counted


def test_memory_is_zero_without_gradients_and_counts_fn_closures():
    assert activation_memory(torch.tanh, randn(3, 4)) == 0  # nothing requires grad
    w = randn(4, 4, grad=True)
    assert activation_memory(lambda x: torch.tanh(x @ w), randn(3, 4)) == 3 * 4 * 8  # tanh output
    assert activation_memory(lambda x: torch.tanh(x @ w).sum(), randn(3, 4)) == 3 * 4 * 8


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="module_or_fn"):
        checkpointed(3)
    with pytest.raises(TypeError, match="module"):
        Checkpointed("layer")
    with pytest.raises(TypeError, match="fn"):
        activation_memory(None, randn(2))
