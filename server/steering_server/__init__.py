"""The steering server process: settings, preflight, the CLI, the app that loads, serves and
drains, metrics and logs. Each transport is an edge of its own (`grpc_api`) over the core's one
front end (`steering.frontend`), which does the work.
"""
