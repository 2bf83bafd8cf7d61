"""Record and replay: how a sub-function runs a second time exactly as it ran the first time.

This layer knows nothing of blocks. :class:`Tape` calls a sub-function and
records, through one protocol (:mod:`.protocol`), every kind of state the call
saw (:mod:`.rng`, :mod:`.buffers`, :mod:`.host`, :mod:`.hooks`), and replays it.
"""

from .buffers import (
    checkpoint_updating_stats_once,
    frozen_norm_stats,
    updated_once_buffers,
    updating_norm_layers,
)
from .calls import cached_walks, forward_reads, keywords_for, submodules
from .protocol import Record, Watch
from .reaches import HostGenerator, generators_in
from .rng import AutocastState, RNGState, has_random_layers
from .swap import Slot, swapped
from .tape import Tape, records_nothing

__all__ = [
    "AutocastState",
    "HostGenerator",
    "RNGState",
    "Record",
    "Slot",
    "Tape",
    "Watch",
    "cached_walks",
    "checkpoint_updating_stats_once",
    "forward_reads",
    "frozen_norm_stats",
    "generators_in",
    "has_random_layers",
    "keywords_for",
    "records_nothing",
    "submodules",
    "swapped",
    "updated_once_buffers",
    "updating_norm_layers",
]
