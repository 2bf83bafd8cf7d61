"""How autograd drives blocks backwards: a chain of one autograd node per block.

:mod:`.chain` calls the blocks; :mod:`.function` is the node of one block (its
backward is one step of Algorithm 1); :mod:`.guards` refuses what would make
that step silently wrong. Every refusal's message is in :mod:`revlib.core.refusals`.
"""

from .chain import BlockCall, Chain
from .function import BlockFunction, in_reversible_block
from .guards import ModuleState, SideInputGuard, check_attribute_tensors

__all__ = [
    "BlockCall",
    "BlockFunction",
    "Chain",
    "ModuleState",
    "SideInputGuard",
    "check_attribute_tensors",
    "in_reversible_block",
]
