"""Never a silently wrong gradient: what the recomputation must replay, case by case.

Each case runs one training step in mode "autograd" and in mode "reversible"
from identical copies (float64) and asserts the same gradients (to round-off)
and the same buffers, or a clear error. Each mechanism has a control: the same
check with the mechanism switched off (monkeypatched) fails.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as nnf
from conftest import conv_bn_relu, grads_of, revnet_stack, worst_rel_error
from torch import nn

import revlib
from revlib.core import engine, recompute, sequence

ROUND_OFF = 1e-10


def step(
    model: nn.Module,
    x: torch.Tensor,
    mode: str,
    seed: int = 0,
    between=None,
    context=contextlib.nullcontext,
):
    """One step of sum(y * w) in ``mode`` on a copy of ``model``; returns (grads, buffers, copy)."""
    m = copy.deepcopy(model)
    revlib.set_mode(m, mode)
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    with context():
        y = m(x)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
        loss = (y * w).sum() + (y**2).sum()
        if between is not None:
            between(m)
        loss.backward()
    return [*grads_of(m), x.grad], [b.clone() for b in m.buffers()], m


def mode_error(model: nn.Module, x: torch.Tensor, **kwargs) -> tuple[float, bool]:
    """(worst relative gradient error of reversible vs autograd, whether all buffers are equal)."""
    g_ref, b_ref, _ = step(model, x, "autograd", **kwargs)
    g, b, _ = step(model, x, "reversible", **kwargs)
    same = all(torch.equal(u, v) for u, v in zip(b, b_ref, strict=True))
    return worst_rel_error(g, g_ref), same


def token_chain(make, depth: int = 2, **kwargs) -> revlib.ReversibleSequence:
    """``depth`` additive couplings split along the feature dimension (B, T, D)."""
    return revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(make(), make(), dim=-1) for _ in range(depth)], **kwargs
    )


# ---- case 1: parameter hooks fire once, with the full gradient -----------------------------------


def hooked_step(mode: str, device) -> tuple[dict[str, int], list]:
    torch.manual_seed(0)
    base = revnet_stack(depth=3).double().to(device)
    base.blocks[2].F[2].weight = base.blocks[0].F[2].weight  # a parameter shared by two blocks
    m = copy.deepcopy(base)
    m.mode = mode
    calls: dict[str, int] = {}
    accumulated: dict[str, int] = {}
    for name, p in m.named_parameters():

        def hook(g, name=name):
            calls[name] = calls.get(name, 0) + 1
            return 2 * g

        p.register_hook(hook)
        p.register_post_accumulate_grad_hook(
            lambda p, name=name: accumulated.__setitem__(name, accumulated.get(name, 0) + 1)
        )
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, device=device)
    torch.manual_seed(1)
    (m(x) ** 2).sum().backward()
    return calls, accumulated, grads_of(m)


def test_parameter_hooks_fire_once_with_the_full_gradient(device):
    calls, accumulated, grads = hooked_step("reversible", device)
    calls_ref, accumulated_ref, grads_ref = hooked_step("autograd", device)
    assert calls == calls_ref and set(calls.values()) == {1}
    assert accumulated == accumulated_ref and set(accumulated.values()) == {1}
    assert worst_rel_error(grads, grads_ref) <= ROUND_OFF  # 2*g, not 4*g


def test_control_without_parameter_aliases_hooks_fire_inside_the_backward(monkeypatch):
    monkeypatch.setattr(
        engine, "detached_parameters", lambda block, aliases: contextlib.nullcontext()
    )
    calls, _, grads = hooked_step("reversible", "cpu")
    _, _, grads_ref = hooked_step("autograd", "cpu")
    assert max(calls.values()) >= 2
    assert worst_rel_error(grads, grads_ref) > 0.5


# ---- case 2: every random draw is replayed, not only nn.Dropout ---------------------------------


class SelfAttention(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, 2, dropout=0.5, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class FunctionalDropout(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return nnf.dropout(self.lin(x), 0.5, self.training)


class Noisy(nn.Module):
    """Multiplicative noise drawn with torch.rand_like."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * (1 + torch.rand_like(x))


RANDOM_HALVES = {
    "rrelu": lambda: nn.Sequential(nn.Linear(4, 4), nn.RReLU()),
    "attention_dropout": SelfAttention,
    "transformer_layer": lambda: nn.TransformerEncoderLayer(
        4, 2, dim_feedforward=8, dropout=0.3, batch_first=True
    ),
    "functional_dropout": FunctionalDropout,
    "rand_like": Noisy,
}


@pytest.mark.parametrize("kind", RANDOM_HALVES)
def test_random_layers_are_replayed(kind, device):
    chain = token_chain(RANDOM_HALVES[kind]).double().to(device)
    x = torch.randn(3, 5, 8, dtype=torch.float64, device=device)
    err, same_buffers = mode_error(chain, x)
    assert err <= ROUND_OFF and same_buffers
    assert revlib.check_inverse(chain, x) < 1e-12


@pytest.mark.parametrize("kind", RANDOM_HALVES)
def test_control_without_rng_replay_random_layers_give_wrong_gradients(kind):
    chain = token_chain(RANDOM_HALVES[kind], preserve_rng_state=False).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    assert mode_error(chain, x)[0] > 1e-3
    assert revlib.check_inverse(chain, x) > 1e-3  # check_inverse flags it too


def test_deterministic_blocks_keep_no_rng_state():
    seq = revnet_stack(depth=3)
    y, tapes = seq.forward_with_tapes(torch.randn(2, 8, 4, 4))
    assert all(not tape.rng and not tape.buffers for tape in tapes)
    y, tapes = revnet_stack(depth=3, dropout=0.5).forward_with_tapes(torch.randn(2, 8, 4, 4))
    assert all(set(tape.rng) == {"F", "G"} for tape in tapes)


# ---- case 3: model.eval() / .train() between forward and backward ------------------------------


def test_train_eval_switch_before_backward_replays_the_forward_mode(device):
    base = revnet_stack(depth=3).double().to(device)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64, device=device)
    err, same = mode_error(base, x, between=lambda m: m.eval())
    assert err <= ROUND_OFF and same
    # the other way: a frozen (eval) BatchNorm inside a training model, .train() before backward
    frozen = copy.deepcopy(base)
    step(frozen, x, "autograd")  # some running statistics
    frozen.blocks[1].F[0].eval()
    err, same = mode_error(frozen, x, between=lambda m: m.train())
    assert err <= ROUND_OFF and same


def test_control_without_the_forward_mode_an_eval_switch_gives_wrong_gradients(monkeypatch):
    monkeypatch.setattr(
        recompute.ModuleState, "forward_training_flags", lambda self: contextlib.nullcontext()
    )
    base = revnet_stack(depth=3).double()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    assert mode_error(base, x, between=lambda m: m.eval())[0] > 1e-3


# ---- case 4: autocast replayed in both directions ----------------------------------------------


def autocast_island_error() -> float:
    """Forward with autocast off inside a bfloat16 region, backward inside the region."""
    base = revnet_stack(depth=3, channels=8)
    x = torch.randn(4, 8, 6, 6)

    def run(mode):
        m = copy.deepcopy(base)
        m.mode = mode
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                y = m(x.clone().requires_grad_())
            (y.float() ** 2).sum().backward()  # backward inside the bf16 region
        return grads_of(m)

    return worst_rel_error(run("reversible"), run("autograd"))


def test_autocast_off_in_forward_stays_off_in_recomputation():
    assert (
        autocast_island_error() <= 1e-5
    )  # float32 round-off; a bf16 recomputation is off by ~1e-2


def test_control_autocast_replayed_only_when_on_leaks_the_backward_region(monkeypatch):
    original = recompute.AutocastState.context

    def only_when_on(self):  # the old rule: a null context when autocast was off in the forward
        return original(self) if any(on for _, on, _ in self.states) else contextlib.nullcontext()

    monkeypatch.setattr(recompute.AutocastState, "context", only_when_on)
    assert autocast_island_error() > 1e-3


def test_autocast_state_is_captured_for_every_available_device_type():
    state = recompute.AutocastState.capture("cpu")
    assert [s[0] for s in state.states] == ["cpu"]
    assert recompute.AutocastState.capture("meta").states[0][0] == "cpu"  # meta has no autocast


# ---- case 5: stateful buffers other than BatchNorm's -------------------------------------------


class EMACentred(nn.Module):
    """Subtracts an exponential moving average of its input, updated in place in training."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.register_buffer("ema", torch.zeros(d))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.5).add_(0.5 * x.mean(dim=(0, 1)))
        return torch.tanh(self.lin(x - self.ema))


STATEFUL_HALVES = {
    "spectral_norm": lambda: nn.Sequential(
        nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4)), nn.Tanh()
    ),
    "ema_buffer": EMACentred,
}


@pytest.mark.parametrize("kind", STATEFUL_HALVES)
def test_stateful_buffers_are_updated_once_and_replayed(kind, device):
    chain = token_chain(STATEFUL_HALVES[kind]).double().to(device)
    x = torch.randn(3, 5, 8, dtype=torch.float64, device=device)
    err, same_buffers = mode_error(chain, x)
    assert err <= ROUND_OFF and same_buffers
    before = [b.clone() for b in chain.buffers()]
    assert revlib.check_inverse(chain, x) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(before, chain.buffers(), strict=True))


@pytest.mark.parametrize("kind", STATEFUL_HALVES)
def test_control_without_buffer_copies_state_advances_twice(kind, monkeypatch):
    monkeypatch.setattr(recompute, "updated_once_buffers", lambda module: [])
    chain = token_chain(STATEFUL_HALVES[kind]).double()
    err, same_buffers = mode_error(chain, torch.randn(3, 5, 8, dtype=torch.float64))
    assert err > 1e-6 or not same_buffers


# ---- case 6: every tensor the recomputation reads is guarded -----------------------------------


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


def test_buffer_replaced_through_functional_call_raises():
    m = revnet_stack(depth=2)
    m.blocks[0].F[0].eval()
    buffers = {name: b.clone() + 1 for name, b in m.named_buffers()}
    y = torch.func.functional_call(m, buffers, (torch.randn(2, 8, 4, 4, requires_grad=True),))
    with pytest.raises(RuntimeError, match="parameters or buffers were replaced"):
        (y**2).sum().backward()


def test_training_batchnorm_updated_by_a_second_forward_is_fine():
    """Two forwards, one backward: the running statistics move, but a training BN never reads
    them."""
    base = revnet_stack(depth=2).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    grads = {}
    for mode in ("reversible", "autograd"):
        m = copy.deepcopy(base)
        m.mode = mode
        (m(x).sum() + (m(2 * x) ** 2).sum()).backward()
        grads[mode] = grads_of(m)
    assert worst_rel_error(grads["reversible"], grads["autograd"]) <= ROUND_OFF


def test_control_without_the_guard_a_frozen_weight_edit_gives_wrong_gradients(monkeypatch):
    monkeypatch.setattr(recompute.ModuleState, "check", lambda self, module, owner, prefix="": None)
    base = revnet_stack(depth=2).double()
    base.blocks[0].F[2].weight.requires_grad_(False)

    def edit(m):
        with torch.no_grad():
            m.blocks[0].F[2].weight.mul_(2)

    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    g_ref, _, _ = step(base, x, "autograd")  # autograd uses the forward's weights
    g, _, _ = step(base, x, "reversible", between=edit)
    assert worst_rel_error(g, g_ref) > 1e-3


# ---- case 7: check_inverse replays exactly what training replays -------------------------------


def test_check_inverse_with_a_block_used_twice_and_dropout():
    block = revlib.AdditiveCoupling(conv_bn_relu(4, dropout=0.5), conv_bn_relu(4, dropout=0.5))
    tied = revlib.ReversibleSequence([block, revlib.HalfSwap(), block]).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    assert revlib.check_inverse(tied, x) < 1e-12
    err, same = mode_error(tied, x)
    assert err <= ROUND_OFF and same


def test_control_tapes_keyed_by_block_break_a_tied_block(monkeypatch):
    def keyed_by_block(self, y, tapes):  # the old rule: one tape per block instance
        by_block = dict(zip(map(id, self.blocks), tapes, strict=True))
        return sequence._each_block(
            self.blocks, y, lambda b, h: b.inverse_replayed(h, by_block[id(b)]), reverse=True
        )

    monkeypatch.setattr(revlib.ReversibleSequence, "inverse_with_tapes", keyed_by_block)
    block = revlib.AdditiveCoupling(conv_bn_relu(4, dropout=0.5), conv_bn_relu(4, dropout=0.5))
    tied = revlib.ReversibleSequence([block, revlib.HalfSwap(), block]).double()
    assert revlib.check_inverse(tied, torch.randn(2, 8, 4, 4, dtype=torch.float64)) > 1e-3


# ---- lesser cases --------------------------------------------------------------------------------


def test_in_place_op_on_the_output_raises_clearly():
    m = revnet_stack(depth=2)
    y = m(torch.randn(2, 8, 4, 4, requires_grad=True))
    y.relu_()
    with pytest.raises(RuntimeError, match=r"output was modified in place \(e\.g\. relu_\)"):
        y.sum().backward()


def test_block_without_underscored_methods_is_refused_with_what_to_implement():
    class Plain(revlib.ReversibleBlock):
        def forward(self, x):
            return x

        def inverse(self, y):
            return y

    with pytest.raises(TypeError, match=r"implement _forward\(x, run\) and _inverse\(y, run\)"):
        revlib.ReversibleSequence([Plain()])
    with pytest.raises(
        NotImplementedError, match=r"Plain: a ReversibleBlock implements _forward\(x, run\)"
    ):
        Plain()._forward(torch.zeros(1), revlib.core.blocks.plain_run)


def test_nan_input_leaves_the_same_running_statistics_as_autograd():
    base = revnet_stack(depth=2).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")
    buffers = {mode: step(base, x, mode)[1] for mode in ("autograd", "reversible")}
    for a, b in zip(buffers["reversible"], buffers["autograd"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_check_inverse_on_an_empty_batch_says_so():
    with pytest.raises(
        ValueError, match=r"check_inverse: the input is empty \(shape \(0, 8, 4, 4\)\)"
    ):
        revlib.check_inverse(revnet_stack(depth=2), torch.randn(0, 8, 4, 4))


def test_torch_func_transforms_point_to_mode_autograd():
    m = token_chain(
        lambda: nn.Linear(4, 4)
    ).double()  # no BatchNorm: torch.func refuses its in-place update
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"torch\.func transforms.*mode='autograd'"):
        torch.func.grad(lambda v: m(v).sum())(x)
    m.mode = "autograd"
    assert torch.func.grad(lambda v: m(v).sum())(x).shape == x.shape


def test_memory_meter_counts_the_kept_rng_states():
    from revlib.core.memory import saved_tensor_bytes

    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    state = torch.get_rng_state().numel()  # bytes of one CPU generator state
    output = x.numel() * 4
    for depth in (2, 5):
        assert saved_tensor_bytes(revnet_stack(depth, dropout=0.5), x) == output + 2 * depth * state
        assert saved_tensor_bytes(revnet_stack(depth), x) == output
