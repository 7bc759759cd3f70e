"""The gRPC edge of the steering server: settings, proto <-> domain, servicer, interceptors,
metrics, health and the CLI. The work itself is the core's (`steering.frontend`)."""
