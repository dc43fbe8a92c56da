"""kafka-python's configuration for each role, and the errors of a publish the broker did not
acknowledge.

Holds the secrets in clear only inside the client configuration, which is never logged.
"""

from __future__ import annotations

from typing import Any, Literal

from monitor.streaming.settings import KafkaSettings

Role = Literal["consumer", "producer", "admin"]


def client_config(settings: KafkaSettings, role: Role) -> dict[str, Any]:
    """kafka-python keyword arguments for a consumer (in the settings' group), producer or admin.

    Holds the secrets in clear: pass it to the client and never log it.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",")],
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism is not None:
        assert settings.sasl_password is not None  # checked by the model
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(settings, name) is not None:
            config[name] = getattr(settings, name)
    if settings.ssl_password is not None:
        config["ssl_password"] = settings.ssl_password.get_secret_value()
    if role == "consumer":
        config |= {
            "group_id": settings.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": settings.session_timeout_ms,
            "heartbeat_interval_ms": settings.heartbeat_interval_ms,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "max_poll_records": settings.max_poll_records,
        }
    elif role == "producer":
        config |= {
            "acks": "all",
            "linger_ms": 5,
            "retries": 2_147_483_647,  # bounded by delivery_timeout_ms, as in the Java client
            "max_in_flight_requests_per_connection": 1,  # retries cannot reorder alert versions
            # Idempotence (kafka-python's default) wedges the producer once a batch expired in an
            # outage: the record sent again was never acknowledged after the broker came back
            # (measured on Tansu, 35 s); without it, at once. A retry may then duplicate a record:
            # alert ids make that harmless, as for any re-read.
            "enable_idempotence": False,
            "delivery_timeout_ms": settings.delivery_timeout_ms,
            "max_block_ms": settings.max_block_ms,
        }
    return config


class DeliveryFailed(RuntimeError):  # noqa: N818 - reads as the condition it reports
    """The broker did not acknowledge every record of a publish; the batch must not be committed."""


class PublishInterrupted(DeliveryFailed):
    """A stop came while a publish waited for the broker: nothing after it may be committed, and
    the records are published again when their input is read again."""
