"""The demo, and what the tests build locally, kept out of the core's API (`steering`).

`gemma`: the demo itself, Gemma 3 270M (from the package index's GGUF) with the JumpReLU SAE
this project trained for it (`steering.train.demo_sae`); the SAE and its labels ship in `sae/`.
`toy`: tiny random Gemma models, tokenizers and SAEs in the real on-disk formats, for tests and
benchmarks. `themes`: a tiny Gemma trained on themed sentences with an SAE whose features steer
it, for tests of steering that must run in seconds.
"""

from steering.demo.gemma import (
    DEMO_FEATURES,
    DEMO_PROMPT,
    DemoAssets,
    DemoFeature,
    default_demo_dir,
    prepare_demo,
)

__all__ = [
    "DEMO_FEATURES",
    "DEMO_PROMPT",
    "DemoAssets",
    "DemoFeature",
    "default_demo_dir",
    "prepare_demo",
]
