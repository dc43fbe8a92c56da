"""How posmon talks to Kafka: the `kafka:` section of the configuration.

A plain model, importable without the Kafka client (`client.client_config` turns it into
kafka-python's keyword arguments). Secrets (`sasl_password`, `ssl_password`) are `SecretStr`:
masked in repr, str and JSON, and never written in the YAML: the configuration loader refuses
them there (`monitor.cli.settings`), so they come from `POSMON_KAFKA__SASL_PASSWORD` and
`POSMON_KAFKA__SSL_PASSWORD`.

Every timeout is bounded (docs/contract.md, "Commands", Durations): the Kafka protocol carries
them as 32-bit milliseconds, and a poll that waits for minutes would hold up a stop and trip
`/healthz`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from monitor.core.durations import Seconds, within

HOUR_MS = 3_600_000
PositiveMs = Annotated[int, Field(gt=0, le=HOUR_MS)]  # a timeout: at most an hour
PollMs = Annotated[int, Field(ge=0, le=60_000)]  # a wait inside the loop: at most a minute


class KafkaSettings(BaseModel):
    """How posmon talks to Kafka: the `kafka:` section of the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = "localhost:9092"  # comma-separated host:port list
    topic: str = "pos.events"
    group: str = "posmon"
    # Static group membership (KIP-345): a member that restarts with the same id gets its
    # partitions back at once instead of waiting out its old session. One id per process.
    group_instance_id: str | None = None
    alerts_topic: str = "posmon.alerts"
    # The risk team's verdicts (`posmon label`), read whole by every `posmon run` without a
    # group (docs/streaming.md, "Labels"); empty or null: no labels are read.
    labels_topic: str | None = "posmon.labels"
    # The scale-out's internal topic (docs/streaming.md, "Scale-out"; None: `<group>.cards`,
    # one per group, as Kafka Streams names its repartition topics): the merchant stage hands
    # the card stage its events there, keyed by card, with watermark markers; the card stage
    # reads it in a group of its own (None: `<group>-cards`). Partitions when posmon creates
    # it (None: 1 with the anomaly model, whose terminal and merchant features need every
    # request in one card member; 6 without).
    cards_topic: str | None = None
    cards_group: str | None = None
    cards_partitions: Annotated[int, Field(gt=0, le=10_000)] | None = None
    client_id: str = "posmon"
    session_timeout_ms: PositiveMs = 10_000
    heartbeat_interval_ms: PositiveMs = 3_000
    fetch_max_wait_ms: PollMs = 10
    # Bigger batches: fewer commits (500 gave 40k/s, 2000 57k/s).
    max_poll_records: Annotated[int, Field(gt=0, le=1_000_000)] = 2000
    poll_timeout_ms: PollMs = 100
    idle_partition_s: Annotated[Seconds, within(86400.0)] = 30.0
    rebuild: Literal["beginning", "committed"] = "beginning"
    request_timeout_ms: PositiveMs = 30_000
    delivery_timeout_ms: PositiveMs = 120_000
    max_block_ms: PositiveMs = 60_000
    # `posmon run` and `dispatch` wait this long for a first answer from the bootstrap servers
    # (logging each retry, /readyz 503), then exit 2; 0 means a single attempt.
    startup_timeout: Annotated[Seconds, within(86400.0)] = 60.0
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None

    @field_validator("labels_topic", mode="before")
    @classmethod
    def _no_labels(cls, value: object) -> object:
        """An empty name (`POSMON_KAFKA__LABELS_TOPIC=`) turns the labels off, as null does."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def cards_topic_name(self) -> str:
        """The card stage's topic."""
        return self.cards_topic or f"{self.group}.cards"

    @property
    def cards_group_id(self) -> str:
        """The card stage's consumer group."""
        return self.cards_group or f"{self.group}-cards"

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.security_protocol} needs sasl_mechanism, _username, _password")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(
                f"SASL settings given but security_protocol is {self.security_protocol}"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if self.delivery_timeout_ms < self.request_timeout_ms:
            raise ValueError("delivery_timeout_ms must be at least request_timeout_ms")
        return self
