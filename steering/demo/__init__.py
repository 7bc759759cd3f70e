"""What the demo and the tests build locally, kept out of the core's API (`steering`).

`toy`: tiny random Gemma models, tokenizers and SAEs in the real on-disk formats, for tests and
benchmarks. `themes`: the built-in demo, a tiny Gemma trained on themed sentences with an SAE
whose features steer it. Both are shipped (the server's `--demo` and `python -m bench` use them)
but neither is part of the steering library a user programs against.
"""

from steering.demo.themes import (
    DEMO_FEATURES,
    DEMO_PROMPTS,
    DEMO_VERSION,
    THEMES,
    DemoAssets,
    DemoFeature,
    build_demo,
    default_demo_dir,
)

__all__ = [
    "DEMO_FEATURES",
    "DEMO_PROMPTS",
    "DEMO_VERSION",
    "THEMES",
    "DemoAssets",
    "DemoFeature",
    "build_demo",
    "default_demo_dir",
]
