"""What every HTTP channel shares: the client, the classification of a response, links.

A channel (`monitor.paging.notification.Channel`) makes exactly one delivery attempt per `send`
and never raises for an HTTP or network failure: it *classifies* it into an `Outcome`, because
only the caller (`monitor.paging.delivery`) knows whether there is time left to retry. The
classification is the same for every HTTP channel:

- 2xx: `delivered`;
- 408, 429, 5xx, a refused connection, a reset, a timeout: `retry`, with `retry_after` taken from
  the `Retry-After` header (delta-seconds or an HTTP date) when the server sent one;
- anything else (400, 401, 403, 404, 413, a redirect...): `permanent`, with the status and a short
  excerpt of the body as the reason, because sending the same request again cannot succeed.

Secrets (routing keys, webhook URLs, signing keys) are `pydantic.SecretStr` in the channels and are
removed from every reason string, so they never reach a log line, a metric or a dead letter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx

from monitor.core.alerts import Alert
from monitor.paging.notification import DELIVERED, Outcome

RETRYABLE_STATUS = frozenset({408, 429})
EXCERPT_CHARS = 200
USER_AGENT = "posmon"


def http_client(
    timeout: float = 10.0, connect: float = 3.0, *, trust_env: bool = True
) -> httpx.Client:
    """The HTTP client channels share: explicit timeouts, no redirects (a redirect from an
    alerting endpoint is a configuration error, reported as permanent). The caller owns it and
    closes it; tests pass `trust_env=False` so a proxy setting can never capture loopback calls.
    """
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=connect),
        follow_redirects=False,
        trust_env=trust_env,
        headers={"User-Agent": USER_AGENT},
    )


def parse_retry_after(value: str | None, reference: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` value (RFC 9110: delta-seconds or an HTTP date).

    An HTTP date is measured against `reference` (the response's own `Date` header when it has
    one, so clock skew between us and the server does not matter). A date in the past gives 0;
    an unparseable value gives None (the caller falls back to its own backoff).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - reference).total_seconds())


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every non-empty secret value replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def classify_response(response: httpx.Response, secrets: Iterable[str] = ()) -> Outcome:
    """Classify a response by the module's rules (2xx / 408, 429, 5xx / anything else)."""
    status = response.status_code
    if 200 <= status < 300:
        return DELIVERED
    excerpt = redact(" ".join(response.text[:EXCERPT_CHARS].split()), secrets)
    reason = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
    if status in RETRYABLE_STATUS or status >= 500:
        return Outcome(
            "retry",
            reason,
            parse_retry_after(response.headers.get("Retry-After"), _response_date(response)),
        )
    return Outcome("permanent", reason)


def _response_date(response: httpx.Response) -> datetime:
    header = response.headers.get("Date")
    if header:
        try:
            date = parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            pass  # a malformed Date header: fall back to our clock
        else:
            return date if date.tzinfo else date.replace(tzinfo=UTC)
    return datetime.now(UTC)  # this is an edge module: reading the clock here is allowed


def post(
    client: httpx.Client,
    url: str,
    content: bytes,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> Outcome:
    """POST `content` as JSON once and classify what happened; never raises for HTTP failures.

    Transport failures (refused, reset, timeout, protocol error) are `retry`; an unsupported
    scheme or an invalid URL is a configuration error and `permanent`. Reasons name the
    exception type and message with every secret removed (an httpx message can carry the URL).
    """
    secrets = tuple(secrets)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    try:
        response = client.post(url, content=content, headers=all_headers)
    except httpx.UnsupportedProtocol as exc:
        return Outcome("permanent", redact(f"{type(exc).__name__}: {exc}", secrets))
    except httpx.RequestError as exc:
        return Outcome("retry", redact(f"{type(exc).__name__}: {exc}", secrets))
    except httpx.InvalidURL as exc:
        return Outcome("permanent", redact(f"InvalidURL: {exc}", secrets))
    return classify_response(response, secrets)


_RANK = {"delivered": 0, "permanent": 1, "retry": 2}


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The outcome that decides a multi-request notification: `retry` beats `permanent` beats
    `delivered`. A retry wins over a permanent failure so that one bad alert in a group cannot get
    its deliverable siblings parked: the group is retried until its deadline instead.
    """
    result = DELIVERED
    for outcome in outcomes:
        if _RANK[outcome.status] > _RANK[result.status]:
            result = outcome
    return result


def format_link(template: str, alert: Alert) -> str:
    """A link from a template with `{alert_id}`, `{detector}`, `{merchant_id}`, `{terminal_id}`
    placeholders, each value URL-quoted (ids are free text in the event contract)."""
    return template.format(
        alert_id=quote(alert.alert_id, safe=""),
        detector=quote(alert.detector, safe=""),
        merchant_id=quote(alert.merchant_id, safe=""),
        terminal_id=quote(alert.terminal_id, safe=""),
    )
