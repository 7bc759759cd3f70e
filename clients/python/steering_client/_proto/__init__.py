"""Stubs generated from proto/ by `make proto` (never edited by hand; checked by `make proto-check`).

Import them as `from steering_client._proto.steering.v1 import steering_pb2, steering_pb2_grpc`.
"""
