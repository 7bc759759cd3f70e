"""Light Python client for the steering server (coming: see the README)."""
