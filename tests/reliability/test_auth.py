"""Scenario 13: authentication, as far as tests/server does not cover it already.

tests/server/test_errors.py checks that no token, a wrong token, a token with its case changed
and a token without its scheme are UNAUTHENTICATED for Generate and DescribeModel, and that
health stays open; tests/server/test_tls.py that a client certificate from another CA (or none)
fails the mutual-TLS handshake. Here: refused calls are counted like any other Generate call,
and a hostile body without a token is refused before it is even decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from steering_proto.v1 import steering_pb2 as pb
from tests.reliability.conftest import start_rig
from tests.reliability.rig import LogCapture, Rig, gen, read

TOKEN = "s3cret-token"
GOOD = [("authorization", f"Bearer {TOKEN}")]
BAD = [
    None,
    [("authorization", "Bearer wrong")],
    [("authorization", f"Bearer {TOKEN.upper()}")],
    [("authorization", f"Bearer {TOKEN} ")],
    [("authorization", f"Bearer  {TOKEN}")],
    [("authorization", TOKEN)],
    [("authorization", "Bearer ")],
]


@pytest.fixture(scope="module")
def auth_rig(
    logs: LogCapture, model_folders: dict[str, Path], sae_specs_reliability: list[str]
) -> Iterator[Rig]:
    rig = start_rig(
        logs, model_folders["gemma2"], sae_specs_reliability, metadata=GOOD, auth_tokens=[TOKEN]
    )
    yield rig
    rig.close()


def test_refused_tokens_are_unauthenticated_and_counted(auth_rig: Rig) -> None:
    for metadata in BAD:
        result = auth_rig.call(gen("Hi", max_new_tokens=2), metadata=metadata)
        assert result.outcome == "unauthenticated", (metadata, result.outcome)
        describe = auth_rig.stub.DescribeModel.with_call
        with pytest.raises(Exception) as err:
            describe(pb.DescribeModelRequest(), metadata=metadata, timeout=5)
        assert err.value.code().name == "UNAUTHENTICATED"  # type: ignore[attr-defined]
    good = auth_rig.call(gen("Hi", max_new_tokens=2, ignore_eos=True), metadata=GOOD)
    assert good.outcome == "ok" and len(good.ids) == 2


def test_an_undecodable_body_without_a_token_is_unauthenticated(auth_rig: Rig) -> None:
    generate = auth_rig.srv.channel.unary_stream(
        "/steering.v1.SteeringService/Generate", request_serializer=None
    )
    refused = read(generate(b"\x0a\x02\xff\xfe", timeout=10))
    auth_rig.record(refused.outcome)
    assert refused.outcome == "unauthenticated"
    with_token = read(generate(b"\x0a\x02\xff\xfe", timeout=10, metadata=GOOD))
    auth_rig.record(with_token.outcome)
    assert with_token.outcome == "invalid_argument"
