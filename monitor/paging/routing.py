"""The routing policy: which channels hear about an alert, and how its notifications are timed.

It is the `dispatch:` section of the YAML configuration, validated at start-up like the detection
policy (unknown keys are refused, durations are seconds or `30s`/`5m`/`4h`). The shape follows
Alertmanager: channels by name (Alertmanager's receivers), an ordered list of routes whose first
match wins unless it says `continue: true`, a default route for the rest, and inhibition rules.

Secrets never live in the YAML: a channel names the environment variable (`secret_env`) or the
file (`secret_file`) that holds its key, and a key that looks like a raw secret is refused, as
is a Slack `url` (an incoming-webhook URL is itself the credential) and a `url` that carries
credentials (`user:password@`, or a query parameter such as `token=`). A secret's variable
never starts with `POSMON_`: that prefix names settings (`POSMON_KAFKA__TOPIC`), and every
`POSMON_` variable is read as one.

Every timing is bounded (docs/contract.md, "Commands", Durations): a `group_wait` of `.inf` or
of a year would accept alerts and never send them, so it is refused when the configuration is
loaded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from monitor.core.alerts import Alert, Detector, Severity
from monitor.core.durations import PositiveInt, PositiveSeconds, Seconds, within

ChannelType = Literal["alertmanager", "pagerduty", "slack", "webhook", "console", "file"]
GroupField = Literal["detector", "severity", "merchant_id", "terminal_id"]
Label = Literal["detector", "severity", "merchant_id", "terminal_id", "card_id"]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]

# Keys that would carry a secret in clear text; they are refused wherever they appear.
RAW_SECRET_KEYS = frozenset(
    {"routing_key", "integration_key", "secret", "token", "password", "api_key"}
)
SETTINGS_PREFIX = "POSMON_"  # environment variables with it are settings, never secrets
# Query parameters that carry a credential in a URL (`?token=...`, Azure's `?code=...`).
SECRET_QUERY_PARAMETERS = frozenset(
    {"token", "access_token", "api_key", "apikey", "key", "secret", "password", "sig"}
    | {"signature", "auth", "code", "routing_key", "integration_key"}
)
HOUR, DAY = 3600.0, 86400.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ChannelConfig(_Strict):
    """One destination. The secret (PagerDuty routing key, Slack webhook URL, webhook HMAC key)
    is read at start-up from `secret_env` or `secret_file`; the YAML holds only where it is."""

    type: ChannelType
    url: str | None = None
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    secret_file: str | None = None
    link_template: str | None = None
    path: str | None = None

    @field_validator("secret_env")
    @classmethod
    def _not_a_setting(cls, name: str | None) -> str | None:
        if name is not None and name.upper().startswith(SETTINGS_PREFIX):
            raise ValueError(
                f"{name}: a secret's variable must not start with {SETTINGS_PREFIX}, which names"
                f" settings ({SETTINGS_PREFIX}<SECTION>__<KEY>); name it e.g."
                f" {name[len(SETTINGS_PREFIX) :]}"
            )
        return name

    @model_validator(mode="before")
    @classmethod
    def _no_raw_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            raw = sorted(RAW_SECRET_KEYS.intersection(data))
            if raw:
                raise ValueError(
                    f"{', '.join(raw)}: a secret must not be written in the configuration;"
                    " name the environment variable (secret_env) or the file (secret_file)"
                    " that holds it"
                )
        return data

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        if url is not None:
            _check_url(url)
        return url

    @model_validator(mode="after")
    def _fields_fit_type(self) -> ChannelConfig:
        if self.type == "slack" and self.url is not None:
            raise ValueError(
                "url: a Slack incoming-webhook URL is itself a secret and must not be written in"
                " the configuration; name the environment variable (secret_env) or the file"
                " (secret_file) that holds it"
            )
        has_secret = self.secret_env is not None or self.secret_file is not None
        if self.secret_env is not None and self.secret_file is not None:
            raise ValueError("give secret_env or secret_file, not both")
        if self.type in ("alertmanager", "webhook") and self.url is None:
            raise ValueError(f"a {self.type} channel needs a url")
        if self.type == "webhook" and not has_secret:
            raise ValueError("a webhook channel needs its signing key in secret_env or secret_file")
        if self.type == "pagerduty" and not has_secret:
            raise ValueError(
                "a pagerduty channel needs its routing key in secret_env or secret_file"
            )
        if self.type == "slack" and not has_secret:
            raise ValueError("a slack channel needs its webhook URL in secret_env or secret_file")
        if self.type == "file" and self.path is None:
            raise ValueError("a file channel needs a path")
        if self.path is not None and self.type != "file":
            raise ValueError(f"path applies to file channels only, not {self.type}")
        if self.link_template is not None:
            _check_link_template(self.link_template)
        return self


def _check_url(url: str) -> None:
    """Refuse a URL that carries a credential: a password before the host, or a query parameter
    named like a secret. The message names the part, never its value."""
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError(
            "url carries a password (user:password@); a secret must not be written in the"
            " configuration"
        )
    named = sorted(
        {
            name
            for name, _ in parse_qsl(parts.query, keep_blank_values=True)
            if name.lower().replace("-", "_") in SECRET_QUERY_PARAMETERS
        }
    )
    if named:
        raise ValueError(
            f"url carries a secret in its query ({', '.join(named)}=...); a secret must not be"
            " written in the configuration"
        )


LINK_FIELDS = ("alert_id", "detector", "merchant_id", "terminal_id")


def _check_link_template(template: str) -> None:
    try:
        template.format(**dict.fromkeys(LINK_FIELDS, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"link_template {template!r} is not valid ({exc!r});"
            f" placeholders: {', '.join('{' + f + '}' for f in LINK_FIELDS)}"
        ) from None


class Matcher(_Strict):
    """Which alerts a route or inhibition side applies to. A field left out matches everything;
    a list matches any of its values; all given fields must match. Empty matches every alert."""

    detectors: list[Detector] | None = None
    severities: list[Severity] | None = None
    merchant_ids: list[str] | None = None
    terminal_ids: list[str] | None = None

    def matches(self, alert: Alert) -> bool:
        return (
            (self.detectors is None or alert.detector in self.detectors)
            and (self.severities is None or alert.severity in self.severities)
            and (self.merchant_ids is None or alert.merchant_id in self.merchant_ids)
            and (self.terminal_ids is None or alert.terminal_id in self.terminal_ids)
        )


class StormLimit(_Strict):
    """At most `max_notifications` per `per` seconds on a route; the rest fold into one summary."""

    max_notifications: PositiveInt = 20
    per: Annotated[Seconds, within(DAY, positive=True)] = 300.0


class Route(_Strict):
    """Alerts matching `match` go to `channels`, grouped by `group_by` (Alertmanager timing)."""

    name: Name
    match: Matcher = Matcher()
    channels: Annotated[list[Name], Field(min_length=1)]
    group_by: list[GroupField] = ["detector", "merchant_id"]
    group_wait: Annotated[Seconds, within(HOUR)] = 30.0
    group_interval: Annotated[Seconds, within(DAY, positive=True)] = 300.0
    repeat_interval: PositiveSeconds = 4 * 3600.0
    storm_limit: StormLimit = StormLimit()
    continue_: bool = Field(False, alias="continue")

    def group_values(self, alert: Alert) -> tuple[str, ...]:
        return tuple(label_value(alert, field) for field in self.group_by)


class Inhibition(_Strict):
    """An alert matching `source` mutes the alerts matching `target` that agree with it on every
    `equal` label and whose `first_seen` lies within `hold` seconds of its event-time span
    (`first_seen` to `last_seen`); event time only, so a backlog mutes what live traffic would."""

    source: Matcher
    target: Matcher
    equal: list[Label] = ["terminal_id"]
    hold: Annotated[Seconds, within(DAY, positive=True)] = 900.0


def _default_inhibitions() -> list[Inhibition]:
    # One terminal outage makes one operations page, not one missing_reversal page per card.
    return [
        Inhibition(
            source=Matcher(detectors=["terminal_failure_spike"]),
            target=Matcher(detectors=["missing_reversal"]),
            equal=["terminal_id"],
        )
    ]


class DispatchConfig(_Strict):
    """The whole `dispatch:` section, checked for consistency at start-up."""

    channels: dict[Name, ChannelConfig] = {}
    routes: list[Route] = []
    default_route: Route | None = None
    inhibitions: list[Inhibition] = Field(default_factory=_default_inhibitions)

    @model_validator(mode="before")
    @classmethod
    def _name_default_route(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("default_route"), dict):
            default = data["default_route"]
            if "name" not in default:
                data = {**data, "default_route": {"name": "default", **default}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DispatchConfig:
        if not self.routes and self.default_route is None:
            raise ValueError("dispatch needs at least one route or a default_route")
        every = [*self.routes, *([self.default_route] if self.default_route else [])]
        names = [route.name for route in every]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"route names must be unique: {', '.join(duplicated)}")
        for route in every:
            unknown = [c for c in route.channels if c not in self.channels]
            if unknown:
                raise ValueError(
                    f"route {route.name!r} names unknown channel(s) {', '.join(unknown)};"
                    f" defined: {', '.join(sorted(self.channels)) or 'none'}"
                )
        if self.default_route is not None and self.default_route.match != Matcher():
            raise ValueError("default_route takes every unmatched alert: it has no match")
        return self

    def route(self, name: str) -> Route:
        for route in self.routes:
            if route.name == name:
                return route
        if self.default_route is not None and self.default_route.name == name:
            return self.default_route
        raise KeyError(name)


def routes_for(config: DispatchConfig, alert: Alert) -> list[Route]:
    """The routes an alert takes: routes are tried in order, the first match stops the search
    unless it has `continue: true`; with no match, the default route (if any)."""
    chosen: list[Route] = []
    for route in config.routes:
        if route.match.matches(alert):
            chosen.append(route)
            if not route.continue_:
                break
    if not chosen and config.default_route is not None:
        chosen.append(config.default_route)
    return chosen


def label_value(alert: Alert, label: Label) -> str:
    """The alert's value for a grouping or `equal` label (a missing card is the empty string)."""
    value = getattr(alert, label)
    return "" if value is None else str(value)
