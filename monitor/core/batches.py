"""What a loop reads: batches of raw messages from a `Source` (a file, a list, Kafka).

Both loops (scoring and dispatch) consume batches and tell the source when a batch is done, so
the offset bookkeeping of a broker stays behind this seam.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Batch:
    """Messages to handle, by partition, and the position to commit once they are handed on.

    `active` names the partitions that hold the watermark back (None: every partition seen, as
    in a replay, or none assigned yet);
    a source lists every assigned partition but those idle (caught up and quiet for a while),
    so an idle partition cannot stall the others, and an empty `active` (all idle) lets the
    watermark reach the newest event time.

    Where the messages came from, when the source knows: `offsets` gives, per partition, the
    offset of each message of its chunk (dead letters carry these coordinates), and
    `append_ms` the newest broker timestamp of each chunk (epoch milliseconds: the wall clock
    an event's time is checked against while streaming).

    A `fresh` batch says the source moved its partitions back (a new assignment): the state
    scored so far no longer matches what will be read, so the loop starts from new state (or a
    snapshot) before going on. `handed_on` gives, per partition, the offset below which every
    message was handed on before (the group's committed offset when it was assigned): their
    dead letters are not published twice while the state is rebuilt (nor its events forwarded
    again to the card stage). `held` names every partition the source holds (None: unknown, as
    in a replay): the scale-out's markers say which of them are idle.
    """

    chunks: Sequence[tuple[int, Sequence[bytes]]]
    position: object = None
    active: Collection[int] | None = None
    offsets: Mapping[int, Sequence[int]] | None = None
    append_ms: Mapping[int, int] | None = None
    fresh: bool = False
    handed_on: Mapping[int, int] | None = None
    held: Collection[int] | None = None

    def __len__(self) -> int:
        return sum(len(messages) for _, messages in self.chunks)


class Source(Protocol):
    def poll(self) -> Batch | None:
        """The next batch; an empty batch when nothing is there yet, None at the end of input."""

    def commit(self, batch: Batch) -> None:
        """Record that `batch` is done (its alerts and dead letters were handed on)."""
