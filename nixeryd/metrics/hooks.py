"""
The calls the image service and the image builder make as their work
happens, for the daemon's metrics (:class:`Instruments`).

They take plain values and return nothing, so the code that makes them
needs no metrics library; :data:`NO_INSTRUMENTS` does nothing, for
services made without metrics (the one-shot build command, tests).
"""

from __future__ import annotations

from typing import Protocol


class Instruments(Protocol):
    """What the image service and the builder report."""

    def manifest_cache(self, hit: bool) -> None:
        """The manifest cache in storage was asked for an image."""

    def layer_cache(self, hit: bool) -> None:
        """The layer cache was asked for a layer's blob."""

    def layer_written(self, seconds: float) -> None:
        """A layer was written: tar, gzip and both hashes, in ``seconds``."""

    def layer_stored(self, seconds: float) -> None:
        """A written layer was stored (moved or uploaded) in ``seconds``."""

    def storage_failed(self) -> None:
        """A storage call failed (the request gets a 503)."""


class _NoInstruments:
    """Reports go nowhere."""

    def manifest_cache(self, hit: bool) -> None:
        pass

    def layer_cache(self, hit: bool) -> None:
        pass

    def layer_written(self, seconds: float) -> None:
        pass

    def layer_stored(self, seconds: float) -> None:
        pass

    def storage_failed(self) -> None:
        pass


#: Instruments that record nothing.
NO_INSTRUMENTS: Instruments = _NoInstruments()
