"""The gRPC edge: the SteeringService servicer (`servicer`), proto <-> domain conversion in one
place (`convert`), the auth and error interceptors with the one map of domain errors to status
codes (`interceptors`), and the `grpc.aio` server with health and reflection (`server`).

Imports the core's front end and the process's settings and metrics; no other transport.
"""
