"""The retry policy (table tests, fake clock) and delivery against the local PagerDuty fake."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from monitor.channels import PagerDutyChannel
from monitor.paging.delivery import Delivered, Deliverer, Interrupted, Parked, Result, RetryPolicy
from monitor.paging.notification import Channel, Notification, Outcome
from tests.fake_services import ROUTING_KEY, FakeService, json_reply, make_alert, pagerduty, running

OK = Outcome("delivered", "ok")
BAD = Outcome("permanent", "HTTP 400: invalid event")
BUSY = Outcome("retry", "HTTP 503: busy")
REFUSED = "scripted: HTTP 400: invalid event"  # a Parked reason names the channel


def busy_for(seconds: float) -> Outcome:
    return Outcome("retry", "HTTP 429: throttled", retry_after=seconds)


class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class ScriptedChannel:
    """Answers from a script (the last answer repeats) and notes the clock at each attempt."""

    name = "scripted"
    supports_resolve = True

    def __init__(self, clock: FakeClock, *outcomes: Outcome) -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.sent_at: list[float] = []

    def send(self, notification: Notification) -> Outcome:
        self.sent_at.append(self.clock.now())
        return self.outcomes[min(len(self.sent_at), len(self.outcomes)) - 1]


class Timed:
    """Wraps a real channel, noting the fake clock at each attempt."""

    def __init__(self, channel: Channel, clock: FakeClock) -> None:
        self.channel, self.clock = channel, clock
        self.name, self.supports_resolve = channel.name, channel.supports_resolve
        self.sent_at: list[float] = []

    def send(self, notification: Notification) -> Outcome:
        self.sent_at.append(self.clock.now())
        return self.channel.send(notification)


def notification(n: int = 0) -> Notification:
    alert = make_alert(n)
    return Notification("trigger", (alert,), alert.alert_id)


def deliverer(
    clock: FakeClock,
    policy: RetryPolicy | None = None,
    *,
    stopping: Callable[[], bool] = lambda: False,
    poll_interval: float = 1.0,
) -> Deliverer:
    return Deliverer(
        policy or RetryPolicy(jitter=0.0),
        now=clock.now,
        sleep=clock.sleep,
        stopping=stopping,
        rng=random.Random(7),
        poll_interval=poll_interval,
    )


# --- RetryPolicy.next_delay -----------------------------------------------------------------------

DEFAULT = RetryPolicy()


@pytest.mark.parametrize(
    ("attempt", "outcome", "u", "expected"),
    [
        (1, BUSY, 0.0, 1.0),
        (2, BUSY, 0.0, 2.0),
        (3, BUSY, 0.0, 4.0),
        (6, BUSY, 0.0, 32.0),
        (7, BUSY, 0.0, 60.0),  # 64 capped at max_delay
        (10_000, BUSY, 0.0, 60.0),  # no float overflow
        (3, BUSY, 0.5, 3.6),  # jitter only shortens: 4 * (1 - 0.2 * 0.5)
        (7, BUSY, 0.5, 54.0),
        (1, busy_for(2.0), 0.0, 2.0),  # never earlier than Retry-After
        (1, busy_for(2.0), 0.9, 2.0),
        (3, busy_for(0.5), 0.0, 4.0),  # a shorter Retry-After does not cut the backoff
        (7, busy_for(300.0), 0.0, 300.0),  # honoured beyond max_delay
        (1, busy_for(0.0), 0.0, 1.0),
    ],
)
def test_next_delay(attempt: int, outcome: Outcome, u: float, expected: float) -> None:
    assert DEFAULT.next_delay(attempt, outcome, FixedRandom(u)) == pytest.approx(expected)


@given(
    attempt=st.integers(1, 200),
    retry_after=st.none() | st.floats(0, 10_000),
    seed=st.integers(0, 2**32),
    jitter=st.floats(0, 0.99),
)
def test_next_delay_bounds(
    attempt: int, retry_after: float | None, seed: int, jitter: float
) -> None:
    policy = RetryPolicy(jitter=jitter)
    delay = policy.next_delay(attempt, Outcome("retry", "x", retry_after), random.Random(seed))
    base = policy.backoff(attempt)
    assert delay >= base * (1 - jitter) - 1e-9
    assert delay <= max(base, retry_after or 0.0)
    assert delay >= (retry_after or 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": 100.0},  # above max_delay
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"deadline": -1.0},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- Deliverer with a fake clock ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "policy", "result", "sent_at"),
    [
        ([OK], RetryPolicy(jitter=0), Delivered(1), [0.0]),
        ([BAD], RetryPolicy(jitter=0), Parked(REFUSED, "permanent", 1), [0.0]),
        ([BUSY, BUSY, OK], RetryPolicy(jitter=0), Delivered(3), [0.0, 1.0, 3.0]),
        ([busy_for(2.0), OK], RetryPolicy(jitter=0), Delivered(2), [0.0, 2.0]),
        ([BUSY, BAD], RetryPolicy(jitter=0), Parked(REFUSED, "permanent", 2), [0.0, 1.0]),
        (
            [BUSY],  # forever: 0, 1, 3, 7; the next wait (8 s) would end past the 10 s deadline
            RetryPolicy(jitter=0, deadline=10.0),
            Parked("scripted: gave up after 4 attempts: HTTP 503: busy", "deadline", 4),
            [0.0, 1.0, 3.0, 7.0],
        ),
        (
            [busy_for(86_400.0)],  # asked to come back tomorrow: parked now, not after a day
            RetryPolicy(jitter=0),
            Parked("scripted: gave up after 1 attempts: HTTP 429: throttled", "deadline", 1),
            [0.0],
        ),
    ],
)  # fmt: skip
def test_deliverer(
    script: list[Outcome], policy: RetryPolicy, result: Result, sent_at: list[float]
) -> None:
    clock = FakeClock()
    channel = ScriptedChannel(clock, *script)
    assert deliverer(clock, policy).deliver(channel, notification()) == result
    assert channel.sent_at == sent_at


def test_deliverer_does_not_start_when_stopping() -> None:
    clock = FakeClock()
    channel = ScriptedChannel(clock, OK)
    result = deliverer(clock, stopping=lambda: True).deliver(channel, notification())
    assert result == Interrupted(0, None)
    assert channel.sent_at == []


def test_deliverer_stops_while_waiting_and_keeps_the_notification() -> None:
    clock = FakeClock()
    channel = ScriptedChannel(clock, BUSY)
    d = deliverer(clock, stopping=lambda: clock.t >= 1.5, poll_interval=0.25)
    assert d.deliver(channel, notification()) == Interrupted(2, "HTTP 503: busy")
    assert channel.sent_at == [0.0, 1.0]
    assert clock.t == 1.5  # noticed within one poll interval


def test_deliverer_wakes_at_once_on_a_stop_event() -> None:
    """The production wiring: `sleep=stop.wait`, `stopping=stop.is_set`."""
    clock = FakeClock()
    stop = threading.Event()
    real = Deliverer(
        RetryPolicy(initial=30.0, jitter=0), now=time.monotonic, sleep=stop.wait,
        stopping=stop.is_set, poll_interval=30.0,
    )  # fmt: skip
    results: list[Result] = []
    worker = threading.Thread(
        target=lambda: results.append(real.deliver(ScriptedChannel(clock, BUSY), notification()))
    )
    started = time.monotonic()
    worker.start()
    time.sleep(0.1)
    stop.set()
    worker.join(5)
    assert results == [Interrupted(1, "HTTP 503: busy")]
    assert time.monotonic() - started < 5


# --- Deliverer over real loopback HTTP ------------------------------------------------------------


def pd_channel(service: FakeService, client: httpx.Client) -> PagerDutyChannel:
    return PagerDutyChannel(SecretStr(ROUTING_KEY), client=client, url=f"{service.url}/v2/enqueue")


def test_accepted_is_one_attempt(pd: FakeService, client: httpx.Client) -> None:
    clock = FakeClock()
    assert deliverer(clock).deliver(pd_channel(pd, client), notification()) == Delivered(1)
    assert [r.status for r in pd.requests()] == [202]
    assert clock.sleeps == []


def test_invalid_is_exactly_one_attempt_then_parked(client: httpx.Client) -> None:
    clock = FakeClock()
    with running(pagerduty("a different key")) as service:
        result = deliverer(clock).deliver(pd_channel(service, client), notification())
        assert [r.status for r in service.requests()] == [400]
    assert isinstance(result, Parked)
    assert (result.cause, result.attempts) == ("permanent", 1)
    assert result.reason.startswith("pagerduty: HTTP 400")
    assert "routing_key" in result.reason
    assert ROUTING_KEY not in result.reason


def test_retry_after_is_honoured_on_the_policy_clock(pd: FakeService, client: httpx.Client) -> None:
    clock = FakeClock()
    pd.fail_next(1, status=429, retry_after="2")
    channel = Timed(pd_channel(pd, client), clock)
    result = deliverer(clock, RetryPolicy()).deliver(channel, notification())
    assert result == Delivered(2)
    assert [r.status for r in pd.requests()] == [429, 202]
    assert channel.sent_at[1] - channel.sent_at[0] >= 2.0


def test_retry_after_is_honoured_in_real_time(pd: FakeService, client: httpx.Client) -> None:
    pd.fail_next(1, status=429, retry_after="1")
    real = Deliverer(RetryPolicy(initial=0.01), now=time.monotonic, sleep=time.sleep)
    assert real.deliver(pd_channel(pd, client), notification()) == Delivered(2)
    first, second = pd.requests()
    assert (first.status, second.status) == (429, 202)
    assert second.at - first.at >= 1.0


def test_server_errors_are_retried_with_backoff(pd: FakeService, client: httpx.Client) -> None:
    clock = FakeClock()
    pd.fail_next(3, status=503)
    channel = Timed(pd_channel(pd, client), clock)
    assert deliverer(clock).deliver(channel, notification()) == Delivered(4)
    assert [r.status for r in pd.requests()] == [503, 503, 503, 202]
    assert channel.sent_at == [0.0, 1.0, 3.0, 7.0]


def test_a_long_outage_parks_at_the_deadline(client: httpx.Client) -> None:
    service = FakeService(pagerduty(ROUTING_KEY)).start()
    channel = pd_channel(service, client)
    service.down()
    clock = FakeClock()
    result = deliverer(clock, RetryPolicy(jitter=0, deadline=300)).deliver(channel, notification())
    assert isinstance(result, Parked)
    assert result.cause == "deadline"
    assert "ConnectError" in result.reason
    assert clock.t <= 300


def test_hundreds_of_alerts_through_an_outage_each_delivered_once(
    pd: FakeService, client: httpx.Client
) -> None:
    """PagerDuty is down for a while, then throttles and fails a few requests, while 8 workers
    deliver 300 alerts: every alert gets exactly one accepted event, and no request for an alert
    follows its acceptance."""
    alerts = 300
    pd.down()
    pending: queue.Queue[Notification] = queue.Queue()
    for n in range(alerts):
        pending.put(notification(n))
    results: list[Result] = []
    lock = threading.Lock()
    policy = RetryPolicy(initial=0.02, max_delay=0.2, deadline=60.0)

    def work(seed: int) -> None:
        d = Deliverer(policy, now=time.monotonic, sleep=time.sleep, rng=random.Random(seed))
        channel = pd_channel(pd, client)
        while True:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            result = d.deliver(channel, item)
            with lock:
                results.append(result)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    time.sleep(0.8)  # an outage: every connection refused
    pd.script(
        *[json_reply(503, {"status": "unavailable"}) for _ in range(10)],
        *[json_reply(429, {"status": "throttled"}, ("Retry-After", "0")) for _ in range(10)],
    )
    pd.up()
    for w in workers:
        w.join(60)

    assert len(results) == alerts
    assert all(isinstance(r, Delivered) for r in results)
    assert sum(isinstance(r, Delivered) and r.attempts > 1 for r in results) >= 8
    recorded = pd.requests()
    accepted = Counter(r.json()["dedup_key"] for r in recorded if r.status == 202)
    assert len(accepted) == alerts
    assert set(accepted.values()) == {1}
    last_accept = {r.json()["dedup_key"]: r.at for r in recorded if r.status == 202}
    assert all(r.at <= last_accept[r.json()["dedup_key"]] for r in recorded)
    assert Counter(r.status for r in recorded)[503] == 10
