"""The partitioned design on a model of Kafka: N merchant and M card members equal one replay.

The events are split into partitions by Kafka's partitioner (murmur2 of the merchant); merchant
members in one group and card members in another get random assignments that change at random
(a rebalance restarts a member's state and reads its partitions again from the beginning, as
`KafkaSource` does; a member stalled with a batch in hand publishes it after the new owners'
first turns), poll random batch sizes in a random interleaving, and crash at random between a
publish and its commit. They run the real loop's functions (`score_batch` with a
`Handoff`, `score_cards`) on `Batch`es built as `KafkaSource` builds them (offsets, `held`,
`active`, `handed_on`), publish to an alerts log and to the partitions of a cards topic, and
commit. At the end every partition goes idle, as in a stream that falls quiet. Each alert id's
final version (the highest revision; compared without it) equals `posmon replay`'s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.core.alerts import Alert
from monitor.core.batches import Batch
from monitor.core.events import Event, decode
from monitor.scoring.handoff import (
    EVENTS,
    MARKER,
    MAX_RECORD_BYTES,
    Handoff,
    Markers,
    card_partition,
    unframe,
)
from monitor.scoring.model import ModelSlot, load_model
from monitor.scoring.pipeline import Stats, replay_messages, score_batch, score_cards
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from tests.builders import encode, event, final_states
from tests.test_properties import arrival_order
from tests.test_stages import _partition_of, busy_world


@dataclass
class Group:
    """A consumer group on a topic: committed offsets and who holds what."""

    partitions: int
    committed: dict[int, int] = field(default_factory=dict)
    owner: dict[int, int] = field(default_factory=dict)

    def held(self, member: int) -> set[int]:
        return {p for p, m in self.owner.items() if m == member}


@dataclass
class Member:
    """One consumer: its state (a scorer) and where it reads each held partition."""

    scorer: Scorer
    held: frozenset[int] = frozenset()
    position: dict[int, int] = field(default_factory=dict)
    handed_on: dict[int, int] = field(default_factory=dict)
    handoff: Handoff | None = None


class World:
    def __init__(
        self,
        lines: list[bytes],
        partitions: int,
        cards: int,
        policy: Policy,
        model: ModelSlot | None = None,
    ) -> None:
        self.policy, self.model = policy, model
        self.events: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        for line in lines:
            decoded = decode(line)
            key = decoded.merchant_id if type(decoded) is Event else "?"
            self.events[_partition_of(key, partitions)].append(line)
        self.cards: dict[int, list[bytes]] = {c: [] for c in range(cards)}
        self.alerts: list[Alert] = []
        self.merchant_group = Group(partitions)
        self.card_group = Group(cards)
        self.wanted = Scorer(policy, model, stage="card").wanted()

    # -- membership --------------------------------------------------------------------------

    def assign(self, group: Group, members: list[Member], rng: random.Random, stage: str) -> None:
        """A rebalance: a new random assignment; a member whose partitions change starts a new
        state and reads them from the beginning, up to the committed offsets (`handed_on`)."""
        for p in range(group.partitions):
            group.owner[p] = rng.randrange(len(members))
        for m, member in enumerate(members):
            held = frozenset(group.held(m))
            if held != member.held:
                self.restart(group, member, held, stage)

    def restart(self, group: Group, member: Member, held: frozenset[int], stage: str) -> None:
        if stage == "card":
            member.scorer = Scorer(self.policy, self.model, stage="card")
        else:
            member.scorer = Scorer(self.policy, stage="merchant")
        member.held = held
        member.position = dict.fromkeys(held, 0)
        member.handed_on = {p: group.committed.get(p, 0) for p in held}
        if member.handoff is not None:
            member.handoff.restart()

    # -- one turn of a member ----------------------------------------------------------------

    def poll(
        self, group: Group, member: Member, topic: dict[int, list[bytes]], size: int, idle: bool
    ) -> Batch:
        chunks, offsets, position = [], {}, {}
        for p in sorted(member.held):
            start = member.position[p]
            messages = topic[p][start : start + size]
            if messages:
                chunks.append((p, messages))
                offsets[p] = list(range(start, start + len(messages)))
                position[p] = start + len(messages)
        caught_up = all(member.position[p] == len(topic[p]) for p in member.held)
        return Batch(
            chunks,
            position,
            active=set() if idle and caught_up and not chunks else set(member.held),
            offsets=offsets,
            handed_on=dict(member.handed_on),
            held=member.held,
        )

    def score(
        self, group: Group, member: Member, size: int, *, idle: bool, card: bool
    ) -> tuple[Batch, list[Alert], list[tuple[int, bytes]]]:
        """Poll and score a batch: what its publish hands on."""
        topic = self.cards if card else self.events
        batch = self.poll(group, member, topic, size, idle)
        stats = Stats()
        if card:
            alerts, _ = score_cards(batch, member.scorer, stats)
        else:
            alerts, _ = score_batch(batch, member.scorer, stats, handoff=member.handoff)
        records = [] if member.handoff is None else member.handoff.take()
        return batch, alerts, [(c, value) for c, _key, value in records]

    def publish(self, alerts: list[Alert], records: list[tuple[int, bytes]]) -> None:
        self.alerts.extend(alerts)  # the alerts, then the records for the card stage
        for c, value in records:
            self.cards[c].append(value)

    def turn(
        self, group: Group, member: Member, size: int, *, idle: bool, crash: bool, card: bool
    ) -> None:
        batch, alerts, records = self.score(group, member, size, idle=idle, card=card)
        self.publish(alerts, records)
        assert isinstance(batch.position, dict)
        member.position.update(batch.position)
        if crash:  # published, not committed: the member starts anew from the committed offsets
            self.restart(group, member, member.held, "card" if card else "merchant")
            return
        for p, at in batch.position.items():
            group.committed[p] = max(group.committed.get(p, 0), at)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    partitions=st.integers(2, 6),
    cards=st.integers(1, 4),
    merchants=st.integers(1, 3),
    card_members=st.integers(1, 3),
    plan=st.integers(0, 2**32),
)
def test_merchant_and_card_members_give_replays_final_alerts(  # noqa: PLR0917
    seed: int, partitions: int, cards: int, merchants: int, card_members: int, plan: int
) -> None:
    lines = encode(arrival_order(busy_world(seed, minutes=40), seed))
    world = World(lines, partitions, cards, Policy())
    _play(world, merchants, card_members, random.Random(plan))
    expected, _ = replay_messages(lines, Scorer(Policy()))
    assert final_states(world.alerts) == final_states(expected.alerts)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    partitions=st.integers(2, 6),
    merchants=st.integers(1, 3),
    card_members=st.integers(1, 2),
    plan=st.integers(0, 2**32),
)
def test_with_the_model_on_one_cards_partition_the_scores_are_the_replays(
    seed: int, partitions: int, merchants: int, card_members: int, plan: int
) -> None:
    """The shipped model in the card stage, its topic of one partition (as posmon creates it
    with the model): the model's alerts and every other equal the replay's."""
    model = load_model(DEFAULT_MODEL)
    lines = encode(arrival_order(busy_world(seed, minutes=30), seed))
    world = World(lines, partitions, 1, Policy(), ModelSlot(live=model))
    _play(world, merchants, card_members, random.Random(plan))
    expected, _ = replay_messages(lines, Scorer(Policy(), ModelSlot(live=model)))
    assert final_states(world.alerts) == final_states(expected.alerts)


def _play(world: World, merchants: int, card_members: int, rng: random.Random) -> None:
    """Random rebalances (with a stalled member), turns and crashes, then a quiet end."""
    partitions, cards = world.merchant_group.partitions, world.card_group.partitions
    m_members = [
        Member(
            Scorer(world.policy, stage="merchant"), handoff=Handoff(world.wanted, cards, partitions)
        )
        for _ in range(merchants)
    ]
    c_members = [
        Member(Scorer(world.policy, world.model, stage="card")) for _ in range(card_members)
    ]
    world.assign(world.merchant_group, m_members, rng, "merchant")
    world.assign(world.card_group, c_members, rng, "card")
    total = sum(len(v) for v in world.events.values())
    for _ in range(total // 20 + 50):
        action = rng.random()
        if action < 0.03:
            # A member stalled with a batch in hand publishes it after the new owners' first
            # turns (its commit then fails: the partitions are no longer its own).
            stalled = rng.choice(m_members)
            _, late, late_records = world.score(
                world.merchant_group, stalled, rng.randint(1, 60), idle=False, card=False
            )
            world.assign(world.merchant_group, m_members, rng, "merchant")
            for member in m_members:
                world.turn(world.merchant_group, member, 30, idle=False, crash=False, card=False)
            world.publish(late, late_records)
        elif action < 0.06:
            world.assign(world.card_group, c_members, rng, "card")
        else:
            card = action >= 0.6
            world.turn(
                world.card_group if card else world.merchant_group,
                rng.choice(c_members if card else m_members),
                rng.randint(1, 80 if card else 60),
                idle=False,
                crash=rng.random() < 0.05,
                card=card,
            )
    # The stream falls quiet: every member reads to the end, its partitions go idle.
    for _ in range(3):
        for member in m_members:
            while any(member.position[p] < len(world.events[p]) for p in member.held):
                world.turn(world.merchant_group, member, 500, idle=True, crash=False, card=False)
            world.turn(world.merchant_group, member, 500, idle=True, crash=False, card=False)
        for member in c_members:
            while any(member.position[p] < len(world.cards[p]) for p in member.held):
                world.turn(world.card_group, member, 500, idle=True, crash=False, card=True)
            world.turn(world.card_group, member, 500, idle=True, crash=False, card=True)


def test_markers_hold_until_every_held_cards_partition_has_spoken() -> None:
    handoff = Handoff({"auth_request": ((0, 500),)}, partitions=2, sources=3)
    handoff.mark({0: 10, 1: 20}, idle=[2])
    records = handoff.take()
    assert [c for c, _, _ in records] == [0, 1]
    assert all(value.startswith(MARKER) and key is None for _, key, value in records)
    markers = Markers()
    markers.take(0, records[0][2][1:])
    assert markers.clock({0, 1}) == ({}, None)  # partition 1 has said nothing yet
    assert markers.clock({0}) == ({0: 10, 1: 20}, {0, 1})
    markers.take(1, records[1][2][1:])
    handoff.mark({0: 30, 1: 20}, idle=[2])
    markers.take(0, handoff.take()[0][2][1:])
    assert markers.clock({0, 1}) == ({0: 10, 1: 20}, {0, 1})  # the smallest over the two
    handoff.mark({0: 30, 1: 20}, idle=[2])
    assert handoff.take() == []  # nothing changed: no marker


def test_forwarded_events_go_to_their_cards_partition_as_read_in_bounded_batches() -> None:
    line = encode([event("auth_request", 0, card="tok_card_0001", amount=300)])[0]
    ev = decode(line)
    assert type(ev) is Event
    handoff = Handoff({"auth_request": ((0, 500),)}, partitions=4, sources=1)
    handoff.forward([ev, ev], [line, None], skip=set())  # None: handed on before
    [(c, key, value)] = handoff.take()
    assert (c, key, value[:1]) == (card_partition("tok_card_0001", 4), None, EVENTS)
    assert unframe(value[1:]) == [line]
    many = MAX_RECORD_BYTES // len(line) * 3
    handoff.forward([ev] * many, [line] * many, skip={0})
    records = handoff.take()
    assert len(records) >= 3
    assert all(len(v) <= MAX_RECORD_BYTES for _, _, v in records)
    assert sum(len(unframe(v[1:]) or []) for _, _, v in records) == many - 1


def test_the_card_stage_skips_and_counts_what_is_neither_an_event_nor_a_marker() -> None:
    """Anything a foreign producer writes to the cards topic: empty, unknown kinds, an event
    that fails decoding (a card number), markers that are not JSON, name partitions outside the
    topic or nest without end. Each is counted, none stops the stage or moves its clock."""
    pan = encode([event("auth_request", 0, card="4111111111111111", amount=300)])[0]
    hostile = [
        b"",
        b"X{}",
        EVENTS + len(b"not json").to_bytes(4, "big") + b"not json",
        EVENTS + len(pan).to_bytes(4, "big") + pan,
        EVENTS + b"\x00\x00\x01\x00{}",  # a frame longer than the record
        MARKER + b"{",
        MARKER + b'{"sources": 2, "frontiers": {"7": 1}, "idle": []}',
        MARKER + b'{"sources": 0, "frontiers": {}, "idle": []}',
        MARKER + b"[" * 100_000,
        MARKER + b'{"sources": "x", "frontiers": [], "idle": 3}',
    ]
    scorer, stats = Scorer(Policy(), stage="card"), Stats()
    batch = Batch([(0, hostile)], {0: len(hostile)}, active={0}, held={0})
    alerts, letters = score_cards(batch, scorer, stats)
    assert (alerts, letters, stats.invalid) == ([], [], len(hostile))
    assert scorer.markers is not None and scorer.markers.read == 0
    assert sum(scorer.consumed.values()) == 0
