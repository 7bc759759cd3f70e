"""gRPC server for steered Gemma generation (coming: see the README)."""
