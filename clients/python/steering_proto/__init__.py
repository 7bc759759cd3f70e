"""The steering server's gRPC contract as Python: stubs generated from `proto/` by `make proto`.

One package that the server and the client both import (never edited by hand; `make proto-check`
fails when they are stale): `from steering_proto.v1 import steering_pb2, steering_pb2_grpc`.
"""
