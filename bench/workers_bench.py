"""Workers benchmark: what `posmon replay --workers N` gains over one process (docs/workers.md).

    python bench/workers_bench.py [--hours 96] [--seed 7] [--rounds 3] [--workers 2]

Prints figures, asserts nothing (the machines are shared and noisy: read medians, and ratios
measured in one run). On one simulated file (`posmon simulate --hours 96 --seed 7`, about
200,000 lines), without the model (`--no-model`) and with the shipped one, it runs plain
`posmon replay`, `--workers 1` and `--workers N` in turn, `--rounds` times, each a fresh
process as a user runs it, and gives for each:

- the median wall time of the command (start-up included) and of the replay itself (the
  summary's `time`, from the input's first line to the files in place);
- the median CPU time of the command and its workers (user and system): what the design costs
  beyond one scorer, which on a machine of two cores bounds the speed-up;
- the speed-up of `--workers N` over plain replay and over `--workers 1` (medians of the
  per-round ratios, on the wall time).

It also checks that `--workers 1` and `--workers N` wrote the same bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POSMON = [sys.executable, "-m", "monitor"]
# The summary's row `time  6.09 s (32,430 lines/s)`: the replay without the start-up.
_REPLAY_TIME = re.compile(r"time\W+([0-9.]+) s \(")


def simulate(path: Path, hours: float, seed: int) -> int:
    command = [*POSMON, "simulate", "--out", str(path), "--hours", str(hours), "--seed", str(seed)]
    subprocess.run(command, check=True, capture_output=True)
    with path.open("rb") as lines:
        return sum(1 for _ in lines)


def run_replay(events: Path, out: Path, flags: list[str]) -> tuple[float, float, float]:
    """One `posmon replay` in a fresh process: (wall s, replay s, CPU s of it and its workers)."""
    command = [*POSMON, "replay", str(events), "--alerts", str(out), *flags]
    printed = out.with_suffix(".out")
    with printed.open("w") as output:  # a file, not a pipe: waiting cannot block the writer
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # its CPU time and its workers'
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{printed.read_text()}")
    found = _REPLAY_TIME.search(printed.read_text())
    replay = float(found.group(1)) if found else float("nan")
    return wall, replay, usage.ru_utime + usage.ru_stime


def measure(events: Path, scratch: Path, model: bool, workers: int, rounds: int) -> None:
    base = [] if model else ["--no-model"]
    variants = {
        "plain replay": base,
        "--workers 1": [*base, "--workers", "1"],
        f"--workers {workers}": [*base, "--workers", str(workers)],
    }
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):  # in turn, so that a noisy moment touches every variant alike
        for name, flags in variants.items():
            out = scratch / f"{name.replace(' ', '').replace('-', '')}.jsonl"
            figures[name].append(run_replay(events, out, flags))
    one = (
        (scratch / "workers1.jsonl").read_bytes(),
        (scratch / "workers1.dlq.jsonl").read_bytes(),
    )
    many = f"workers{workers}"
    same = one == (
        (scratch / f"{many}.jsonl").read_bytes(),
        (scratch / f"{many}.dlq.jsonl").read_bytes(),
    )
    print(f"\n{'with the shipped model' if model else 'without the model (--no-model)'}:")
    print(f"  {'':<14}{'wall s':>8}{'replay s':>10}{'CPU s':>8}")
    for name, runs in figures.items():
        wall, replay, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"  {name:<14}{wall:>8.2f}{replay:>10.2f}{cpu:>8.2f}")
    n = figures[f"--workers {workers}"]
    plain, one_worker = figures["plain replay"], figures["--workers 1"]
    over_plain = statistics.median(p[0] / w[0] for p, w in zip(plain, n, strict=True))
    over_one = statistics.median(o[0] / w[0] for o, w in zip(one_worker, n, strict=True))
    replay_plain = statistics.median(p[1] / w[1] for p, w in zip(plain, n, strict=True))
    print(
        f"  speed-up of --workers {workers} (wall): {over_plain:.2f} over plain replay,"
        f" {over_one:.2f} over --workers 1 ({replay_plain:.2f} over plain replay on the"
        " replay's own time)"
    )
    print(f"  --workers 1 and --workers {workers} wrote the same bytes: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=96.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="posmon-workers-bench-") as scratch:
        events = Path(scratch) / "events.jsonl"
        lines = simulate(events, args.hours, args.seed)
        print(
            f"posmon replay --workers: {lines:,} lines ({args.hours:g} simulated hours, seed"
            f" {args.seed}), {args.rounds} rounds, {os.cpu_count()} CPUs, Python"
            f" {sys.version.split()[0]}"
        )
        for model in (False, True):
            measure(events, Path(scratch), model, args.workers, args.rounds)


if __name__ == "__main__":
    main()
