"""What an SAE is: JumpReLU parameters and their math (`jumprelu`), the on-disk formats behind
a registry (`formats`: Gemma Scope 1 and 2, SAELens), and raw steering vectors served as a linear
SAE (`vectors`).

Imports: `steering.errors` only (and torch, numpy, safetensors). Knows no model and no request.
"""

from steering.sae.formats import FORMATS, file_sha256, load_sae, sae_file, save_sae
from steering.sae.jumprelu import JumpReLUSAE
from steering.sae.vectors import load_vectors

__all__ = [
    "FORMATS",
    "JumpReLUSAE",
    "file_sha256",
    "load_sae",
    "load_vectors",
    "sae_file",
    "save_sae",
]
