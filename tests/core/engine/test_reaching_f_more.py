"""More of what reaches F, each against mode "autograd" (float64): hooks with keyword arguments,
global module hooks (replayed as at the forward, seeing the replay, refused when they keep what
would carry a gradient), hooks that keep detached copies, a hook replaced before the backward, a
block pre-hook that changes a tensor extra, a mutable extra, host generators in containers and
in a method forward calls, a scripted F, refusals under ``torch.compile``, and controls that show
the tests of forward mode and of acting hooks can fail. A gradient is autograd's or a clear error
names the cause; each mechanism has a control."""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import revlib
from revlib.core import compiled as compiled_module
from revlib.core.engine import chain as chain_module
from revlib.core.replay import hooks as replay_hooks
from revlib.core.replay.hooks import HookRecord

X = torch.randn(4, 6, dtype=torch.double, generator=torch.Generator().manual_seed(3))
COND = torch.randn(4, 2, dtype=torch.double, generator=torch.Generator().manual_seed(4))


def _half():
    return nn.Sequential(nn.Linear(3, 3), nn.Tanh())


def _seq(mode, make_f=_half, depth=2, **options):
    torch.manual_seed(0)
    blocks = [revlib.AdditiveCoupling(make_f(), _half(), dim=-1) for _ in range(depth)]
    return revlib.ReversibleSequence(blocks, mode=mode, **options).double()


def _step(seq, between=None, kept=(), **extras):
    """One step of sum(y**2) (plus what a hook kept); returns the input's, the extras' and the
    parameters' gradients."""
    x = X.clone().requires_grad_(True)
    y = seq(x, **extras)
    if between is not None:
        between(seq)
    (y.square().sum() + sum(k.sum() for k in kept)).backward()
    tensors = [v for v in extras.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    return [x.grad, *(t.grad for t in tensors), *(p.grad for p in seq.parameters())]


def _assert_same(got, want):
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)


def _gap(got, want) -> float:
    """The largest gradient difference relative to the largest gradient."""
    scale = max(v.abs().max().item() for v in want)
    return max((u - v).abs().max().item() for u, v in zip(got, want, strict=True)) / scale


def _both(run):
    return run("reversible"), run("autograd")


# ---- hooks with keyword arguments on a layer inside F ------------------------------------------


def _scale_input(module, args, kwargs):
    return (args[0] * 2.0,), kwargs


def _bend_output(module, args, kwargs, output):
    return output + 0.5 * output.square()


def _kwargs_hooked(mode):
    seq = _seq(mode)
    for b in seq.blocks:
        b.F[0].register_forward_pre_hook(_scale_input, with_kwargs=True)
        b.F[0].register_forward_hook(_bend_output, with_kwargs=True)
    return _step(seq)


def test_acting_hooks_with_kwargs_on_a_layer_in_f_are_replayed():
    _assert_same(*_both(_kwargs_hooked))


def test_control_without_replaying_them_the_kwargs_hooks_give_other_gradients(monkeypatch):
    monkeypatch.setattr(
        HookRecord, "replay", lambda self: replay_hooks._replaying_hooks(self.fn, {})
    )
    assert _gap(*_both(_kwargs_hooked)) > 1e-3


# ---- a global module forward hook ----------------------------------------------------------------


def _bend_linears(module, args, output):
    return output + 0.5 * output.square() if isinstance(module, nn.Linear) else None


@contextlib.contextmanager
def _global_hook(hook):
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_a_global_forward_hook_that_changes_outputs_gives_autograds_gradients():
    with _global_hook(_bend_linears):
        got, want = _both(lambda mode: _step(_seq(mode)))
    _assert_same(got, want)
    # control: the hook changes the gradients (without it, autograd's differ)
    assert _gap(_step(_seq("autograd")), want) > 1e-3


def _global_hook_removed_before_backward(mode):
    seq = _seq(mode)
    handle = nn.modules.module.register_module_forward_hook(_bend_linears)
    try:
        return _step(seq, between=lambda seq: handle.remove())
    finally:
        handle.remove()


def test_a_global_forward_hook_removed_before_the_backward_is_replayed_as_at_the_forward():
    _assert_same(*_both(_global_hook_removed_before_backward))


def test_control_without_recording_global_hooks_the_removed_one_is_lost(monkeypatch):
    from revlib.core.replay import hooks

    monkeypatch.setattr(hooks, "_global_hooks", lambda: [])
    assert _gap(*_both(_global_hook_removed_before_backward)) > 1e-3


def test_a_global_forward_hook_that_keeps_what_it_computed_is_refused():
    kept = []

    def keep(module, args, output):
        if isinstance(module, nn.Linear):
            kept.append(output.square().mean())

    with _global_hook(keep), pytest.raises(RuntimeError, match=r"kept a tensor of shape \(\)"):
        _step(_seq("reversible"), kept=kept)


def _inspect(kept):
    """A hook that keeps detached copies for inspection: nothing that would carry a gradient."""

    def hook(module, args, output):
        if isinstance(module, nn.Linear):
            kept.append(output.detach().clone())
            with torch.no_grad():
                kept.append(output.mean())
            kept.append(output.data * 2)

    return hook


@pytest.mark.parametrize("where", ["on a layer", "global"])
def test_a_hook_that_keeps_detached_copies_is_allowed_and_the_global_one_sees_the_replay(where):
    grads, kept = {}, {}
    for mode in ("reversible", "autograd"):
        seq, kept[mode] = _seq(mode), []
        hook = _inspect(kept[mode])
        handles = [b.F[0].register_forward_hook(hook) for b in seq.blocks]
        context = _global_hook(hook) if where == "global" else contextlib.nullcontext()
        if where == "global":
            for h in handles:
                h.remove()
        with context:
            grads[mode] = _step(seq)
    _assert_same(grads["reversible"], grads["autograd"])
    linears = 4 if where == "global" else 2  # of F and G, or of F only: 2 blocks
    replays = linears * 3 if where == "global" else 0  # the replay of each F and G
    assert len(kept["autograd"]) == 3 * linears
    assert len(kept["reversible"]) == 3 * linears + replays


@pytest.mark.parametrize("where", ["on a layer", "global"])
def test_control_a_hook_that_keeps_a_statistic_with_its_graph_is_refused(where):
    kept = []

    def hook(module, args, output):
        if isinstance(module, nn.Linear):
            kept.append(output.mean())

    seq = _seq("reversible")
    if where == "global":
        context = _global_hook(hook)
    else:
        for b in seq.blocks:
            b.F[0].register_forward_hook(hook)
        context = contextlib.nullcontext()
    with context, pytest.raises(RuntimeError, match=r"kept a tensor of shape \(\)"):
        _step(seq, kept=kept)


# ---- a hook replaced between the forward and the backward ----------------------------------------


def _replaced_hook(mode):
    seq = _seq(mode)
    handles = [b.F[0].register_forward_hook(lambda m, a, out: 3.0 * out) for b in seq.blocks]

    def replace(seq):
        for b, h in zip(seq.blocks, handles, strict=True):
            h.remove()
            b.F[0].register_forward_hook(lambda m, a, out: 0.2 * out)

    return _step(seq, between=replace)


def test_a_hook_replaced_before_the_backward_is_replayed_as_at_the_forward():
    _assert_same(*_both(_replaced_hook))


def test_control_replaying_the_hooks_of_now_gives_other_gradients(monkeypatch):
    monkeypatch.setattr(
        replay_hooks, "_replaying_hooks", lambda fn, acting, states=None: contextlib.nullcontext()
    )
    assert _gap(*_both(_replaced_hook)) > 1e-3


# ---- a hook that keeps a view of F's output ------------------------------------------------------

VIEWS = {"a row": lambda out: out[0], "flattened": lambda out: out.view(-1)}


@pytest.mark.parametrize("view", list(VIEWS))
def test_a_hook_that_keeps_a_view_of_fs_output_is_refused(view):
    seq = _seq("reversible", make_f=lambda: nn.Linear(3, 3))
    kept = []
    seq.blocks[0].F.register_forward_hook(lambda m, a, out: kept.append(VIEWS[view](out)))
    # the view keeps F's whole output alive, which the message names (and says "a view of it")
    with pytest.raises(
        RuntimeError,
        match=r"a hook on 0\.F kept a tensor of shape \(4, 3\) \(its output or input, a view",
    ):
        _step(seq, kept=kept)


@pytest.mark.parametrize("view", list(VIEWS))
def test_control_without_the_check_the_kept_view_has_no_graph(view, monkeypatch):
    monkeypatch.setattr(HookRecord, "kept_outputs", lambda self, keep=None: [])
    seq = _seq("reversible", make_f=lambda: nn.Linear(3, 3))
    kept = []
    seq.blocks[0].F.register_forward_hook(lambda m, a, out: kept.append(VIEWS[view](out)))
    seq(X.clone().requires_grad_(True))
    assert kept and not kept[0].requires_grad  # a loss on it would get no gradient
    revlib.set_mode(seq, "autograd")
    kept.clear()
    seq(X.clone().requires_grad_(True))
    assert kept[0].requires_grad


# ---- a block pre-hook with kwargs that changes a tensor extra ------------------------------------


class _FiLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.scale = nn.Linear(2, 3)

    def forward(self, h, cond):
        return torch.tanh(self.lin(h)) * (1 + self.scale(cond))


def _conditioned(mode, hooked=True):
    seq = _seq(mode, make_f=_FiLM)
    if hooked:
        seq.blocks[1].register_forward_pre_hook(
            lambda m, args, kwargs: (args, {**kwargs, "cond": kwargs["cond"] * 3.0}),
            with_kwargs=True,
        )
    return _step(seq, cond=COND.clone().requires_grad_(True))


def test_a_block_pre_hook_that_scales_a_tensor_extra_gives_autograds_gradients():
    got, want = _both(_conditioned)
    _assert_same(got, want)
    assert want[1].abs().sum() > 0  # cond's gradient, compared too
    # control: the hook changes the gradients (cond's among them)
    assert _gap(_conditioned("autograd", hooked=False), want) > 1e-3


# ---- a mutable object as an extra, changed before the backward -----------------------------------


class _Options:
    def __init__(self, gain: float) -> None:
        self.gain = gain


class _Gained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, h, options):
        return torch.tanh(self.lin(h)) * options.gain


def _object_changed(mode):
    options = _Options(2.0)
    return _step(
        _seq(mode, make_f=_Gained),
        between=lambda seq: setattr(options, "gain", 7.0),
        options=options,
    )


def test_a_mutable_object_extra_changed_before_the_backward_is_replayed_as_it_was():
    _assert_same(*_both(_object_changed))


def test_control_without_the_copy_the_replay_sees_the_changed_object(monkeypatch):
    monkeypatch.setattr(chain_module, "_as_of_now", lambda value: value)
    assert _gap(*_both(_object_changed)) > 1e-3


# ---- a no-grad mask extra refilled in place before the backward ----------------------------------


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, h, mask):
        return torch.tanh(self.lin(h)) + mask  # autograd saves nothing of the mask


def _mask_step(mode, refill):
    mask = torch.ones(4, 3, dtype=torch.double)
    between = (lambda seq: mask.zero_()) if refill else None
    return _step(_seq(mode, make_f=_Masked), between=between, mask=mask)


def test_a_mask_extra_refilled_before_the_backward_is_refused_by_name():
    _mask_step("autograd", refill=True)  # autograd saved nothing of it: runs
    with pytest.raises(
        RuntimeError, match=r"the extra argument mask \(shape \(4, 3\)\) was modified in place"
    ):
        _mask_step("reversible", refill=True)
    # control: left alone, the mask gives autograd's gradients
    _assert_same(_mask_step("reversible", False), _mask_step("autograd", False))


# ---- torch and NumPy generators reached through containers and globals ---------------------------

NOISE = torch.Generator()  # a module-level global, read by _Noise.forward itself


class _Noise(nn.Module):
    """``tanh(W h) * (0.5 + u)``, ``u`` uniform noise from a generator reached in ``where``."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.where = where
        if where == "torch, in a list":
            self.generators = [torch.Generator().manual_seed(5)]
        elif where == "torch, in a dict":
            self.generators = {"noise": torch.Generator().manual_seed(5)}
        elif where == "numpy, in a dict":
            self.generators = {"noise": np.random.default_rng(5)}

    def forward(self, h):
        if self.where == "numpy, in a dict":
            u = torch.from_numpy(self.generators["noise"].uniform(size=h.shape))
        elif self.where == "torch, a module-level global":
            u = torch.rand(h.shape, generator=NOISE, dtype=torch.double)
        else:
            g = self.generators[0] if self.where == "torch, in a list" else self.generators["noise"]
            u = torch.rand(h.shape, generator=g, dtype=torch.double)
        return torch.tanh(self.lin(h)) * (0.5 + u)


WHERE = ["torch, in a list", "torch, in a dict", "torch, a module-level global", "numpy, in a dict"]


def _noisy(make_f, mode, preserve=True):
    NOISE.manual_seed(5)
    return _step(_seq(mode, make_f=make_f, preserve_rng_state=preserve))


@pytest.mark.parametrize("where", WHERE)
def test_a_generator_f_reaches_in_a_container_or_a_global_is_replayed(where):
    make = functools.partial(_Noise, where)
    _assert_same(_noisy(make, "reversible"), _noisy(make, "autograd"))


@pytest.mark.parametrize("where", WHERE)
def test_control_without_rng_bookkeeping_the_draws_differ(where):
    make = functools.partial(_Noise, where)
    assert _gap(_noisy(make, "reversible", preserve=False), _noisy(make, "autograd")) > 1e-3


class _NoiseInAHelper(nn.Module):
    """The same noise from the global generator, drawn in a method that forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def noise(self, shape):
        return torch.rand(shape, generator=NOISE, dtype=torch.double)

    def forward(self, h):
        return torch.tanh(self.lin(h)) * (0.5 + self.noise(h.shape))


def test_a_global_generator_drawn_in_a_method_forward_calls_is_replayed():
    got = _noisy(_NoiseInAHelper, "reversible")
    _assert_same(got, _noisy(_NoiseInAHelper, "autograd"))


def test_control_reading_only_forwards_own_code_misses_the_helpers_generator(monkeypatch):
    from revlib.core.replay import calls

    own_code = calls._own_code
    monkeypatch.setattr(calls, "_own_code", lambda m: own_code(m)[:1])
    got = _noisy(_NoiseInAHelper, "reversible")
    assert _gap(got, _noisy(_NoiseInAHelper, "autograd")) > 1e-3


# ---- a scripted F --------------------------------------------------------------------------------


def test_a_scripted_f_names_torchscript_and_trains_in_autograd_mode():
    def scripted(mode):
        seq = _seq(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            seq.blocks[1].F = torch.jit.script(seq.blocks[1].F)
        return seq

    with pytest.raises(TypeError, match=r"block 1 .*F is a TorchScript module"):
        _step(scripted("reversible"))
    # control: the same scripted F trains in mode "autograd", with the eager F's gradients
    _assert_same(_step(scripted("autograd")), _step(_seq("autograd")))


# ---- forward mode: a control for test_forward_mode.py --------------------------------------------

V = torch.randn(4, 6, dtype=torch.double, generator=torch.Generator().manual_seed(6))


def test_jvp_in_reversible_mode_equals_autograds_and_a_perturbed_tangent_does_not():
    got = torch.func.jvp(_seq("reversible", depth=3), (X,), (V,))
    want = torch.func.jvp(_seq("autograd", depth=3), (X,), (V,))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # control: the comparison sees a tangent 1 % off
    other = torch.func.jvp(_seq("reversible", depth=3), (X,), (1.01 * V,))
    assert (other[1] - want[1]).abs().max() > 1e-3 * want[1].abs().max()


# ---- controls for test_hooks_that_set_state.py: the hooks change the gradients -------------------


def _in_place(mode, hooked=True):
    seq = _seq(mode)
    for b in seq.blocks if hooked else ():
        b.F[0].register_forward_hook(lambda m, a, out: out.mul_(2.0))
    return _step(seq)


def test_a_hook_that_edits_fs_output_in_place_gives_autograds_gradients():
    got, want = _both(_in_place)
    _assert_same(got, want)
    # control: without the hook the gradients differ (the hook is part of F)
    assert _gap(_in_place("autograd", hooked=False), want) > 1e-3


def _removed(mode, hooked=True):
    seq = _seq(mode)
    handles = [
        b.F[0].register_forward_hook(lambda m, a, out: 3.0 * out) for b in seq.blocks if hooked
    ]
    return _step(seq, between=lambda seq: [h.remove() for h in handles])


def test_an_acting_hook_removed_after_the_forward_gives_autograds_gradients():
    got, want = _both(_removed)
    _assert_same(got, want)
    # control: gradients with the hook and without it differ, so its replay matters
    assert _gap(_removed("autograd", hooked=False), want) > 1e-3


# ---- refusals under torch.compile(model) ---------------------------------------------------------


class _Appends(nn.Module):
    """Keeps a list of its calls: the replay would see it changed."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.calls: list[int] = []

    def forward(self, h):
        self.calls.append(1)
        return torch.tanh(self.lin(h))


class _KeepsAux(nn.Module):
    """Keeps an auxiliary loss on an attribute: it would get no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.aux = None

    def forward(self, h):
        out = torch.tanh(self.lin(h))
        self.aux = out.square().mean()
        return out


class _Model(nn.Module):
    def __init__(self, make_f, mode="reversible") -> None:
        super().__init__()
        self.seq = _seq(mode, make_f=make_f, depth=1)

    def forward(self, x):
        return self.seq(x)


COMPILED_REFUSALS = {
    "a forward that appends to a list it keeps": (_Appends, "changed its list attribute 'calls'"),
    "an auxiliary loss kept on an attribute": (
        _KeepsAux,
        r"stored a tensor of shape \(\) in its attribute 'aux'",
    ),
}


@pytest.mark.parametrize("case", list(COMPILED_REFUSALS))
def test_an_eager_refusal_is_also_raised_compiled_with_the_same_cause(case):
    make_f, cause = COMPILED_REFUSALS[case]
    x = X.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match=cause) as eager:
        _Model(make_f)(x).sum().backward()
    model = _Model(make_f)
    torch._dynamo.reset()
    try:
        with pytest.raises(RuntimeError, match=cause) as compiled:
            torch.compile(model)(x).sum().backward()
    finally:
        torch._dynamo.reset()
    assert str(compiled.value) == str(eager.value)
    assert model.seq.blocks[0].F in compiled_module._CACHE  # F itself ran compiled
    _Model(make_f, mode="autograd")(x).sum().backward()  # control: mode "autograd" runs it


@pytest.mark.filterwarnings("ignore:Using `torch.compile.module.` when there are global hooks")
def test_under_compile_a_global_hook_runs_f_eagerly_and_is_replayed_as_eagerly():
    """A global hook that changes F, under torch.compile(model): F runs eagerly (the engine swaps
    the global hook dictionaries per call, which would recompile a compiled F every call), and
    the gradients are autograd's."""
    x = X.clone().requires_grad_(True)
    grads = {}
    torch._dynamo.reset()
    try:
        with _global_hook(_bend_linears):
            for mode in ("reversible", "autograd"):
                model = _Model(_half, mode=mode)
                run = torch.compile(model) if mode == "reversible" else model
                x.grad = None
                run(x).square().sum().backward()
                grads[mode] = [x.grad.clone(), *(p.grad for p in model.parameters())]
                if mode == "reversible":
                    f = model.seq.blocks[0].F
                    assert compiled_module.compiled_function(f) is f  # eager while hooked
        assert compiled_module.compiled_function(f) is not f  # control: compiled once unhooked
    finally:
        torch._dynamo.reset()
    _assert_same(grads["reversible"], grads["autograd"])
