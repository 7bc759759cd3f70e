"""Steering core: Gemma Scope JumpReLU SAEs, per-request feature edits, hooks on Gemma layers.

Imports torch and transformers; never grpc, protobuf or prometheus (the server's job).
"""

from steering.edits import (
    DEFAULT_MAX_ABS_VALUE,
    EditMode,
    EditTable,
    FeatureEdit,
    apply_full,
    apply_sparse_delta,
    build_tables,
    steerable_positions,
    validate_edits,
)
from steering.errors import InvalidEditError, ModelError, SaeFormatError, SteeringError
from steering.hooks import (
    SaeAttachment,
    SteeringHooks,
    StepTables,
    decoder_layers,
    install_steering,
)
from steering.model import LoadedModel, load_model
from steering.sae import JumpReLUSAE
from steering.sae_formats import FORMATS, load_sae, save_sae

__all__ = [
    "DEFAULT_MAX_ABS_VALUE",
    "FORMATS",
    "EditMode",
    "EditTable",
    "FeatureEdit",
    "InvalidEditError",
    "JumpReLUSAE",
    "LoadedModel",
    "ModelError",
    "SaeAttachment",
    "SaeFormatError",
    "SteeringError",
    "SteeringHooks",
    "StepTables",
    "apply_full",
    "apply_sparse_delta",
    "build_tables",
    "decoder_layers",
    "install_steering",
    "load_model",
    "load_sae",
    "save_sae",
    "steerable_positions",
    "validate_edits",
]
