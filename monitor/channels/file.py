"""An audit trail: one JSON line per notification, appended and flushed before `send` returns.

Each line is `{"sent_at", "kind", "group_key", "summary", "alert_ids"}`; the alerts themselves
are on the alerts topic (or in the replay's `--alerts` file), keyed by the same ids. The file is
opened for each notification, so an external log rotation (move, then a new file) needs no
signal. `fsync=True` also forces the line to the disk, for audits that must survive a power cut.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from monitor.paging.notification import DELIVERED, Notification, Outcome


class FileChannel:
    """Appends a JSONL line per notification; a write failure (`OSError`: disk full, a missing
    directory) is a `retry` so the dispatcher keeps the notification."""

    name = "file"
    supports_resolve = True

    def __init__(
        self, path: Path, *, fsync: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._clock = clock

    def __repr__(self) -> str:
        return f"FileChannel({str(self.path)!r})"

    def line(self, notification: Notification) -> str:
        """The JSON line written for a notification (with its newline)."""
        record = {
            "sent_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
            "kind": notification.kind,
            "group_key": notification.group_key,
            "summary": notification.headline,
            "alert_ids": [alert.alert_id for alert in notification.alerts],
        }
        return json.dumps(record, separators=(",", ":")) + "\n"

    def send(self, notification: Notification) -> Outcome:
        data = self.line(notification)
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(data)
                out.flush()
                if self._fsync:
                    os.fsync(out.fileno())
        except OSError as exc:
            return Outcome("retry", f"file: {type(exc).__name__}: {exc.strerror}")
        return DELIVERED
