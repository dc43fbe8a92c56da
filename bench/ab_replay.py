"""A/B replay benchmark: this working tree against another git revision, in one run.

    python bench/ab_replay.py --base REV [--events 500000] [--rounds 7]

Checks REV out into a temporary git worktree, simulates one stream, and replays it in fresh
processes pinned to one core, alternating A (REV) and B (this tree) `--rounds` times, so both see
the same moments of a shared machine's load. Prints each side's median time per event and the
per-round ratios B/A with their median: below 1.00 this tree is faster. With `--instructions`
it also counts the instructions of each side's replay with valgrind (callgrind), which do not
depend on the machine's load. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run in a child with PYTHONPATH set to one side's tree: replays the file and prints seconds.
# Both package layouts are understood (the one before `monitor/scoring/` and the current one).
CHILD = """
import gc, os, sys, time
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
try:
    from monitor.scoring.pipeline import replay_messages
    from monitor.scoring.policy import Policy
    from monitor.scoring.scorer import Scorer
except ImportError:
    from monitor.config import Policy
    from monitor.pipeline import replay_messages
    from monitor.scoring import Scorer
path, count = sys.argv[1], int(sys.argv[2])
with open(path, "rb") as f:
    lines = [line.rstrip(b"\\n") for _, line in zip(range(count), f)]
gc.collect(); gc.freeze(); gc.disable()
started = time.perf_counter()
replay_messages(lines, Scorer(Policy()))
print(time.perf_counter() - started)
"""


def _replay(tree: Path, events: Path, count: int, *, valgrind: bool = False) -> float:
    command = [sys.executable, "-c", CHILD, str(events), str(count)]
    if valgrind:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    done = subprocess.run(
        command, env={"PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True
    )
    if not valgrind:
        return float(done.stdout)
    collected = [line for line in done.stderr.splitlines() if "Collected" in line]
    return float(collected[-1].split()[-1])


def _instructions(tree: Path, events: Path, count: int) -> float:
    """Instructions per event of the replay alone (a run of 0 events is subtracted)."""
    full = _replay(tree, events, count, valgrind=True)
    empty = _replay(tree, events, 0, valgrind=True)
    return (full - empty) / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        default=0,
        help="also count instructions over the first N events (valgrind)",
    )
    args = parser.parse_args()
    from replay_bench import simulate  # noqa: PLC0415 (this tree's simulator, beside this file)

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            events = Path(tmp) / "events.jsonl"
            lines = simulate(args.events)
            events.write_bytes(b"".join(line + b"\n" for line in lines))
            n = len(lines)
            print(f"A = {args.base}, B = this tree; {n:,} simulated events, {args.rounds} rounds")
            a_times, b_times, ratios = [], [], []
            for _ in range(args.rounds):
                a_times.append(_replay(base, events, n))
                b_times.append(_replay(REPO, events, n))
                ratios.append(b_times[-1] / a_times[-1])
            a, b = statistics.median(a_times), statistics.median(b_times)
            print(f"  A: {a / n * 1e6:.2f} us/event (median), {n / a:,.0f} events/s")
            print(f"  B: {b / n * 1e6:.2f} us/event (median), {n / b:,.0f} events/s")
            each = ", ".join(f"{r:.3f}" for r in sorted(ratios))
            print(f"  B / A per round: {each}; median {statistics.median(ratios):.3f}")
            if args.instructions:
                count = min(args.instructions, n)
                a_ins = _instructions(base, events, count)
                b_ins = _instructions(REPO, events, count)
                print(
                    f"  instructions per event over {count:,} events (callgrind): A {a_ins:,.0f},"
                    f" B {b_ins:,.0f}, B / A {b_ins / a_ins:.4f}"
                )
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                check=True, capture_output=True,
            )  # fmt: skip


if __name__ == "__main__":
    main()
