"""Model benchmark: what the anomaly model costs the stream, and what its state costs per card.

    python bench/model_bench.py [--events 200000] [--runs 5] [--model DIR]

Prints figures, asserts nothing (shared, noisy machines: medians, and ratios of runs made back
to back in one process, on one pinned core). What it measures, on one simulated stream:

1. the replay without the model, with the shipped model, and with the model and the feature log
   (Parquet, to a temporary directory), each run in turn `--runs` times: throughput, and the
   median of the per-round ratios to the run without the model (the issue's target: at least
   0.8 with the model; the feature log at most 10 % slower than the model alone); a plain
   `json.loads` of the same lines as the yardstick of this machine's speed;
2. the model's parts per scored attempt: the features (`FeatureState.request`) and the model
   (`Model.score`: the forests and, when the model has one, the supervised stage) on batches of
   the replay's size;
3. bytes of feature state per active card (tracemalloc), with the cards' histories full; the
   terminals, merchants and the purchases held for labels (30 days) included.

`--model DIR` benchmarks another artifact (default: the shipped one).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from replay_bench import NullSink, pin_one_core, simulate

from monitor.core.events import Event, decode
from monitor.scoring.features import FeatureState
from monitor.scoring.model import Model, ModelSlot, load_model
from monitor.scoring.pipeline import MemorySource, Stats, run
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.streaming.featurelog import FeatureLog

SHIPPED = Path(__file__).resolve().parent.parent / "monitor" / "data" / "model"


def replay(lines: list[bytes], slot: ModelSlot | None, log: FeatureLog | None = None) -> float:
    scorer = Scorer(Policy(), slot)

    def write(_batch: object, _seconds: float) -> None:
        if log is not None and slot is not None:
            for rows in slot.take_rows():
                log.write(rows)

    started = time.perf_counter()
    run(MemorySource(lines), NullSink(), scorer, Stats(), on_batch=write)
    write(None, 0.0)
    if log is not None:
        log.close()
    return time.perf_counter() - started


def time_json(lines: list[bytes]) -> float:
    started = time.perf_counter()
    for raw in lines:
        try:  # noqa: SIM105 (contextlib.suppress would add its own cost to the figure)
            json.loads(raw)
        except ValueError:  # the simulator's malformed lines
            pass
    return time.perf_counter() - started


def requests_of(lines: list[bytes]) -> list[Event]:
    decoded = (decode(raw) for raw in lines)
    return [e for e in decoded if isinstance(e, Event) and e.kind == "auth_request"]


def part_costs(lines: list[bytes], model: Model, runs: int) -> tuple[float, float, int]:
    """Microseconds per attempt of the features and of the forests (medians)."""
    requests = sorted(requests_of(lines), key=lambda e: (e.t, e.event_id))
    feature_times, rows = [], []
    for _ in range(runs):
        state = FeatureState(cap=1_000_000)
        started = time.perf_counter()
        rows = [state.request(ev) for ev in requests]
        feature_times.append(time.perf_counter() - started)
    x = np.array(rows, dtype=np.float32)
    batch = 400  # about the attempts of one batch of 1,000 events
    forest_times = []
    for _ in range(runs):
        started = time.perf_counter()
        for i in range(0, len(x), batch):
            model.score(x[i : i + batch])
        forest_times.append(time.perf_counter() - started)
    n = len(requests)
    return (
        statistics.median(feature_times) / n * 1e6,
        statistics.median(forest_times) / n * 1e6,
        n,
    )


def bytes_per_card(lines: list[bytes]) -> tuple[float, int]:
    """Feature state per card (cards and terminals, divided by cards) after the stream."""
    requests = sorted(requests_of(lines), key=lambda e: (e.t, e.event_id))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    state = FeatureState(cap=1_000_000)
    for ev in requests:
        state.request(ev)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / max(1, len(state.cards)), len(state.cards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, default=SHIPPED, help="the artifact to measure")
    args = parser.parse_args()
    lines = simulate(args.events)
    model = load_model(args.model)
    stage = "" if model.stage is None else f", a supervised stage of {model.stage.trees} trees"
    print(
        f"posmon model benchmark: {len(lines):,} simulated events, model {model.version}"
        f" ({sum(f.trees for f in model.forests)} trees in {len(model.forests)} forests{stage}),"
        f" {pin_one_core()}, {args.runs} rounds"
    )
    gc.collect()
    gc.freeze()
    gc.disable()
    off, on, logged, plain = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            plain.append(time_json(lines))
            off.append(replay(lines, None))
            on.append(replay(lines, ModelSlot(live=model)))
            log = FeatureLog(Path(tmp) / f"round-{r}")
            logged.append(replay(lines, ModelSlot(live=model, keep_rows=True), log))
    n = len(lines)

    def rate(times: list[float]) -> str:
        return f"{n / statistics.median(times):>9,.0f} events/s"

    print("replay throughput (median of the rounds):")
    print(f"  json.loads of the lines only:        {rate(plain)}")
    print(f"  replay, no model:                    {rate(off)}")
    print(f"  replay, with the model:              {rate(on)}")
    print(f"  replay, model and feature log:       {rate(logged)}")
    ratios = [o / m for o, m in zip(off, on, strict=True)]
    print("  per-round ratios, model / no model: " + ", ".join(f"{r:.3f}" for r in ratios))
    model_ratio = statistics.median(ratios)
    log_ratio = statistics.median(m / g for m, g in zip(on, logged, strict=True))
    json_ratio = statistics.median(p / m for p, m in zip(plain, on, strict=True))
    print(
        f"  throughput with the model / without, median of per-round ratios: {model_ratio:.3f}"
        " (target >= 0.8)"
    )
    print(f"  throughput with the feature log / model alone: {log_ratio:.3f} (target >= 0.9)")
    print(f"  replay with the model / json.loads of the same lines: {json_ratio:.3f}")
    per_event = (statistics.median(on) - statistics.median(off)) / n * 1e6
    print(f"  the model's cost per event (all kinds): {per_event:.2f} us")
    features_us, forests_us, attempts = part_costs(lines, model, args.runs)
    print(
        f"per scored attempt ({attempts:,} attempts, {attempts / n:.0%} of events):"
        f" features {features_us:.2f} us, model {forests_us:.2f} us (batches of 400)"
    )
    per_card, cards = bytes_per_card(lines)
    print(
        f"feature state: {per_card:,.0f} bytes per active card"
        f" ({cards:,} cards; terminals, merchants and purchases held for labels included)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
