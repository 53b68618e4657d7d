"""Durations read from the environment: defaults, valid values, and a clear error for bad ones."""

from __future__ import annotations

import pytest

from kernel.app import create_app
from kernel.cron.scheduler import SCHEDULES, schedules_for
from kernel.errors import ConfigError
from kernel.settings import Settings


def test_seconds_default_and_value() -> None:
    settings = Settings.from_env({"REVKERNEL_REDIS_TIMEOUT_S": " 2.5 "})
    assert settings.seconds("REVKERNEL_REDIS_TIMEOUT_S", 0.25) == 2.5
    assert settings.seconds("REVKERNEL_SCHEDULER_INTERVAL_S", 7.0) == 7.0


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf"])
def test_seconds_rejects_what_is_not_a_positive_duration(text: str) -> None:
    settings = Settings.from_env({"REVKERNEL_REDIS_TIMEOUT_S": text})
    with pytest.raises(ConfigError, match="REVKERNEL_REDIS_TIMEOUT_S must be a positive number"):
        settings.seconds("REVKERNEL_REDIS_TIMEOUT_S", 0.25)


def test_a_bad_redis_timeout_stops_the_app_before_it_serves() -> None:
    settings = Settings.from_env({"REVKERNEL_REDIS_TIMEOUT_S": "soon", "REDIS_URL": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ConfigError, match="REVKERNEL_REDIS_TIMEOUT_S"):
        create_app(settings)


def test_scheduler_interval_override() -> None:
    assert schedules_for(Settings.from_env({})) == SCHEDULES
    fast = schedules_for(Settings.from_env({"REVKERNEL_SCHEDULER_INTERVAL_S": "0.5"}))
    assert {s.every.total_seconds() for s in fast if s.every is not None} == {0.5}
    with pytest.raises(ConfigError, match="REVKERNEL_SCHEDULER_INTERVAL_S"):
        schedules_for(Settings.from_env({"REVKERNEL_SCHEDULER_INTERVAL_S": "fast"}))
