"""Snapshots: a scorer written at any batch boundary and read back goes on exactly as the one
that was written (every alert version, in order), and a snapshot that cannot be trusted is
refused with `SnapshotError`, never half-loaded."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable

import pytest

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.core.alerts import Alert
from monitor.scoring.model import ModelSlot, load_model
from monitor.scoring.pipeline import MemorySource, Stats, score_batch
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.snapshot import SnapshotError, dumps, loads, read_header
from monitor.simulation.simulator import Simulation, SimulationSpec

LINES = list(Simulation(SimulationSpec(seed=33, hours=26.0, merchants=20)).lines())


def _run(
    policy: Policy,
    batch_size: int,
    cuts: set[int] = frozenset(),  # type: ignore[assignment]
    model: ModelSlot | None = None,
) -> list[str]:
    """Every alert version emitted, as JSON, when the scorer is written and read back after
    each batch number in `cuts` (with the anomaly model's slot, when given)."""
    scorer, stats, out = Scorer(policy, model), Stats(), []
    source = MemorySource(LINES, batch_size)
    number = 0
    while (batch := source.poll()) is not None:
        alerts, _ = score_batch(batch, scorer, stats)
        out += [a.model_dump_json() for a in alerts]
        number += 1
        if number in cuts:
            scorer, positions = loads(dumps(scorer, policy, {0: number}), policy, model)
            assert positions == {0: number}
    scorer.close()
    out += [a.model_dump_json() for a in scorer.take_alerts()[0]]
    return out


@pytest.mark.parametrize("batch_size", [1000, 137])
def test_a_restored_scorer_goes_on_exactly_as_the_written_one(batch_size: int) -> None:
    policy = Policy()
    expected = _run(policy, batch_size)
    assert len({Alert.model_validate_json(a).alert_id for a in expected}) > 40
    batches = -(-len(LINES) // batch_size)
    cuts = {1, 2, batches // 3, batches // 2, batches - 1}
    assert _run(policy, batch_size, cuts) == expected


def test_the_model_features_are_restored_exactly_and_the_model_is_not_in_the_snapshot() -> None:
    """With the shipped model: the features' state is in the snapshot (the model alerts after a
    restore are those of an uninterrupted run), the model is not, and a snapshot written with
    a model is refused by a scorer without one (and the other way round)."""
    policy = Policy()
    model = load_model(DEFAULT_MODEL)
    expected = _run(policy, 1000, model=ModelSlot(live=model))
    assert any(Alert.model_validate_json(a).detector == "model_outlier" for a in expected)
    got = _run(policy, 1000, {1, 10, 30}, model=ModelSlot(live=model))
    assert got == expected
    scorer = Scorer(policy, ModelSlot(live=model))
    for batch in iter(MemorySource(LINES[:3000], 1000).poll, None):
        score_batch(batch, scorer, Stats())
    data = dumps(scorer, policy, {0: 3})
    assert b"forest" not in zlib.decompress(data.partition(b"\n")[2])
    with pytest.raises(SnapshotError, match="model"):
        loads(data, policy)
    with pytest.raises(SnapshotError, match="model"):
        loads(dumps(Scorer(policy), policy, {0: 3}), policy, ModelSlot(live=model))


def test_every_batch_boundary_of_a_short_run() -> None:
    policy = Policy()
    lines = LINES[:6000]
    expected_scorer = Scorer(policy)
    stats = Stats()
    expected: list[str] = []
    for batch in iter(MemorySource(lines, 500).poll, None):
        expected += [a.model_dump_json() for a in score_batch(batch, expected_scorer, stats)[0]]
    for cut in range(1, 12):
        scorer, got = Scorer(policy), []
        for number, batch in enumerate(iter(MemorySource(lines, 500).poll, None), 1):
            got += [a.model_dump_json() for a in score_batch(batch, scorer, stats)[0]]
            if number == cut:
                scorer, _ = loads(dumps(scorer, policy, {0: number}), policy)
        assert got == expected, cut


def _scorer_after(lines: int) -> Scorer:
    scorer, stats = Scorer(Policy()), Stats()
    for batch in iter(MemorySource(LINES[:lines], 1000).poll, None):
        score_batch(batch, scorer, stats)
    return scorer


def _flip_body(data: bytes) -> bytes:
    header, _, body = data.partition(b"\n")
    return header + b"\n" + body[:-1] + bytes([body[-1] ^ 1])


def _other_version(data: bytes) -> bytes:
    header, _, body = data.partition(b"\n")
    fields = json.loads(header)
    fields["version"] += 1
    return json.dumps(fields).encode() + b"\n" + body


def _renamed_attribute(data: bytes) -> bytes:
    """A snapshot written by code whose `Watermark` had another attribute (checksum redone)."""
    header, _, body = data.partition(b"\n")
    graph = zlib.decompress(body).replace(b'"lateness"', b'"lateness_old"')
    body = zlib.compress(graph)
    fields = json.loads(header)
    fields |= {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(fields).encode() + b"\n" + body


def _foreign_class(data: bytes) -> bytes:
    header, _, body = data.partition(b"\n")
    graph = zlib.decompress(body).replace(
        b"monitor.scoring.state:Watermark", b"subprocess:Popen", 1
    )
    body = zlib.compress(graph)
    fields = json.loads(header) | {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(fields).encode() + b"\n" + body


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (_flip_body, "checksum"),
        (lambda d: b"", "unreadable header"),
        (lambda d: b"{}\n" + d, "not a posmon snapshot"),
        (lambda d: b"PK\x03\x04 something else\n", "unreadable header"),
        (_other_version, "format version"),
        (_renamed_attribute, "changed since"),
        (_foreign_class, "untrusted class"),
    ],
)
def test_a_snapshot_that_cannot_be_trusted_is_refused(
    damage: Callable[[bytes], bytes], message: str
) -> None:
    data = dumps(_scorer_after(3000), Policy(), {0: 3000})
    with pytest.raises(SnapshotError, match=message):
        loads(damage(data), Policy())


def test_a_snapshot_of_another_policy_is_refused() -> None:
    data = dumps(_scorer_after(2000), Policy(), {0: 2000})
    other = Policy.model_validate({"allowed_lateness": "60s"})
    with pytest.raises(SnapshotError, match="another policy"):
        loads(data, other)


def test_the_header_names_the_positions_and_checks_the_body() -> None:
    data = dumps(_scorer_after(1000), Policy(), {3: 17, 0: 5})
    header = read_header(data)
    assert header["positions"] == {"0": 5, "3": 17}
    assert header["length"] == len(data.partition(b"\n")[2])
