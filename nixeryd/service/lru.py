"""
A bounded mapping for the image service's memory: :class:`LRU`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(OrderedDict[K, V]):
    """A dict that forgets its least recently used entries past a size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def get_recent(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or ``None``."""
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Set ``key``, the most recently used, forgetting the oldest past the size."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self._size:
            self.popitem(last=False)
