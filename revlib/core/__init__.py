"""revlib's core: reversible blocks and the engine that backpropagates through them (torch only).

Three layers, each importing only those before it (``tests/core/test_import_order.py``):
:mod:`~revlib.core.replay` (how a sub-function runs twice alike) →
:mod:`~revlib.core.blocks` (the block contract) and the blocks of the papers
(:mod:`~revlib.core.couplings`, :mod:`~revlib.core.ode`) →
:mod:`~revlib.core.engine` (how autograd drives blocks backwards), used by
:mod:`~revlib.core.sequence`. Every refusal's message is in
:mod:`~revlib.core.refusals`. ``ARCHITECTURE.md`` traces one training step.
"""
