"""revlib's core: reversible blocks and the engine that backpropagates through them (torch only).

Read it in this order: :mod:`~revlib.core.blocks` (the block contract) →
:mod:`~revlib.core.recompute` (what a recomputation replays) →
:mod:`~revlib.core.couplings` (the RevNet, NICE and Real NVP blocks) →
:mod:`~revlib.core.sequence` (the chain and its backward modes, with
:mod:`~revlib.core.modes`). Around them: :mod:`~revlib.core.ode` (Chang et
al.'s blocks), :mod:`~revlib.core.memory` and :mod:`~revlib.core.memcalc`
(measuring what is stored), :mod:`~revlib.core.checks`,
:mod:`~revlib.core.stability`, :mod:`~revlib.core.smoothness` and
:mod:`~revlib.core.device`.
"""
