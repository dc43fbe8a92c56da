"""Log lines leave the process like every other text: with card numbers masked.

A message can quote a record (a rejected line, an id, a broker's error), so the formatter masks
the whole formatted line, exception and stack text included, with the one card-number rule
(monitor.core.pans), and writes control characters as escapes so that a line cannot move the
cursor or rewrite a terminal.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from monitor.core.pans import mask_pans

# C0 and C1 control characters but newline and tab; DEL.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class MaskingFormatter(logging.Formatter):
    """A formatter whose every line passes through `mask_pans`, control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        line = mask_pans(super().format(record))
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


def log_to_stderr() -> logging.Logger:
    """Log INFO and above to stderr through `MaskingFormatter`; returns the `posmon` logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is a line per connection
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO names URLs; Slack's is a secret
    return logging.getLogger("posmon")
