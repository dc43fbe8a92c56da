"""The stages `posmon run` runs (`run.stage`; docs/streaming.md, "Scale-out"): their Kafka clients
and their loops.

- `all`: one scorer over the events topic (exact only while one process reads every partition).
- `merchant`: the merchant stage over the events topic, handing the card stage its events and
  markers on `kafka.cards_topic`.
- `card`: the card stage over `kafka.cards_topic`, in the group `kafka.cards_group`.
- `both` (the default): the two in one process, the card stage's loop in a thread of its own
  (kafka-python's group members each need a polling thread), one /metrics for both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.cli.anomaly import model_slot
from monitor.cli.service import Service
from monitor.cli.settings import Settings
from monitor.scoring.handoff import Handoff
from monitor.scoring.pipeline import Sink
from monitor.scoring.scorer import Scorer
from monitor.streaming.labelstopic import KafkaLabels
from monitor.streaming.sink import KafkaSink
from monitor.streaming.source import KafkaSource
from monitor.streaming.topics import ensure_topics, partition_count

log = logging.getLogger("posmon.run")

# The cards topic's partitions when posmon creates it: one with the model (its terminal and
# merchant features need every request in one card member), a few without.
CARDS_WITH_MODEL = 1
CARDS_WITHOUT_MODEL = 6


class StageError(ValueError):
    """A setup the stages cannot run exactly (said before any loop starts)."""


@dataclass
class Clients:
    """The Kafka clients of the stages a process runs (None: a stage it does not run)."""

    source: KafkaSource | None = None  # the events topic
    sink: KafkaSink | None = None
    card_source: KafkaSource | None = None  # the cards topic
    card_sink: KafkaSink | None = None
    labels: KafkaLabels | None = None  # for the stage that learns: `all` or `card`
    sources: int = 0  # partitions of the events topic (0: not known yet)
    cards: int = 0  # partitions of the cards topic

    def close(self) -> None:
        for client in (self.source, self.sink, self.card_source, self.card_sink, self.labels):
            if client is not None:
                client.close()


def card_settings(settings: Settings) -> Settings:
    """The settings the card stage's loop runs with: the cards topic, in its own group."""
    kafka = settings.kafka.model_copy(
        update={"topic": settings.kafka.cards_topic_name, "group": settings.kafka.cards_group_id}
    )
    return settings.model_copy(update={"kafka": kafka})


def open_clients(settings: Settings, stop: threading.Event) -> Clients:
    """Create the cards topic if needed and open the clients of `run.stage`; raises
    `StageError` for a cards topic the model cannot run on."""
    kafka, stage = settings.kafka, settings.run.stage
    clients = Clients()
    learns = stage in ("all", "both", "card") and kafka.labels_topic is not None
    try:
        if stage != "all":
            clients.cards = _cards_topic(settings)
        if stage != "card":
            clients.source = KafkaSource(kafka)
            clients.sink = KafkaSink(kafka, stop=stop)
        if stage in ("both", "card"):
            cards = card_settings(settings).kafka
            clients.card_source = KafkaSource(cards)
            clients.card_sink = KafkaSink(cards, stop=stop)
        if stage in ("both", "merchant"):
            try:
                clients.sources = partition_count(kafka, kafka.topic, timeout_s=5.0)
            except TimeoutError:  # learnt at the first assignment (`Service._restart`)
                clients.sources = 0
        if learns and kafka.labels_topic is not None:
            clients.labels = KafkaLabels(kafka, kafka.labels_topic)
    except BaseException:
        clients.close()
        raise
    return clients


def _cards_topic(settings: Settings) -> int:
    kafka, model = settings.kafka, settings.model.enabled
    wanted = kafka.cards_partitions or (CARDS_WITH_MODEL if model else CARDS_WITHOUT_MODEL)
    ensure_topics(kafka, {kafka.cards_topic_name: wanted})
    count = partition_count(kafka, kafka.cards_topic_name)
    if model and count > 1 and settings.run.stage in ("both", "card"):
        raise StageError(
            f"{kafka.cards_topic_name} has {count} partitions: the anomaly model's terminal and"
            " merchant features need every request in one card member, so with the model the"
            " cards topic must have one partition (or run.stage: all for a single monitor, or"
            " --no-model)"
        )
    return count


def build_services(
    settings: Settings, clients: Clients, stop: threading.Event, also: Sequence[Sink] = ()
) -> tuple[Service, Service | None]:
    """The service whose loop the main thread runs (it serves the endpoints), and with
    `run.stage: both` the card stage's, to run in a thread; each also publishes to `also`
    (from its own thread). Raises `ModelLoadError`."""
    stage = settings.run.stage
    card: Service | None = None
    if stage in ("both", "card"):
        assert clients.card_source is not None and clients.card_sink is not None
        card = Service(
            card_settings(settings),
            clients.card_source,
            clients.card_sink,
            labels=clients.labels,
            also=also,
            stop=stop,
            stage="card",
            serve=stage == "card",
        )
        if stage == "card":
            return card, None
    assert clients.source is not None and clients.sink is not None
    if stage == "all":
        return Service(
            settings, clients.source, clients.sink, labels=clients.labels, stop=stop
        ), None
    if card is not None:
        wanted = card.scorer.wanted()
    else:  # the card stage runs elsewhere: the same settings say what it takes
        slot = model_slot(settings.model)
        wanted = Scorer(settings.policy, slot, stage="card").wanted()
    handoff = Handoff(wanted, clients.cards, clients.sources)
    merchant = Service(
        settings,
        clients.source,
        clients.sink,
        also=also,
        stop=stop,
        stage="merchant",
        handoff=handoff,
        card=card,
    )
    return merchant, card
