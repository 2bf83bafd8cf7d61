"""``ReversibleSequence``: a chain of reversible blocks whose backward stores no block activations.

In mode ``"reversible"`` the forward calls every block as PyTorch calls a
module (``block(h, **extras)``, so hooks and FSDP2 run), and each block runs
without building a graph, keeping only what a
:class:`~revlib.core.replay.tape.Tape` must replay (generator states of the
calls that drew random numbers, copies of buffers the forward changed); the
chain keeps its last output. The backward walks the blocks in reverse, one
autograd node per block (:mod:`~revlib.core.engine`); each reconstructs its
input from its output and turns the output gradient into the input and
parameter gradients (Algorithm 1 of Gomez et al. 2017). Before it does, it
checks that every parameter and buffer the recomputation reads is the
forward's, and it puts every submodule back into the forward's train/eval
mode.

The parameters are inputs of each block's autograd function; inside the
backward the gradients are taken with respect to detached aliases of them,
and the block's gradient of each parameter is returned to the autograd
engine. So hooks (``register_hook``, DDP's reducer,
``register_post_accumulate_grad_hook``, FSDP's reduce-scatter),
``torch.autograd.grad`` and gradient accumulation behave as in mode
``"autograd"``. Extra arguments of the chain (``seq(x, cond=c, mask=m)``)
reach every F and G that takes them by name, with their gradients.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from . import refusals
from .aux_losses import add_aux_loss, collecting
from .blocks import (
    TAKEN_EXTRAS,
    ReversibleBlock,
    check_extras_taken,
    implements_contract,
)
from .budget import BudgetPlan, MemoryBudget, check_budget, input_signature, plan_budget
from .compiled import (
    carries_channels_last,
    compiled_backward_step,
    compiled_block_forward,
    compiled_function,
    run_compiled,
)
from .engine import Chain
from .modes import HasMode, Mode
from .replay import Tape, cached_walks, checkpoint_updating_stats_once, submodules

__all__ = ["ReversibleSequence"]


class ReversibleSequence(HasMode):
    """Run reversible blocks one after another, in one of three backward modes.

    Args:
        blocks: the :class:`~revlib.core.blocks.ReversibleBlock` modules, in order.
        mode: ``"reversible"`` (default) stores only the chain's output and
            reconstructs the block inputs during the backward, evaluating each
            sub-function once more; ``"autograd"`` runs the blocks with ordinary
            autograd (everything stored), for A/B checks; ``"checkpoint"`` wraps
            every block in non-reentrant :func:`torch.utils.checkpoint.checkpoint`
            (block inputs stored; buffers updated once and the forward's train/eval
            flags in the recomputation; host state outside torch is not replayed).
        preserve_rng_state: ``True`` (default) records the generator states
            before every sub-function call and keeps them for the calls that
            drew random numbers (dropout of any kind, RReLU, attention dropout,
            ``torch.rand``), so the recomputation draws the same numbers; a
            deterministic call keeps nothing. ``False`` skips this bookkeeping
            (a little faster; then the recomputation of a random layer draws
            new numbers and its gradients are wrong). ``None`` means ``True``.
            Cost of the default: per sub-function call, two reads of the
            generator states and one comparison (microseconds; the step-time
            benchmark times ``reversible`` against ``reversible_no_rng``); memory:
            one CPU generator state (5,056 bytes) plus the accelerator's (a few
            bytes per device) for each call that drew, saved for backward and
            counted by :class:`~revlib.core.memory.SavedTensorMeter`; nothing
            for a deterministic call.
        ndim: if given, the number of dimensions the input must have
            (4 for images), checked at every forward.
        memory_budget: in mode ``"reversible"``, the activation memory the
            chain may keep: bytes (``int``) or a fraction of what mode
            ``"autograd"`` would save (``float`` in [0, 1]). The blocks that
            spare the most recomputation per byte keep their activations (run
            as in mode ``"autograd"``) while they fit; the rest run reversibly
            (:mod:`~revlib.core.budget`). The first training step with a new
            input shape runs every block reversibly and measures them; its
            choice is :attr:`budget_plan`. ``None`` (default) or 0: every block
            reversible.

    In eval mode, or when no gradient is being recorded, the forward is a
    plain forward of the blocks. Mode ``"reversible"`` raises
    ``RuntimeError`` for double backward (``create_graph=True``), inside
    ``torch.func`` transforms, when a parameter or buffer was replaced or
    changed in place between forward and backward, and when the output was
    changed in place; use mode ``"autograd"`` there.
    """

    def __init__(
        self,
        blocks: Iterable[ReversibleBlock],
        mode: Mode = "reversible",
        preserve_rng_state: bool | None = True,
        ndim: int | None = None,
        memory_budget: MemoryBudget | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        for i, block in enumerate(self.blocks):
            if not isinstance(block, ReversibleBlock):
                raise refusals.not_a_block(i, block)
            if not implements_contract(block):
                raise refusals.contract_missing(i, block)
        self.mode = mode
        self.preserve_rng_state = preserve_rng_state
        self.ndim = ndim
        self.budget_plan: BudgetPlan | None = None
        """Which blocks keep their activations under :attr:`memory_budget` (after a step)."""
        self.memory_budget = memory_budget

    @property
    def memory_budget(self) -> MemoryBudget | None:
        """The activation memory mode ``"reversible"`` may keep (see the class docstring)."""
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, budget: MemoryBudget | None) -> None:
        self._memory_budget = check_budget(budget)
        self.budget_plan = None  # measured again at the next training step

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"ReversibleSequence: expected a Tensor, got {type(x).__name__}")
        if self.ndim is not None and x.dim() != self.ndim:
            raise ValueError(
                f"ReversibleSequence: expected an input with {self.ndim} dimensions, "
                f"got shape {tuple(x.shape)}"
            )
        for i, block in enumerate(self.blocks):
            if not isinstance(block, ReversibleBlock):  # replaced after construction
                raise refusals.not_a_block(i, block)
            if "forward" in vars(block):
                raise refusals.forward_replaced_on_instance(i, block)

    def _records_rng(self) -> bool:
        return self.preserve_rng_state is not False

    def forward(self, x: Tensor, **extras: Any) -> Tensor:
        """Apply the blocks in order; ``extras`` (conditioning, masks) reach every F and G that
        takes them by name."""
        if torch.compiler.is_compiling():  # traced: no collection (add_aux_loss refuses there)
            return self._forward_in_mode(x, extras)
        with collecting() as losses:
            y = self._forward_in_mode(x, extras)
        self._aux_losses = losses
        for loss in losses:  # an enclosing sequence collects them too
            add_aux_loss(loss)
        return y

    @property
    def aux_losses(self) -> list[Tensor]:
        """The losses the sub-functions reported with :func:`revlib.add_aux_loss` in the last
        forward, with autograd's gradients in every mode (:mod:`revlib.core.aux_losses`)."""
        return list(getattr(self, "_aux_losses", []))

    def _forward_in_mode(self, x: Tensor, extras: dict[str, Any]) -> Tensor:
        self._check_input(x)
        if len(self.blocks) == 0:
            return x
        if (
            not torch.is_grad_enabled()
            or not self.training
            or self.mode == "autograd"
            or (not torch.compiler.is_compiling() and _forward_mode(x, extras))
        ):
            return _taking_extras(
                extras, lambda: _each_block(self.blocks, x, lambda block, h: block(h, **extras))
            )
        if self.mode == "checkpoint":
            return _taking_extras(
                extras,
                lambda: _each_block(
                    self.blocks,
                    x,
                    lambda block, h: checkpoint_updating_stats_once(
                        block, lambda t: block(t, **extras), h
                    ),
                ),
            )
        if torch.compiler.is_compiling():
            # under torch.compile: the engine eager, its F and G compiled (revlib.core.compiled)
            return run_compiled(self, x, extras)
        return self._run_reversible(x, extras)

    def _run_reversible(self, x: Tensor, extras: dict[str, Any], compiled: bool = False) -> Tensor:
        """Mode ``"reversible"`` in training: the checks, then the engine
        (:class:`~revlib.core.engine.Chain`)."""
        wants_grad = x.requires_grad or any(
            isinstance(v, Tensor) and v.requires_grad for v in extras.values()
        )
        if not wants_grad and not any(p.requires_grad for p in self.blocks.parameters()):
            return _each_block(self.blocks, x, lambda block, h: block(h, **extras))
        if torch._C._functorch.peek_interpreter_stack() is not None:
            raise refusals.functional_transform()
        with cached_walks():  # one walk of each module for the checks and the whole forward
            return self._run_chain(x, extras, compiled)

    def _run_chain(self, x: Tensor, extras: dict[str, Any], compiled: bool) -> Tensor:
        _check_reversible_blocks(self.blocks)
        budget, plan = self.memory_budget, self.budget_plan
        signature = input_signature(x, extras)
        measure = bool(budget) and (plan is None or plan.signature != signature)
        chain = Chain(
            self,
            extras,
            self._records_rng(),
            call=compiled_function if compiled else None,
            whole=compiled_block_forward if compiled else None,
            fused_step=compiled_backward_step if compiled else None,
            channels_last=carries_channels_last if compiled else None,
            stored=plan.stored if budget and plan is not None and not measure else frozenset(),
            costs=[] if measure else None,
        )
        y = chain.run(x)
        if chain.costs is not None:
            saved, seconds = zip(*chain.costs, strict=True)
            self.budget_plan = plan_budget(budget or 0, saved, seconds, signature)
        return y

    def inverse(self, y: Tensor, **extras: Any) -> Tensor:
        """Apply the blocks' inverses in reverse order (with the forward's extra arguments)."""
        self._check_input(y)
        return _each_block(
            self.blocks, y, lambda block, h: block.inverse(h, **extras), reverse=True
        )

    def forward_with_tapes(self, x: Tensor, **extras: Any) -> tuple[Tensor, list[Tape]]:
        """The forward as in a training step, with one tape per block call (see
        :meth:`inverse_with_tapes`)."""
        tapes: list[Tape] = []

        def step(block: ReversibleBlock, h: Tensor) -> Tensor:
            tapes.append(Tape.start(h, self._records_rng(), extras))
            return block.forward_recorded(h, tapes[-1])

        return _each_block(self.blocks, x, step), tapes

    def inverse_with_tapes(self, y: Tensor, tapes: list[Tape]) -> Tensor:
        """The inverse of :meth:`forward_with_tapes`: each block call replays its own tape."""
        replay = iter(reversed(tapes))
        return _each_block(
            self.blocks, y, lambda block, h: block.inverse_replayed(h, next(replay)), reverse=True
        )

    def round_trip(self, x: Tensor, **extras: Any) -> Tensor:
        """``f^{-1}(f(x))`` recorded and replayed exactly as in a training step (for
        :func:`check_inverse`), with the chain's extra arguments."""
        return self.inverse_with_tapes(*self.forward_with_tapes(x, **extras))


def _taking_extras(extras: dict[str, Any], run: Callable[[], Tensor]) -> Tensor:
    """``run()``, refusing an extra argument that no sub-function took (as the engine does)."""
    if not extras or torch.compiler.is_compiling():
        return run()
    outer, TAKEN_EXTRAS.names = TAKEN_EXTRAS.names, set()
    try:
        out = run()
        taken = TAKEN_EXTRAS.names
    finally:
        TAKEN_EXTRAS.names = outer
    check_extras_taken(extras, taken)
    return out


def _forward_mode(x: Tensor, extras: dict[str, Any]) -> bool:
    """Whether the call computes forward-mode derivatives (``torch.func.jvp``, dual tensors).

    Forward-mode AD carries tangents along the forward and stores nothing for a
    backward, so the sequence runs its blocks plainly: the tangents are
    autograd's, and a reverse pass (if any) is mode ``"autograd"``'s.
    """
    interpreter = torch._C._functorch.peek_interpreter_stack()
    if interpreter is not None and interpreter.key() == torch._C._functorch.TransformType.Jvp:
        return True
    tensors = [x, *(v for v in extras.values() if isinstance(v, Tensor))]
    # unpack_dual has no annotations in torch 2.14
    return any(fwAD.unpack_dual(t).tangent is not None for t in tensors)  # type: ignore[no-untyped-call]


def _each_block(
    blocks: nn.ModuleList,
    x: Tensor,
    step: Callable[[ReversibleBlock, Tensor], Tensor],
    reverse: bool = False,
) -> Tensor:
    """Apply ``step(block, x)`` along the chain, naming the block in a ValueError."""
    order = reversed(list(enumerate(blocks))) if reverse else enumerate(blocks)
    for i, block in order:
        try:
            # the sequence's blocks are ReversibleBlocks (ReversibleSequence.__init__ checks)
            x = step(cast(ReversibleBlock, block), x)
        except ValueError as err:
            raise ValueError(f"ReversibleSequence block {i}: {err}") from err
    return x


def _check_reversible_blocks(blocks: nn.ModuleList) -> None:
    """Refuse, before anything runs, what the reversible engine cannot reproduce; each error names
    the fix. A class found harmless is not looked at again (the check runs every step)."""
    for i, block in enumerate(blocks):
        if type(block) in _PLAIN_BLOCKS:
            continue
        if next(c for c in type(block).__mro__ if "forward" in vars(c)) is not ReversibleBlock:
            raise refusals.forward_overridden(refusals.owner(i, block), block)
        _PLAIN_BLOCKS.add(type(block))
    modules = submodules(blocks)
    new = [m for m in modules if type(m) not in _PLAIN_MODULES]
    for m in new:
        if isinstance(m, torch.jit.ScriptModule) or type(m).__name__ == "OptimizedModule":
            i, name = next(
                (i, n) for i, b in enumerate(blocks) for n, sub in b.named_modules() if sub is m
            )
            where = refusals.owner(i, blocks[i])
            if isinstance(m, torch.jit.ScriptModule):
                raise refusals.scripted_inside(where, name)
            raise refusals.compiled_inside(where, name)
    lazy = [m for m in new if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()]
    if lazy:
        raise refusals.lazy_inside(lazy[0])
    # a lazy module becomes its plain class once initialised; one not yet initialised was refused
    _PLAIN_MODULES.update(type(m) for m in new if not isinstance(m, LazyModuleMixin))
    if parametrize._cache_enabled and any(parametrize.is_parametrized(m) for m in modules):
        raise refusals.parametrize_cached()


_PLAIN_BLOCKS: weakref.WeakSet[type] = weakref.WeakSet()
"""Block classes that do not override ``forward``."""
_PLAIN_MODULES: weakref.WeakSet[type] = weakref.WeakSet()
"""Module classes that are neither scripted, compiled nor lazy."""
