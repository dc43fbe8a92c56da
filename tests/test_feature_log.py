"""The feature log: scored rows round-trip through Parquet, land in their hour's partition, and
files appear whole, under names no other writer takes and no existing file loses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from monitor.core.scored import ScoredRows
from monitor.streaming.featurelog import FEATURE_VERSION_KEY, FeatureLog

T0 = 1_793_491_200_000_000  # 2026-11-01T00:00:00Z
HOUR = 3_600_000_000
NAMES = ("card_attempts_1h", "amount_minor", "amount_robust_z")


def scored(
    times: list[int],
    *,
    first: int = 0,
    score: bool = True,
    shadow: bool = False,
    names: tuple[str, ...] = NAMES,
) -> ScoredRows:
    n = len(times)
    ids = range(first, first + n)
    features = np.arange(n * len(names), dtype=np.float32).reshape(n, len(names)) + first
    return ScoredRows(
        event_id=[f"e{i:05d}" for i in ids],
        event_time_us=np.asarray(times, dtype=np.int64),
        card_id=[f"card{i % 3}" for i in ids],
        terminal_id=[f"t{i % 2}" for i in ids],
        merchant_id=["m1"] * n,
        features=features,
        feature_names=names,
        feature_version="posmon-features/1",
        score=np.linspace(0.1, 0.9, n) if score else None,
        model_version="forest-1" if score else None,
        shadow_score=np.linspace(0.2, 0.8, n) if shadow else None,
        shadow_version="forest-2" if shadow else None,
    )


def dataset(directory: Path) -> pa.Table:
    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table()
    return table.sort_by("event_id")


def files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def test_round_trip(tmp_path: Path) -> None:
    first = scored([T0 + 5, T0 + HOUR + 7, T0 + 9])
    second = scored([T0 + 2 * HOUR, T0 + 11], first=3)
    with FeatureLog(tmp_path) as log:
        log.write(first)
        log.write(second)
        assert files(tmp_path) == [] and log.buffered == 5
    table = dataset(tmp_path)
    assert table.num_rows == log.rows_written == 5
    assert table.column("event_id").to_pylist() == [f"e{i:05d}" for i in range(5)]
    schema = table.schema
    assert schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("score").type == pa.float64()
    assert schema.field("model_version").type == pa.string()
    assert "shadow_score" not in schema.names
    fixed = [
        "event_id",
        "event_time",
        "card_id",
        "terminal_id",
        "merchant_id",
        "score",
        "unsupervised_score",
    ]
    assert schema.names[: len(fixed) + 1 + len(NAMES)] == [*fixed, "model_version", *NAMES]
    assert all(schema.field(n).type == pa.float32() for n in NAMES)
    times = table.column("event_time").cast(pa.int64()).to_pylist()
    assert times == [T0 + 5, T0 + HOUR + 7, T0 + 9, T0 + 2 * HOUR, T0 + 11]
    expected = np.concatenate([first.features, second.features])
    got = np.column_stack([table.column(n).to_numpy() for n in NAMES])
    assert np.array_equal(got, expected)
    assert first.score is not None and second.score is not None
    scores = np.concatenate([first.score, second.score])
    assert np.array_equal(table.column("score").to_numpy(), scores)
    assert set(table.column("model_version").to_pylist()) == {"forest-1"}
    assert table.column("card_id").to_pylist() == ["card0", "card1", "card2", "card0", "card1"]
    for path in files(tmp_path):
        assert pq.read_schema(path).metadata[FEATURE_VERSION_KEY] == b"posmon-features/1"


def test_partitions_by_hour_of_event_time_utc(tmp_path: Path) -> None:
    day = 24 * HOUR
    times = [T0 + day - 1, T0 + day, T0 + 9 * HOUR + 1, T0 + 9 * HOUR - 1, T0 + 9 * HOUR]
    with FeatureLog(tmp_path) as log:
        log.write(scored(times))
    folders = sorted(str(p.parent.relative_to(tmp_path)) for p in files(tmp_path))
    assert folders == [
        "date=2026-11-01/hour=08",
        "date=2026-11-01/hour=09",
        "date=2026-11-01/hour=23",
        "date=2026-11-02/hour=00",
    ]
    assert log.files_written == 4
    for path in files(tmp_path):
        partition = dict(part.split("=") for part in path.parent.relative_to(tmp_path).parts)
        for t in pq.read_table(path).column("event_time").to_pylist():
            assert t.strftime("%Y-%m-%d") == partition["date"]
            assert t.strftime("%H") == partition["hour"]
    table = dataset(tmp_path)
    assert table.column("hour").to_pylist() == [23, 0, 9, 8, 9]  # e0..e4, as read back
    # Within an hour the rows keep the order they were written in.
    nine = pq.read_table(next(p for p in files(tmp_path) if "hour=09" in str(p)))
    assert nine.column("event_id").to_pylist() == ["e00002", "e00004"]


def test_no_model_and_a_shadow(tmp_path: Path) -> None:
    with FeatureLog(tmp_path / "none") as log:
        log.write(scored([T0, T0 + 1], score=False))
    table = dataset(tmp_path / "none")
    assert table.column("score").null_count == 2
    assert table.column("model_version").null_count == 2
    assert table.schema.field("score").type == pa.float64()
    with FeatureLog(tmp_path / "reload") as log:  # a model loaded, then another, in one file
        log.write(scored([T0, T0 + 1], score=False))
        log.write(scored([T0 + 2], first=2))
        log.write(replace(scored([T0 + 3], first=3), model_version="forest-9"))
    table = dataset(tmp_path / "reload")
    assert log.files_written == 1
    assert table.column("score").to_pylist() == [None, None, 0.1, 0.1]
    assert table.column("model_version").to_pylist() == [None, None, "forest-1", "forest-9"]
    with FeatureLog(tmp_path / "shadow") as log:
        log.write(scored([T0, T0 + 1], shadow=True))
    table = dataset(tmp_path / "shadow")
    assert table.column("shadow_score").to_pylist() == [0.2, 0.8]
    assert table.column("shadow_version").to_pylist() == ["forest-2", "forest-2"]


def test_flushes_once_enough_rows_are_buffered(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path, flush_rows=4)
    log.write(scored([T0, T0 + 1, T0 + 2]))
    assert files(tmp_path) == []
    log.write(scored([T0 + 3, T0 + 4], first=3))
    assert len(files(tmp_path)) == 1 and log.buffered == 0
    log.write(scored([T0 + 5], first=5))
    assert log.flush() != [] and log.flush() == []
    log.close()
    log.close()
    assert dataset(tmp_path).num_rows == 6
    with pytest.raises(ValueError, match="closed"):
        log.write(scored([T0]))


def test_a_new_feature_set_starts_new_files(tmp_path: Path) -> None:
    with FeatureLog(tmp_path) as log:
        log.write(scored([T0]))
        log.write(scored([T0 + 1], first=1, names=("hour_sin", "hour_cos")))
        log.write(scored([T0 + 2], first=2, shadow=True, names=("hour_sin", "hour_cos")))
        log.write(scored([]))
    schemas = [pq.read_schema(p).names for p in files(tmp_path)]
    assert sorted(len(s) for s in schemas) == [10, 11, 12]
    assert sum("shadow_score" in s for s in schemas) == 1
    with pytest.raises(ValueError, match=r"clash.*score"):
        FeatureLog(tmp_path).write(scored([T0], names=("score", "x")))


def test_files_appear_whole_and_nothing_temporary_is_left(tmp_path: Path) -> None:
    with FeatureLog(tmp_path, flush_rows=3) as log:
        for i in range(10):
            log.write(scored([T0 + i * HOUR // 2], first=i))
    names = [p.name for p in files(tmp_path)]
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))
    assert dataset(tmp_path).num_rows == 10


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    log = FeatureLog(tmp_path)
    hour = tmp_path / "date=2026-11-01" / "hour=00"
    hour.mkdir(parents=True)
    taken = hour / f"part-{log.writer}-000001.parquet"
    taken.write_bytes(b"not ours")
    log.write(scored([T0]))
    [written] = log.flush()
    assert taken.read_bytes() == b"not ours"
    assert written.name == f"part-{log.writer}-000002.parquet"


def test_two_writers_never_collide(tmp_path: Path) -> None:
    one, two = FeatureLog(tmp_path), FeatureLog(tmp_path)
    assert one.writer != two.writer
    for i in range(3):  # the same hour, the same sequence numbers, flushed in turn
        one.write(scored([T0 + i], first=i))
        two.write(scored([T0 + i], first=10 + i))
        one.flush()
        two.flush()
    assert len(files(tmp_path)) == 6
    ids = dataset(tmp_path).column("event_id").to_pylist()
    assert ids == [f"e{i:05d}" for i in (0, 1, 2, 10, 11, 12)]


def test_a_failed_flush_keeps_the_hours_it_did_not_write(tmp_path: Path) -> None:
    blocked = tmp_path / "date=2026-11-01" / "hour=01"
    blocked.parent.mkdir(parents=True)
    blocked.write_bytes(b"")  # a file where the hour's folder should be
    log = FeatureLog(tmp_path)
    log.write(scored([T0, T0 + HOUR, T0 + 2 * HOUR]))
    with pytest.raises(OSError):
        log.flush()
    assert log.buffered == 2 and log.rows_written == 1
    blocked.unlink()
    log.close()
    table = dataset(tmp_path)
    assert table.column("event_id").to_pylist() == ["e00000", "e00001", "e00002"]
    times = table.column("event_time").cast(pa.int64()).to_pylist()
    assert times == [T0, T0 + HOUR, T0 + 2 * HOUR]
