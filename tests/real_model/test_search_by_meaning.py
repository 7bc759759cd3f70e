"""Search by meaning on the demo: the real Gemma 3 270M reads the query, and the demo SAE's
features it activates most, relative to their typical maxima, are about what the query means."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from steering import LoadedModel, SaeAttachment, load_sae
from steering.demo.gemma import SAE_NAME, DemoAssets
from steering.discovery.catalog import Catalog
from steering.discovery.labels import load_label_file
from steering.engine import Engine
from steering.frontend import FrontEnd
from steering.requests import SearchBy

pytestmark = pytest.mark.real_model

SEA = set(
    [
        "sea",
        "seas",
        "ocean",
        "water",
        "waters",
        "naval",
        "ship",
        "ships",
        "wave",
        "waves",
        "boat",
        "boats",
        "shore",
        "coast",
        "marine",
        "sail",
        "sailing",
        "whale",
        "harbor",
    ]
)
FOOD = set(
    [
        "food",
        "foods",
        "eat",
        "eating",
        "meal",
        "meals",
        "bread",
        "cook",
        "cooking",
        "dinner",
        "breakfast",
        "fruit",
        "meat",
        "dish",
        "dishes",
        "recipe",
        "kitchen",
        "diet",
        "sugar",
        "vegetables",
        "butter",
        "milk",
        "cheese",
        "rice",
        "flour",
        "nutrition",
        "edible",
    ]
)


@pytest.fixture(scope="module")
def front(gemma: LoadedModel, demo: DemoAssets) -> Iterator[FrontEnd]:
    sae = load_sae(demo.sae_dir)
    read = load_label_file(demo.sae_dir / "explanations.json", sae.d_sae)
    catalog = Catalog(
        {SAE_NAME: read.labels}, typical_max={SAE_NAME: read.typical_max},
        frequency={SAE_NAME: read.frequency},
    )  # fmt: skip
    engine = Engine.from_loaded(gemma, [SaeAttachment(SAE_NAME, sae, demo.layer)])
    frontend = FrontEnd(engine, gemma.tokenizer, catalog=catalog)
    frontend.start()
    try:
        yield frontend
    finally:
        frontend.stop()


@pytest.mark.parametrize(("query", "words"), [("ocean", SEA), ("food", FOOD)])
def test_activation_search_finds_a_feature_about_the_query(
    front: FrontEnd, query: str, words: set[str]
) -> None:
    found = asyncio.run(front.search(query, by=SearchBy.ACTIVATION, limit=5))
    labels = [m.label for m in found]
    assert any(set(label.replace(",", " ").split()) & words for label in labels), labels
    assert all(m.found_by == "activation" for m in found)
