"""Prometheus metrics: counters match what clients saw, gauges go back to 0, names follow rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

import grpc
import pytest

from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread, edit, request


def _delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_match_what_was_sent_and_received(gemma2_server: ServerThread) -> None:
    srv = gemma2_server
    srv.wait_idle()
    before = srv.metrics()
    prompt_tokens = completion_tokens = 0
    for n, edits in (
        (5, []),
        (7, [edit("gs1", 3, pb.EDIT_MODE_SET, 4.0), edit("gs2", 1, pb.EDIT_MODE_ABLATE)]),
    ):
        chunks = srv.generate(
            request("The sea was calm", edits=edits, max_new_tokens=n, ignore_eos=True)
        )
        prompt_tokens += chunks[-1].usage.prompt_tokens
        completion_tokens += chunks[-1].usage.completion_tokens
    with pytest.raises(grpc.RpcError):
        srv.generate(request("Hi", edits=[edit("gs1", 10**6, pb.EDIT_MODE_SET, 1.0)]))
    srv.wait_idle()
    after = srv.metrics()
    assert _delta(before, after, 'steering_requests_total{outcome="ok"}') == 2
    assert _delta(before, after, 'steering_requests_total{outcome="invalid_argument"}') == 1
    assert _delta(before, after, "steering_prompt_tokens_total") == prompt_tokens
    assert _delta(before, after, "steering_generated_tokens_total") == completion_tokens == 12
    assert _delta(before, after, 'steering_feature_edits_total{mode="set",sae="gs1"}') == 1
    assert _delta(before, after, 'steering_feature_edits_total{mode="ablate",sae="gs2"}') == 1
    assert _delta(before, after, "steering_time_to_first_token_seconds_count") == 2
    assert (
        _delta(before, after, "steering_inter_token_latency_seconds_count") == completion_tokens - 2
    )
    assert _delta(before, after, "steering_request_duration_seconds_count") == 3
    assert after["steering_requests_running"] == after["steering_requests_waiting"] == 0
    assert after["steering_hook_seconds_total"] > before.get("steering_hook_seconds_total", 0)
    assert after["steering_batch_size_count"] > before.get("steering_batch_size_count", 0)


def _exposition(srv: ServerThread) -> str:
    url = f"http://127.0.0.1:{srv.app.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


REQUIRED = {
    "steering_requests_total": "counter",
    "steering_prompt_tokens_total": "counter",
    "steering_generated_tokens_total": "counter",
    "steering_feature_edits_total": "counter",
    "steering_hook_seconds_total": "counter",
    "steering_time_to_first_token_seconds": "histogram",
    "steering_inter_token_latency_seconds": "histogram",
    "steering_request_duration_seconds": "histogram",
    "steering_step_duration_seconds": "histogram",
    "steering_batch_size": "histogram",
    "steering_requests_running": "gauge",
    "steering_cuda_graphs": "gauge",
    "steering_http_requests_total": "counter",
    "steering_requests_waiting": "gauge",
    "steering_discovery_requests_total": "counter",
    "steering_discovery_duration_seconds": "histogram",
    "steering_inspected_tokens_total": "counter",
    "steering_watched_features": "histogram",
    "steering_rules_fired_total": "counter",
    "steering_finish_reasons_total": "counter",
}


def test_names_follow_the_conventions(gemma2_server: ServerThread) -> None:
    text = _exposition(gemma2_server)
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    ours = {name: kind for name, kind in families.items() if name.startswith("steering_")}
    assert ours == REQUIRED
    assert all(name.endswith("_total") for name, kind in ours.items() if kind == "counter")
    labels = set(re.findall(r"(\w+)=\"", text))
    # Never a request id or a feature index.
    assert labels <= {"outcome", "sae", "mode", "le", "rpc", "action", "reason"}, labels


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian 'prometheus') is not installed"
)
def test_promtool_accepts_the_exposition(gemma2_server: ServerThread) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=_exposition(gemma2_server),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
