"""A least-recently-used memo for host-side physics results (numpy arrays or None).

    memo = Recent(max_bytes=256 * 2**20)        # or max_items=8192, or both
    value = memo.get(key, lambda: expensive())   # computed once while the key stays recent

Used where a process meets the same state's physics more than once: the MMFF94 MD of a window
(`atomray.priors.anharmonic`) and the MMFF94 minimum of a state (`atomray.priors.minima`). Keys
are bytes of the inputs; values are returned as stored, so callers that hand them on copy them.
Per process, not shared between Ray workers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np


class Recent:
    """LRU memo bounded by the number of entries (`max_items`) and/or their total bytes
    (`max_bytes`, numpy values only); None means unbounded. The newest entry always stays."""

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._held: OrderedDict[Hashable, np.ndarray | None] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Hashable, compute: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key]
        value = compute()
        self._held[key] = value
        self._bytes += _nbytes(value)
        while len(self._held) > 1 and self._over():
            self._bytes -= _nbytes(self._held.popitem(last=False)[1])
        return value

    def _over(self) -> bool:
        return ((self.max_items is not None and len(self._held) > self.max_items)
                or (self.max_bytes is not None and self._bytes > self.max_bytes))


def _nbytes(value) -> int:
    return 0 if value is None else int(value.nbytes)
