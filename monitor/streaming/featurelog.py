"""The feature log: every row the anomaly model scored, as Parquet files partitioned by hour.

What the model saw and what it said, kept for training the next model and for explaining an
alert later: one row per scored auth_request with its ids, event time, score (and the shadow
model's), model version and its feature vector, one float32 column per feature in the order of
`ScoredRows.feature_names`. The schema's metadata names the feature version.

Files are laid out Hive-style by event time (UTC),
`date=YYYY-MM-DD/hour=HH/part-<writer>-<n>.parquet`, readable as one dataset
(`pyarrow.dataset.dataset(directory, partitioning="hive")`). `<writer>` is unique per
`FeatureLog` (a start stamp, the process id and a random token) and `<n>` counts its files, so
writers sharing a directory never collide. A file is written under a hidden temporary name
(`.part-...tmp`, which dataset readers skip), flushed to disk and linked to its final name, which
fails rather than replace a file already there: no file is ever overwritten or seen half written.

`write` and `flush` are on the stream's path. `write` only checks the batch and keeps it (the
caller hands its arrays over: it must not change them afterwards); `flush` converts everything
buffered at once, each column in one bulk call (lists and numpy arrays to Arrow, no loop over
rows), splits the rows by hour with numpy (a stable sort when they are out of order) and writes one
file per hour. Converting per flush rather than per batch pays the fixed cost of building a
table's columns once per flush instead of once per batch (a replay's batches hold a few hundred
rows).
`flush` runs by itself once `flush_rows` rows are buffered, and from `close`. An edge module: it
carries the core's `ScoredRows`, never the scoring loop.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, pairwise, repeat
from operator import attrgetter
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from monitor.core.scored import ScoredRows

HOUR_US = 3_600_000_000
FEATURE_VERSION_KEY = b"posmon.feature_version"
COLUMNS = (
    "event_id",
    "event_time",
    "card_id",
    "terminal_id",
    "merchant_id",
    "score",
    "unsupervised_score",
)
SHADOW_COLUMNS = ("shadow_score", "shadow_version")
_FIXED = frozenset((*COLUMNS, "model_version", *SHADOW_COLUMNS, "date", "hour"))
# Dictionary encoding where values repeat (cards, terminals, merchants, versions), not on the
# scores and features: there it costs up to six times the write for no gain on varied values.
_DICTIONARY = ["card_id", "terminal_id", "merchant_id", "model_version", "shadow_version"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, slots=True)
class _Shape:
    """What one file's schema depends on; a batch of another shape flushes the buffer first."""

    feature_names: tuple[str, ...]
    feature_version: str
    shadow: bool


class FeatureLog:
    """Scored rows to Parquet under `directory`; `write` buffers, `flush` and `close` write."""

    def __init__(self, directory: Path, *, flush_rows: int = 50_000) -> None:
        if flush_rows < 1:
            raise ValueError("flush_rows must be at least 1")
        self.directory = directory
        self.flush_rows = flush_rows
        # The wall clock names the files only (an edge may read it); it orders writers by start.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.writer = f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}"
        self.rows_written = 0
        self.files_written = 0
        self._sequence = 0
        self._pending: list[ScoredRows] = []  # of one shape
        self._pending_rows = 0
        self._unwritten: list[tuple[int, pa.Table]] = []  # (hour, rows) a failed flush left
        self._shape: _Shape | None = None
        self._closed = False

    def __enter__(self) -> FeatureLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def buffered(self) -> int:
        """Rows written to no file yet."""
        return self._pending_rows + sum(int(table.num_rows) for _, table in self._unwritten)

    def write(self, rows: ScoredRows) -> None:
        """Buffer `rows`; flush once `flush_rows` rows are buffered. Raises ValueError for feature
        names that clash with the log's own columns, or after `close`."""
        if self._closed:
            raise ValueError("the feature log is closed")
        if len(rows) == 0:
            return
        shape = _Shape(rows.feature_names, rows.feature_version, rows.shadow_score is not None)
        if shape != self._shape:
            _check_names(shape.feature_names)
            self.flush()
            self._shape = shape
        self._pending.append(rows)
        self._pending_rows += len(rows)
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> list[Path]:
        """Write the buffered rows, one file per hour of event time; return the files written.

        If writing fails (OSError), the hours not yet written stay buffered for the next flush
        and the error is raised; the hours written are not written again.
        """
        parts = self._unwritten
        if self._pending:
            parts = parts + _by_hour(_table(self._pending))
        self._pending, self._pending_rows, self._unwritten = [], 0, []
        written: list[Path] = []
        for i, (hour, part) in enumerate(parts):
            try:
                written.append(self._publish(hour, part))
            except BaseException:
                self._unwritten = parts[i:]  # for the next flush, in order
                raise
            self.rows_written += part.num_rows
        return written

    def close(self) -> None:
        """Flush and refuse further writes; closing twice is harmless."""
        if not self._closed:
            self.flush()
            self._closed = True

    def _publish(self, hour: int, table: pa.Table) -> Path:
        start = _EPOCH + timedelta(hours=hour)
        directory = self.directory / f"date={start:%Y-%m-%d}" / f"hour={start:%H}"
        directory.mkdir(parents=True, exist_ok=True)
        while True:
            self._sequence += 1
            name = f"part-{self.writer}-{self._sequence:06d}.parquet"
            target = directory / name
            temporary = directory / f".{name}.tmp"
            try:
                with open(temporary, "xb") as out:
                    pq.write_table(table, out, compression="snappy", use_dictionary=_DICTIONARY)
                    out.flush()
                    os.fsync(out.fileno())
                os.link(temporary, target)  # unlike a rename, never replaces an existing file
            except FileExistsError:
                continue  # a name taken (only by a copy of this log's files): the next one
            finally:
                temporary.unlink(missing_ok=True)
            break
        _sync_directory(directory)
        self.files_written += 1
        return target


def _check_names(names: tuple[str, ...]) -> None:
    clash = sorted(_FIXED.intersection(names))
    if clash:
        raise ValueError(f"feature names clash with the log's own columns: {', '.join(clash)}")
    if len(set(names)) != len(names):
        raise ValueError("feature names must be distinct")


def _table(batches: list[ScoredRows]) -> pa.Table:
    """Batches of one shape as one Arrow table: one bulk conversion per column."""
    first = batches[0]
    sizes = [len(b) for b in batches]
    n = sum(sizes)

    def strings(column: Callable[[ScoredRows], list[str]]) -> pa.Array:
        return pa.array(list(chain.from_iterable(map(column, batches))), pa.string())

    times = np.concatenate([np.asarray(b.event_time_us, dtype=np.int64) for b in batches])
    columns: dict[str, pa.Array] = {
        "event_id": strings(attrgetter("event_id")),
        "event_time": pa.array(times, _TIME),
        "card_id": strings(attrgetter("card_id")),
        "terminal_id": strings(attrgetter("terminal_id")),
        "merchant_id": strings(attrgetter("merchant_id")),
        "score": _floats([b.score for b in batches], sizes),
        "unsupervised_score": _floats([b.unsupervised_score for b in batches], sizes),
        "model_version": _repeated([b.model_version for b in batches], sizes, n),
    }
    if first.shadow_score is not None:
        columns["shadow_score"] = _floats([b.shadow_score for b in batches], sizes)
        columns["shadow_version"] = _repeated([b.shadow_version for b in batches], sizes, n)
    features = np.concatenate([np.asarray(b.features, dtype=np.float32) for b in batches])
    for name, column in zip(first.feature_names, np.ascontiguousarray(features.T), strict=True):
        columns[name] = pa.array(column, pa.float32())
    metadata = {FEATURE_VERSION_KEY: first.feature_version.encode()}
    return pa.table(columns, metadata=metadata)


def _floats(parts: list[npt.NDArray[np.float64] | None], sizes: list[int]) -> pa.Array:
    """Scores, null for the batches without (no model while they were scored)."""
    if all(part is None for part in parts):
        return pa.nulls(sum(sizes), pa.float64())
    values = np.concatenate(
        [
            np.full(k, np.nan) if p is None else np.asarray(p, np.float64)
            for p, k in zip(parts, sizes, strict=True)
        ]
    )
    if all(part is not None for part in parts):
        return pa.array(values, pa.float64())
    missing = np.repeat(np.array([p is None for p in parts]), sizes)
    return pa.array(values, pa.float64(), mask=missing)


def _repeated(values: list[str | None], sizes: list[int], n: int) -> pa.Array:
    """One value per batch (a model version), repeated for its rows."""
    if len(set(values)) == 1:
        value = values[0]
        return pa.nulls(n, pa.string()) if value is None else pa.repeat(pa.scalar(value), n)
    return pa.array(list(chain.from_iterable(map(repeat, values, sizes))), pa.string())


def _by_hour(table: pa.Table) -> list[tuple[int, pa.Table]]:
    """The table cut into one slice per hour of event time, hours in order, rows within an hour
    in the order written."""
    times = table.column("event_time").combine_chunks().cast(pa.int64()).to_numpy()
    hours = np.floor_divide(times, HOUR_US)
    first, last = int(hours.min()), int(hours.max())
    if first == last:
        return [(first, table)]
    if not (hours[1:] >= hours[:-1]).all():  # rows come in event-time order, nearly always
        order = np.argsort(hours, kind="stable")
        hours = hours[order]
        table = table.take(pa.array(order))
    starts = [0, *(np.flatnonzero(np.diff(hours)) + 1).tolist(), len(hours)]
    return [(int(hours[a]), table.slice(a, b - a)) for a, b in pairwise(starts)]


def _sync_directory(directory: Path) -> None:
    """The new name itself survives a power cut."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
