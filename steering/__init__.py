"""Steering core: Gemma Scope JumpReLU SAEs, per-request feature edits, hooks on Gemma layers.

Imports torch and transformers; never grpc, protobuf or prometheus (the server's job).
"""

from steering.edits import DEFAULT_MAX_ABS_VALUE, EditMode, FeatureEdit, validate_edits
from steering.errors import InvalidEditError, ModelError, SaeFormatError, SteeringError
from steering.models.gemma import LoadedModel, decoder_layers, load_model
from steering.sae.formats import FORMATS, load_sae, save_sae
from steering.sae.jumprelu import JumpReLUSAE
from steering.steer.hooks import SaeAttachment, SteeringHooks, StepTables, install_steering
from steering.steer.tables import (
    EditTable,
    apply_full,
    apply_sparse_delta,
    build_tables,
    steerable_positions,
)

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
