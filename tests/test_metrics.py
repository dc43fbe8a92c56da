"""The scoring loop's series: money at risk adds up, no label grows with the population, and the
anomaly model's series say what its tally says (scores counted as `observe` would count them)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from monitor.cli.anomaly import model_slot
from monitor.cli.settings import ModelSettings
from monitor.core.batches import Batch
from monitor.scoring.metrics import _SCORES, ROLES, Metrics
from monitor.scoring.model import ModelSlot
from monitor.scoring.pipeline import MemorySink, MemorySource, Stats, run
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.tally import RELOAD_OUTCOMES, ModelTally
from monitor.simulation.simulator import Simulation, SimulationSpec
from tests.fake_services import make_alert

FORBIDDEN = {"card_id", "terminal_id", "merchant_id", "event_id", "txn_ref", "alert_id"}


def _replay_with_metrics(spec: SimulationSpec) -> tuple[CollectorRegistry, MemorySink, Scorer]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    scorer, stats, sink = Scorer(Policy()), Stats(), MemorySink()

    def after(batch: Batch, seconds: float) -> None:
        metrics.observe_scorer(scorer, stats, seconds=seconds)
        metrics.observe_state(sizes=scorer.state_sizes(), rebalances=0, watermark_delay=None)

    run(MemorySource(Simulation(spec).lines(), 500), sink, scorer, stats, on_batch=after)
    return registry, sink, scorer


def _series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in registry.collect()
        for sample in family.samples
    }


def test_money_at_risk_is_what_ghost_and_duplicate_debits_took() -> None:
    registry, sink, _ = _replay_with_metrics(SimulationSpec(seed=7, hours=4, merchants=15))
    expected: Counter[tuple[str, str]] = Counter()
    for alert in sink.final_alerts().values():
        if alert.detector in ("failed_then_debited", "duplicate_debit"):
            currency = str(alert.details["currency"])
            debited = alert.details["debited_minor"]
            assert isinstance(debited, int)
            expected[alert.detector, currency] += debited
    assert expected  # the simulation injected both kinds
    for (detector, currency), minor in expected.items():
        labels = {"detector": detector, "currency": currency}
        assert registry.get_sample_value("posmon_money_at_risk_minor_total", labels) == minor


def test_small_attempts_and_state_sizes_are_exported() -> None:
    registry, _, scorer = _replay_with_metrics(SimulationSpec(seed=7, hours=2, merchants=10))
    assert (
        registry.get_sample_value("posmon_small_amount_attempts_total") == scorer.small_attempts > 0
    )
    assert registry.get_sample_value("posmon_state_entries", {"store": "attempts"}) == len(
        scorer.attempts
    )


def test_the_number_of_series_does_not_grow_with_the_number_of_terminals() -> None:
    small, _, _ = _replay_with_metrics(SimulationSpec(seed=3, hours=2, merchants=10))
    large, _, _ = _replay_with_metrics(SimulationSpec(seed=3, hours=2, merchants=80))
    assert all(not FORBIDDEN & {k for k, _ in labels} for _, labels in _series(large))
    # Only the finite label values (kinds, reasons, detectors, currencies) may differ.
    assert len(_series(large)) <= len(_series(small)) + 12


def test_money_at_risk_is_read_from_the_alerts_typed_fields_only() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    typed = make_alert().model_copy(update={"details": {}})  # 35.00 EUR at risk, no details
    untyped = make_alert(1).model_copy(update={"amount_at_risk_minor": None, "currency": None})
    grown = typed.model_copy(update={"count": 2, "amount_at_risk_minor": 5000})
    for emitted in ([typed, untyped], [grown]):
        metrics.observe_batch(
            consumed={},
            rejected={},
            duplicates=0,
            late=0,
            new_alerts=[],
            seconds=0.0,
            emitted=emitted,
            newest_event_lag=None,
            watermark_s=None,
        )
    labels = {"detector": "failed_then_debited", "currency": "EUR"}
    assert registry.get_sample_value("posmon_money_at_risk_minor_total", labels) == 5000


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_the_model_series_exist_at_zero_without_a_model() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_model(None)
    for role in ROLES:
        assert registry.get_sample_value("posmon_model_scored_total", {"role": role}) == 0
        assert registry.get_sample_value("posmon_model_score_count", {"role": role}) == 0
    for outcome in RELOAD_OUTCOMES:
        labels = {"outcome": outcome}
        assert registry.get_sample_value("posmon_model_reload_total", labels) == 0
    assert registry.get_sample_value("posmon_model_scoring_seconds_count") == 0
    assert not _samples(registry, "posmon_model_info")
    assert not _samples(registry, "posmon_model_drift_psi")


def test_scores_are_counted_as_observe_would_count_them() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    rng = np.random.default_rng(12)
    bounds = [0.3, 0.5, 0.65, 0.9, 1.0]  # on a bound counts in it (le is inclusive)
    live = [rng.uniform(0.2, 1.0, 400), np.array(bounds), np.array([0.0001, 0.31, np.nan])]
    shadow = [rng.beta(5, 5, 300)]
    tally = ModelTally(version="iforest-2", scores=live, shadow_scores=shadow, seconds=[0.002])
    metrics.observe_model(tally)
    assert (tally.scores, tally.shadow_scores, tally.seconds) == ([], [], [])  # drained
    reference = CollectorRegistry()
    expected = Histogram("posmon_model_score", "", ["role"], buckets=_SCORES, registry=reference)
    for role, batches in (("live", live), ("shadow", shadow)):
        for value in np.concatenate(batches):
            if not np.isnan(value):
                expected.labels(role=role).observe(float(value))
    for suffix in ("_bucket", "_count"):
        name = "posmon_model_score" + suffix
        assert _samples(registry, name) == _samples(reference, name)
    got, want = (_samples(r, "posmon_model_score_sum") for r in (registry, reference))
    assert got.keys() == want.keys()
    assert all(got[key] == pytest.approx(want[key]) for key in want)
    assert (
        registry.get_sample_value("posmon_model_scored_total", {"role": "live"}) == 408
    )  # NaN too
    assert registry.get_sample_value("posmon_model_scored_total", {"role": "shadow"}) == 300
    assert registry.get_sample_value("posmon_model_scoring_seconds_count") == 1
    metrics.observe_model(tally)  # nothing new since the drain: nothing counted twice
    assert registry.get_sample_value("posmon_model_score_count", {"role": "live"}) == 407


def test_model_info_shows_only_the_versions_in_use() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    tally = ModelTally(version="iforest-1")
    shown = []
    for version, shadow in (("iforest-1", None), ("iforest-1", "iforest-2"), ("iforest-2", None)):
        tally.version, tally.shadow_version = version, shadow
        metrics.observe_model(tally)
        shown.append(_samples(registry, "posmon_model_info"))
    metrics.observe_model(None)
    shown.append(_samples(registry, "posmon_model_info"))
    live1, live2 = (
        (("role", "live"), ("version", "iforest-1")),
        (("role", "live"), ("version", "iforest-2")),
    )
    shadow2 = (("role", "shadow"), ("version", "iforest-2"))
    assert shown == [{live1: 1}, {live1: 1, shadow2: 1}, {live2: 1}, {}]


def test_reload_outcomes_are_counted_once() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    tally = ModelTally(version="iforest-1")
    tally.reloads.update({"loaded": 1, "refused_parity": 2})
    metrics.observe_model(tally)
    metrics.observe_model(tally)
    tally.reloads["refused_parity"] += 1
    metrics.observe_model(tally)
    reloads = {
        outcome: registry.get_sample_value("posmon_model_reload_total", {"outcome": outcome})
        for outcome in RELOAD_OUTCOMES
    }
    assert reloads == {
        "loaded": 1,
        "refused_mismatch": 0,
        "refused_parity": 3,
        "refused_unreadable": 0,
    }


def test_drift_is_exported_per_feature_while_the_tally_has_it() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    tally = ModelTally(version="iforest-1", psi={"amount_minor": 0.02, "score": 0.3})
    metrics.observe_model(tally)
    tally.psi["amount_minor"] = 0.12
    metrics.observe_model(tally)
    assert _samples(registry, "posmon_model_drift_psi") == {
        (("feature", "amount_minor"),): 0.12,
        (("feature", "score"),): 0.3,
    }
    tally.psi = {}  # a model without a reference distribution yet
    metrics.observe_model(tally)
    assert not _samples(registry, "posmon_model_drift_psi")


def test_every_accepted_auth_request_is_scored_once_by_the_shipped_model() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    slot = model_slot(ModelSettings())
    assert slot is not None and slot.live is not None
    scorer, stats, sink = Scorer(Policy(), slot), Stats(), MemorySink()
    lines = Simulation(SimulationSpec(seed=7, hours=2, merchants=10)).lines()

    def after(batch: Batch, seconds: float) -> None:
        metrics.observe_scorer(scorer, stats, seconds=seconds)

    run(MemorySource(lines, 500), sink, scorer, stats, on_batch=after)
    metrics.observe_scorer(scorer, stats, seconds=0.0)  # what the end of the input released
    requests = scorer.consumed["auth_request"]
    assert requests > 0
    assert registry.get_sample_value("posmon_model_scored_total", {"role": "live"}) == requests
    assert registry.get_sample_value("posmon_model_score_count", {"role": "live"}) == requests
    assert registry.get_sample_value("posmon_model_scored_total", {"role": "shadow"}) == 0
    assert _samples(registry, "posmon_model_info") == {
        (("role", "live"), ("version", slot.live.version)): 1
    }


def test_a_reload_just_before_a_new_assignment_is_counted() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    slot = ModelSlot()  # the service's slot: every scorer it builds holds it
    metrics.observe_scorer(Scorer(Policy(), slot), Stats(), seconds=0.0)
    slot.tally.reloads["refused_parity"] += 1  # the reloader runs after the batch's metrics
    scorer = Scorer(Policy(), slot)  # then a new assignment
    metrics.rebase(scorer)
    metrics.observe_scorer(scorer, Stats(), seconds=0.0)
    other = ModelSlot()  # another slot's totals are its own, from zero
    other.tally.reloads["loaded"] += 1
    metrics.observe_model(other.tally)
    reloads = {
        outcome: registry.get_sample_value("posmon_model_reload_total", {"outcome": outcome})
        for outcome in ("loaded", "refused_parity")
    }
    assert reloads == {"loaded": 1, "refused_parity": 1}
