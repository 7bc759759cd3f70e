"""Continuous batching on one model: the engine (`engine`: add, abort, step), the running batch
(`batch`), one steered forward (`forward`), the static slot KV cache (`slot_cache`), the decode
step and its CUDA graphs (`decoder`), each row's state (`row`) and sampler (`sampling`), output
channels (`channel`) and plain stats (`stats`).

Imports: `steering.steer`, `steering.sae`, `steering.models` and the domain. Speaks token ids:
no text, no discovery, no transport.
"""

from steering.engine.engine import Engine, EngineConfig

__all__ = ["Engine", "EngineConfig"]
