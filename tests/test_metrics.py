"""The scoring loop's series: money at risk adds up, and no label grows with the population."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry

from monitor.core.batches import Batch
from monitor.scoring.metrics import Metrics
from monitor.scoring.pipeline import MemorySink, MemorySource, Stats, run
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
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
