"""The guide's counters are exported, at 0, from the very first scrape."""

from __future__ import annotations

import typing

from prometheus_client.parser import text_string_to_metric_families

from aiwm_agentd.controller.client import FailureKind
from aiwm_agentd.metrics import Metrics

GUIDE_COUNTERS = (
    "aiwm_connection_success_total",
    "aiwm_connection_failure_total",
    "aiwm_heartbeat_success_total",
    "aiwm_heartbeat_failure_total",
    "aiwm_token_refresh_total",
    "aiwm_config_update_total",
)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_every_guide_counter_has_a_sample_right_after_construction() -> None:
    names = {name for name, _ in _samples(Metrics())}
    missing = [name for name in GUIDE_COUNTERS if name not in names]
    assert missing == []


def test_failure_counters_have_one_zero_child_per_failure_kind() -> None:
    samples = _samples(Metrics())
    kinds = typing.get_args(FailureKind)
    assert len(kinds) >= 10
    for counter in ("aiwm_connection_failure_total", "aiwm_heartbeat_failure_total"):
        reasons = {dict(labels)["reason"]: value for (name, labels), value in samples.items() if name == counter}
        assert reasons == dict.fromkeys(kinds, 0.0)


def test_counting_a_failure_moves_only_its_reason() -> None:
    metrics = Metrics()
    metrics.connection_failure.labels("timeout").inc()
    metrics.heartbeat_failure.labels("unauthorized").inc(2)
    samples = _samples(metrics)
    assert samples[("aiwm_connection_failure_total", (("reason", "timeout"),))] == 1.0
    assert samples[("aiwm_connection_failure_total", (("reason", "network"),))] == 0.0
    assert samples[("aiwm_heartbeat_failure_total", (("reason", "unauthorized"),))] == 2.0
