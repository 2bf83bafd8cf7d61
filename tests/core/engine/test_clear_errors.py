"""What mode "reversible" cannot do raises an error that names the block, the shapes, or the
mode and the fix (mode "autograd"): double backward, ``torch.func`` transforms and vmap,
``torch.utils.checkpoint`` or an activation hook inside F, uninitialised lazy modules, wrong
shapes, and ``check_inverse`` on what it cannot check."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import X, agree, pair, seeded_step, token_chain
from helpers import revnet_stack
from torch import nn
from torch.utils.checkpoint import checkpoint

import revlib
from revlib.core.modes import CheckpointedModule


def test_errors_name_the_block_and_shapes():
    m = revnet_stack(depth=2)
    with pytest.raises(ValueError, match=r"block 0: AdditiveCoupling.*odd number of channels \(7"):
        m(torch.randn(2, 7, 4, 4, requires_grad=True))
    bad = revlib.ReversibleSequence(
        [
            revlib.AdditiveCoupling(nn.Identity(), nn.Identity()),
            revlib.AdditiveCoupling(nn.Conv2d(2, 3, 1), nn.Identity()),
        ]
    )
    with pytest.raises(
        ValueError,
        match=r"block 1: AdditiveCoupling: F maps a half of shape \(1, 2, 4, 4\) "
        r"to shape \(1, 3, 4, 4\)",
    ):
        bad(torch.randn(1, 4, 4, 4, requires_grad=True))
    with pytest.raises(
        ValueError, match=r"expected an input with 4 dimensions, got shape \(8, 4, 4\)"
    ):
        revlib.ReversibleSequence(m.blocks, ndim=4)(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="got shape \\(8,\\)"):
        m(torch.randn(8, requires_grad=True))
    with pytest.raises(TypeError, match="block 0 is a Conv2d"):
        revlib.ReversibleSequence([nn.Conv2d(2, 2, 1)])
    with pytest.raises(ValueError, match="mode must be one of"):
        revlib.ReversibleSequence([], mode="fast")


def test_double_backward_raises_a_clear_error():
    m = revnet_stack(depth=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    loss = (m(x) ** 2).sum()
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_torch_func_transforms_point_to_mode_autograd():
    m = token_chain(
        lambda: nn.Linear(4, 4)
    ).double()  # no BatchNorm: torch.func refuses its in-place update
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"torch\.func transforms.*mode='autograd'"):
        torch.func.grad(lambda v: m(v).sum())(x)
    m.mode = "autograd"
    assert torch.func.grad(lambda v: m(v).sum())(x).shape == x.shape


def test_backward_under_vmap_raises_a_clear_error():
    model = pair(lambda: nn.Linear(3, 3))["reversible"]
    x = X.clone().requires_grad_(True)
    y = model(x)
    with pytest.raises(RuntimeError, match=r"mode='reversible'.*under vmap.*mode='autograd'"):
        torch.autograd.grad(
            y, x, torch.eye(6, dtype=torch.float64)[:, None].expand(6, 4, 6), is_grads_batched=True
        )


class TorchCheckpointed(nn.Module):
    """torch.utils.checkpoint around a body with BatchNorm (whose recomputation would run outside
    the replay)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh())
        self.reentrant = reentrant

    def forward(self, h):
        return checkpoint(self.body, h, use_reentrant=self.reentrant)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("reentrant", [False, True])
def test_torch_checkpoint_inside_f_raises_a_clear_error(reentrant):
    models = pair(lambda: TorchCheckpointed(reentrant))
    with pytest.raises(
        RuntimeError, match=r"mode='reversible'.*torch.utils.checkpoint inside a reversible block"
    ):
        seeded_step(models["reversible"])


def test_revlibs_checkpointed_module_runs_plainly_inside_a_block():
    class Checkpointed(CheckpointedModule):
        def __init__(self) -> None:
            super().__init__(mode="checkpoint")
            self.body = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh())

        def compute(self, h):
            return self.body(h)

    half = Checkpointed

    grad_err, buffer_err = agree(pair(half))
    assert grad_err < 1e-12 and buffer_err < 1e-15


class HookedActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, h):
        out = self.lin(h)
        out.register_hook(lambda g: g)
        return out


def test_register_hook_on_an_activation_inside_f_raises_a_clear_error():
    with pytest.raises(
        RuntimeError, match=r"mode='reversible'.*needs a graph in the forward.*mode='autograd'"
    ):
        seeded_step(pair(HookedActivation)["reversible"])


def test_lazy_modules_raise_a_clear_error_until_initialised():
    model = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(nn.LazyLinear(3), nn.LazyLinear(3), dim=-1)]
    )
    with pytest.raises(
        RuntimeError, match=r"LazyLinear has uninitialized parameters.*torch.no_grad"
    ):
        model(torch.randn(4, 6, requires_grad=True))
    with torch.no_grad():
        model(torch.randn(4, 6))
    model(torch.randn(4, 6, requires_grad=True)).sum().backward()


def test_check_inverse_of_a_non_tensor_raises_a_type_error():
    with pytest.raises(TypeError, match=r"check_inverse: expected the input as a Tensor, got list"):
        revlib.check_inverse(revnet_stack(2), [1.0, 2.0])


def test_check_inverse_on_an_empty_batch_says_so():
    with pytest.raises(
        ValueError, match=r"check_inverse: the input is empty \(shape \(0, 8, 4, 4\)\)"
    ):
        revlib.check_inverse(revnet_stack(depth=2), torch.randn(0, 8, 4, 4))
