"""JSONL in and out, for `posmon replay` and `posmon simulate` (an edge: files, not Kafka)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from monitor.core.alerts import Alert
from monitor.core.events import Rejection


def read_messages(path: str) -> Iterator[bytes]:
    """The lines of a JSONL file (`-` for stdin) without line endings.

    A blank line is passed on like any other: it is rejected (`not_json`) and lands in the dead
    letters, because nothing read is dropped silently.
    """
    stream: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for line in stream:
            yield line.rstrip(b"\r\n")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


class JsonlSink:
    """Writes alerts and dead letters as JSON lines; `publish` returns once they reach the OS.

    A dead letter's `source` names the line of `input_file` it stands for (a replay), or else
    the partition and offset it was read at, of `topic` when given (a copy of a stream's).
    """

    def __init__(
        self,
        alerts: Path,
        dead_letters: Path | None,
        *,
        input_file: str | None = None,
        topic: str | None = None,
    ) -> None:
        self._alerts = open(alerts, "w", encoding="utf-8")  # noqa: SIM115
        self._dlq = open(dead_letters, "w", encoding="utf-8") if dead_letters else None  # noqa: SIM115
        self._input_file, self._topic = input_file, topic

    def publish(self, alerts: Sequence[Alert], dead_letters: Sequence[Rejection]) -> None:
        if alerts:
            self._alerts.writelines(alert.model_dump_json() + "\n" for alert in alerts)
            self._alerts.flush()
        if dead_letters and self._dlq is not None:
            self._dlq.writelines(
                json.dumps(r.as_dead_letter(self._source(r))) + "\n" for r in dead_letters
            )
            self._dlq.flush()

    def _source(self, r: Rejection) -> dict[str, str | int] | None:
        if r.partition is None or r.offset is None:
            return None
        if self._input_file is not None:
            return {"file": self._input_file, "line": r.offset}
        at: dict[str, str | int] = {"partition": r.partition, "offset": r.offset}
        return at if self._topic is None else {"topic": self._topic, **at}

    def close(self) -> None:
        for f in (self._alerts, self._dlq):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
