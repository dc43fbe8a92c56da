"""Shared test settings. The machines are shared and noisy: no test depends on wall-clock speed."""

import os
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from monitor.channels.base import http_client
from tests.fake_services import ROUTING_KEY, FakeService, pagerduty, running

pytest_plugins = ["tests.broker"]

# `make test` is reproducible: the property tests draw the same examples on every run, so CI
# never fails on a case nobody can replay. `make soak` explores: fresh random examples, many more.
_common = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("posmon", _common, max_examples=50, derandomize=True)
settings.register_profile("soak", _common, max_examples=2000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "posmon"))


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
