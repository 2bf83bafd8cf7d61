"""Never a silently wrong gradient: a parameter, buffer or output that the recomputation reads,
changed between forward and backward (in place, through ``.data``, by ``functional_call``),
raises an error naming it. Each guard has a control that fails without it."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import X, pair, step_in_mode
from helpers import revnet_stack, worst_rel_error
from torch import nn

from revlib.core import engine


def test_weights_changed_before_backward_raise_instead_of_a_wrong_gradient():
    m = revnet_stack(depth=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    loss = (m(x) ** 2).sum()
    with torch.no_grad():
        next(m.parameters()).add_(0.1)  # an optimizer step too early
    with pytest.raises(RuntimeError, match="modified in place between forward and backward"):
        loss.backward()


def test_frozen_parameter_changed_in_place_raises():
    m = revnet_stack(depth=2)
    m.blocks[0].F[2].weight.requires_grad_(False)
    loss = (m(torch.randn(2, 8, 4, 4, requires_grad=True)) ** 2).sum()
    with torch.no_grad():
        m.blocks[0].F[2].weight.mul_(2)
    with pytest.raises(
        RuntimeError, match=r"modified in place between forward and backward \(0\.F\.2\.weight"
    ):
        loss.backward()


def test_eval_batchnorm_statistics_changed_in_place_raise():
    m = revnet_stack(depth=2)
    m.blocks[1].G[0].eval()  # its running statistics are read by the recomputation
    loss = (m(torch.randn(2, 8, 4, 4, requires_grad=True)) ** 2).sum()
    m.blocks[1].G[0].running_mean.add_(1)
    with pytest.raises(RuntimeError, match=r"1\.G\.0\.running_mean"):
        loss.backward()


def test_control_without_the_guard_a_frozen_weight_edit_gives_wrong_gradients(monkeypatch):
    monkeypatch.setattr(engine.ModuleState, "check", lambda self, module, owner, prefix="": None)
    base = revnet_stack(depth=2).double()
    base.blocks[0].F[2].weight.requires_grad_(False)

    def edit(m):
        with torch.no_grad():
            m.blocks[0].F[2].weight.mul_(2)

    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    g_ref, _, _ = step_in_mode(base, x, "autograd")  # autograd uses the forward's weights
    g, _, _ = step_in_mode(base, x, "reversible", between=edit)
    assert worst_rel_error(g, g_ref) > 1e-3


def test_functional_call_is_rejected_clearly():
    m = revnet_stack(depth=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    params = {name: p.detach().clone().requires_grad_() for name, p in m.named_parameters()}
    y = torch.func.functional_call(m, params, (x,))
    with pytest.raises(
        RuntimeError, match="parameters or buffers were replaced between forward and backward"
    ):
        (y**2).sum().backward()
    m.mode = "autograd"
    y = torch.func.functional_call(m, params, (x,))
    (y**2).sum().backward()
    assert all(p.grad is not None for p in params.values())


def test_buffer_replaced_through_functional_call_raises():
    m = revnet_stack(depth=2)
    m.blocks[0].F[0].eval()
    buffers = {name: b.clone() + 1 for name, b in m.named_buffers()}
    y = torch.func.functional_call(m, buffers, (torch.randn(2, 8, 4, 4, requires_grad=True),))
    with pytest.raises(RuntimeError, match="parameters or buffers were replaced"):
        (y**2).sum().backward()


def test_in_place_op_on_the_output_raises_clearly():
    m = revnet_stack(depth=2)
    y = m(torch.randn(2, 8, 4, 4, requires_grad=True))
    y.relu_()
    with pytest.raises(RuntimeError, match=r"output was modified in place \(e\.g\. relu_\)"):
        y.sum().backward()


def test_output_changed_through_data_raises():
    model = pair(lambda: nn.Linear(3, 3))["reversible"]
    y = model(X.clone().requires_grad_(True))
    y.data.mul_(2)
    with pytest.raises(RuntimeError, match=r"mode='reversible'.*changed after the forward.*y.data"):
        y.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_one_ulp_change_through_data_raises(dtype):
    model = pair(lambda: nn.Linear(3, 3))["reversible"].to(dtype)
    y = model(X.to(dtype).clone().requires_grad_(True))
    y.data[0, 0] = torch.nextafter(y.data[0, 0], torch.tensor(float("inf"), dtype=dtype))
    with pytest.raises(RuntimeError, match=r"changed after the forward"):
        y.sum().backward()


def test_control_an_unchanged_output_backpropagates():
    model = pair(lambda: nn.Linear(3, 3))["reversible"]
    model(X.clone().requires_grad_(True)).sum().backward()
