"""Shared test settings. The machines are shared and noisy: no test depends on wall-clock speed."""

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from monitor.channels.base import http_client
from tests.fake_services import ROUTING_KEY, FakeService, pagerduty, running

pytest_plugins = ["tests.broker"]

settings.register_profile("posmon", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("posmon")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client for the channel tests: short timeouts, no proxy from the environment."""
    with http_client(timeout=2.0, connect=1.0, trust_env=False) as c:
        yield c


@pytest.fixture
def pd() -> Iterator[FakeService]:
    """A local PagerDuty Events API v2 that expects `ROUTING_KEY`."""
    with running(pagerduty(ROUTING_KEY)) as service:
        yield service
