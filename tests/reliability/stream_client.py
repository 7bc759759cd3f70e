"""A client in a process of its own, for tests that kill it: it streams one request, prints
`first` after the first message, then keeps reading slowly until killed (or done).

    python -m tests.reliability.stream_client TARGET REQUEST_ID MAX_NEW_TOKENS
"""

from __future__ import annotations

import sys
import time

import grpc

from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc


def main(target: str, request_id: str, max_new_tokens: str) -> None:
    message = pb.GenerateRequest(
        prompt="A client that will be killed",
        request_id=request_id,
        sampling=pb.SamplingParams(max_new_tokens=int(max_new_tokens), ignore_eos=True),
    )
    with grpc.insecure_channel(target) as channel:
        for i, _ in enumerate(pb_grpc.SteeringServiceStub(channel).Generate(message)):
            if i == 0:
                sys.stdout.write("first\n")
                sys.stdout.flush()
            time.sleep(0.05)


if __name__ == "__main__":
    main(*sys.argv[1:4])
