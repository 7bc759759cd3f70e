"""Benchmarks of the steering server; each module runs with `python -m bench.<name>`."""
