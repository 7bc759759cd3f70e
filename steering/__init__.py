"""Steering core: Gemma Scope JumpReLU SAEs, per-request feature edits, hooks on Gemma layers.

Imports torch and transformers on first use of a name (a process that only checks its settings
never pays for them); never grpc, protobuf or prometheus (the server's job).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULE_OF = {
    "DEFAULT_MAX_ABS_VALUE": "steering.edits",
    "EditMode": "steering.edits",
    "FeatureEdit": "steering.edits",
    "validate_edits": "steering.edits",
    "InvalidEditError": "steering.errors",
    "ModelError": "steering.errors",
    "SaeFormatError": "steering.errors",
    "SteeringError": "steering.errors",
    "LoadedModel": "steering.models.gemma",
    "decoder_layers": "steering.models.gemma",
    "load_model": "steering.models.gemma",
    "FORMATS": "steering.sae.formats",
    "load_sae": "steering.sae.formats",
    "save_sae": "steering.sae.formats",
    "JumpReLUSAE": "steering.sae.jumprelu",
    "SaeAttachment": "steering.steer.hooks",
    "SteeringHooks": "steering.steer.hooks",
    "StepTables": "steering.steer.hooks",
    "install_steering": "steering.steer.hooks",
    "EditTable": "steering.steer.tables",
    "apply_full": "steering.steer.tables",
    "apply_sparse_delta": "steering.steer.tables",
    "build_tables": "steering.steer.tables",
    "steerable_positions": "steering.steer.tables",
}


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'steering' has no attribute {name!r}")


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
