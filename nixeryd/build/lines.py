"""
Cutting a child's log stream into text lines, as the bytes arrive.

Used for the stderr of Nix and git: every line is logged as it comes and
the last ones are kept for error reports, so the cutting must never wait
for more input than one line, nor hold more than one line's worth.
"""

from __future__ import annotations

#: Longest line passed on; longer lines are cut into pieces this long.
MAX_LINE_BYTES = 16 * 1024


class LineSplitter:
    """
    Cuts a byte stream into text lines.

    Lines end with ``\\n`` (a ``\\r`` before it is dropped); invalid UTF-8
    is replaced; a line longer than ``max_bytes`` is passed on in pieces.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_bytes
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        """The complete lines that ``data`` finishes."""
        *complete, self._partial = (self._partial + data).split(b"\n")
        lines = []
        for raw in complete:
            lines.extend(self._pieces(raw))
        while len(self._partial) > self._max:
            lines.append(self._decode(self._partial[:self._max]))
            self._partial = self._partial[self._max:]
        return lines

    def flush(self) -> list[str]:
        """The unterminated last line, if any."""
        rest, self._partial = self._partial, b""
        return self._pieces(rest) if rest else []

    def _pieces(self, raw: bytes) -> list[str]:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) <= self._max:
            return [self._decode(raw)]
        return [self._decode(raw[i:i + self._max])
                for i in range(0, len(raw), self._max)]

    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw.decode("utf-8", "replace")
