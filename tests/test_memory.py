"""The scoring path makes no reference cycles, so the CLI may run it without the cycle collector."""

from __future__ import annotations

import gc

import pytest

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.scoring.model import ModelSlot, load_model
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec


@pytest.mark.parametrize("with_model", [False, True], ids=["rules", "rules and model"])
def test_scoring_a_simulated_stream_leaves_no_cycles_behind(with_model: bool) -> None:
    lines = list(Simulation(SimulationSpec(seed=3, hours=3, merchants=15)).lines())
    model = ModelSlot(live=load_model(DEFAULT_MODEL), keep_rows=True) if with_model else None
    gc.collect()
    gc.disable()
    try:
        sink, stats = replay_messages(lines, Scorer(Policy(), model), batch_size=500)
        assert stats.rejected and sink.alerts  # rejects (exceptions) and alerts were on the path
        assert gc.collect() == 0
    finally:
        gc.enable()
