"""Sweep on the demo's real Gemma 3 270M: the sea feature, on neutral prompts, is recommended at
a strength whose texts speak of the sea in most prompts and stay fluent."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from steering import LoadedModel
from steering.demo.gemma import DEMO_FEATURES, NEUTRAL_PROMPTS, DemoAssets
from steering.discovery.catalog import Catalog
from steering.discovery.labels import load_label_file
from steering.engine import Engine
from steering.frontend import FrontEnd, sweep
from steering.requests import FeatureRef, SweepRequest

pytestmark = pytest.mark.real_model

NEUTRAL = NEUTRAL_PROMPTS
SEA_WORDS = re.compile(
    r"\b(sea|seas|ocean|oceans|water|waters|wave|waves|ship|ships|boat|boats|beach|fish|"
    r"sail|sailing|sailor|sailors|naval|marine|shore|coast|tide|island|harbor|harbour)\b",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def front(gemma: LoadedModel, engine: Engine, demo: DemoAssets) -> Iterator[FrontEnd]:
    read = load_label_file(demo.sae_dir / "explanations.json", engine.d_sae_of[demo.sae_name])
    catalog = Catalog({demo.sae_name: read.labels}, typical_max={demo.sae_name: read.typical_max})
    frontend = FrontEnd(engine, gemma.tokenizer, catalog=catalog)
    frontend.start()
    yield frontend
    frontend.stop()


def test_a_sweep_of_the_sea_feature_recommends_a_strength_that_speaks_of_the_sea(
    front: FrontEnd,
) -> None:
    sea = DEMO_FEATURES["sea"]
    # The default strengths (0, 0.25, 0.5, 1, 1.5, 2, 4, 8 × the typical maximum, 355.4): the
    # concept peaks between 1x and 2x; without 1.5 the grid recommended 1x, where only 3 of the
    # 8 texts spoke of the sea.
    request = SweepRequest(FeatureRef(sea.sae, sea.feature), NEUTRAL, max_new_tokens=24)
    points = asyncio.run(sweep(front, request))
    for p in points:  # the table, for the record (pytest -s shows it)
        print(
            f"{p.strength:>5g} {p.value:>8.1f} concept={p.concept:8.2f} logprob={p.logprob:7.3f} "
            f"repetition={p.repetition:.2f} | {p.texts!r}"
        )
    recommendation = points[-1].recommendation
    assert recommendation is not None
    print(recommendation)
    assert recommendation.found, recommendation.reason
    chosen = next(p for p in points if p.strength == recommendation.strength)
    base = points[0]
    assert base.strength == 0
    with_sea = sum(bool(SEA_WORDS.search(text)) for text in chosen.texts)
    plain_sea = sum(bool(SEA_WORDS.search(text)) for text in base.texts)
    assert with_sea > len(NEUTRAL) / 2 and with_sea > plain_sea, chosen.texts
    assert chosen.logprob >= base.logprob - 1.0  # fluent: within 1 nat of the unsteered texts
    assert chosen.repetition < 0.5
