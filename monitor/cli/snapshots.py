"""Where `posmon run` keeps its state snapshots: one file per (group, topic, partition set).

A snapshot is written to a temporary file, flushed to disk and renamed over the previous one, so
a crash at any moment leaves either the old snapshot or the new one, never half of one. The
scorer's state spans every partition a member holds (card rules see all of them), so a snapshot
belongs to that exact set of partitions; another assignment reads the topic from the beginning.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from pathlib import Path


class SnapshotStore:
    def __init__(self, directory: Path, *, group: str, topic: str) -> None:
        self.directory = directory
        self._prefix = f"{_safe(group)}.{_safe(topic)}"

    def path(self, partitions: Collection[int]) -> Path:
        ordered = sorted(partitions)
        label = "-".join(map(str, ordered))
        if len(ordered) > 16:
            label = f"{len(ordered)}p-{hashlib.sha256(label.encode()).hexdigest()[:12]}"
        return self.directory / f"{self._prefix}.{label}.snapshot"

    def read(self, partitions: Collection[int]) -> bytes | None:
        """The snapshot of these partitions, or None when there is none (OSError if unreadable)."""
        try:
            return self.path(partitions).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, partitions: Collection[int], data: bytes) -> Path:
        """Replace the snapshot of these partitions atomically; raises OSError."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(partitions)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
        return target


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
