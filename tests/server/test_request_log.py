"""DescribeModel tells what a client needs; every finished call leaves one log line."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from steering_proto.v1 import steering_pb2 as pb
from steering_server.logs import REQUEST_LOGGER, JsonFormatter, RequestRecord
from tests.server.harness import ServerThread, edit, request


def test_describe_model_tells_context_chat_and_limits_in_force(server: ServerThread) -> None:
    d = server.stub.DescribeModel(pb.DescribeModelRequest())
    config = server.engine.model.config.get_text_config()
    assert d.model.context_length == config.max_position_embeddings
    assert d.model.chat  # the tiny tokenizer has a chat template
    s = server.settings
    assert d.limits.max_prompt_tokens == min(s.max_prompt_tokens, d.model.context_length - 1)
    assert (d.limits.max_active_rows, d.limits.max_batch_size) == (s.max_active_rows,) * 2
    assert (d.limits.max_stop_strings, d.limits.max_stop_string_chars) == (
        s.max_stop_strings,
        s.max_stop_string_chars,
    )


def test_describe_model_tells_the_kv_cache_allocated_at_startup(server: ServerThread) -> None:
    d = server.stub.DescribeModel(pb.DescribeModelRequest())
    config = server.engine.model.config.get_text_config()
    s = server.settings
    assert d.limits.max_edits_per_sae == s.max_edits_per_sae
    # Keys and values, per layer: its window (a sliding layer shorter than the slot) or the slot.
    slot = min(s.max_prompt_tokens + s.max_new_tokens, config.max_position_embeddings)
    window = config.sliding_window
    positions = sum(
        min(window, slot) if kind == "sliding_attention" else slot for kind in config.layer_types
    )
    per_position = 2 * config.num_key_value_heads * config.head_dim * 4  # float32
    assert d.limits.kv_cache_bytes == s.max_active_rows * positions * per_position > 0


def _records(caplog: pytest.LogCaptureFixture) -> list[RequestRecord]:
    return [r.request for r in caplog.records if r.name == REQUEST_LOGGER]  # type: ignore[attr-defined]


def test_a_finished_request_logs_one_line_without_its_text(
    gemma2_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    secret = "The secret sea of Ys"
    msg = request(secret, max_new_tokens=5, ignore_eos=True)
    msg.request_id = "req-42"
    last = gemma2_server.generate(msg)[-1]
    gemma2_server.wait_idle()
    (record,) = _records(caplog)
    assert (record.request_id, record.rpc, record.outcome) == ("req-42", "Generate", "ok")
    assert (record.prompt_tokens, record.completion_tokens) == (
        last.usage.prompt_tokens,
        last.usage.completion_tokens,
    )
    assert record.time_to_first_token_s is not None
    assert 0 < record.time_to_first_token_s <= record.duration_s
    line = next(r.getMessage() for r in caplog.records if r.name == REQUEST_LOGGER)
    assert "req-42" in line and "ok" in line and "completion_tokens=5" in line
    assert secret not in line and "Ys" not in line


def test_refused_and_anonymous_requests_are_logged_with_ids(
    gemma2_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    bad = request("Hi", edits=[edit("nope", 1, pb.EDIT_MODE_ADD, 1.0)])
    with pytest.raises(grpc.RpcError):
        gemma2_server.generate(bad)
    gemma2_server.generate(request("Hi", max_new_tokens=1))
    gemma2_server.generate(request("Hi", max_new_tokens=1))
    refused, first, second = _records(caplog)
    assert refused.outcome == "invalid_argument" and refused.time_to_first_token_s is None
    assert first.outcome == second.outcome == "ok"
    ids = {refused.request_id, first.request_id, second.request_id}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)  # assigned by the server, unique


def test_json_lines_carry_the_record() -> None:
    record = RequestRecord("r", "Generate", "cancelled", 7, 3, 0.25, 1.5)
    log_record = logging.LogRecord(REQUEST_LOGGER, logging.INFO, "", 0, record.text(), (), None)
    log_record.request = record
    line = json.loads(JsonFormatter().format(log_record))
    assert line["request_id"] == "r" and line["outcome"] == "cancelled"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 3)
    assert (line["time_to_first_token_s"], line["duration_s"]) == (0.25, 1.5)
    assert line["level"] == "INFO" and line["logger"] == REQUEST_LOGGER
