"""Shared test settings. The machines are shared and noisy: no test depends on wall-clock speed."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.broker"]

settings.register_profile("posmon", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("posmon")
