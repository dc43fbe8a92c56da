"""Log lines leave the process like every other text: with card numbers masked.

A message can quote a record (a rejected line, an id, a broker's error), so the formatter masks
the whole formatted line, exception and stack text included, with the one card-number rule
(monitor.core.pans), and writes control characters as escapes so that a line cannot move the
cursor or rewrite a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Final, TextIO

from monitor.core.pans import mask_pans

# C0 and C1 control characters but newline and tab; DEL.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class MaskingFormatter(logging.Formatter):
    """A formatter whose every line passes through `mask_pans`, control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        line = mask_pans(super().format(record))
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a line is logged (as Python's last-resort handler
    does), not the stream of the moment it was made: in-process callers swap it."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def log_to_stderr(level: int = logging.INFO) -> logging.Logger:
    """Log `level` and above to stderr through `MaskingFormatter`; returns the `posmon` logger.

    `main` calls it with WARNING for every command (so that no warning reaches Python's
    unformatted last-resort handler), `run` and `dispatch` again with INFO: the handler is
    installed once, the level is the last one asked for.
    """
    root = logging.getLogger()
    if not any(isinstance(h.formatter, MaskingFormatter) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is a line per connection
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO names URLs; Slack's is a secret
    return logging.getLogger("posmon")
