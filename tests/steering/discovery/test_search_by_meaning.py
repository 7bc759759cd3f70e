"""Search by meaning: the model reads the query; features ranked by their mean activation over
its steerable positions relative to their typical maximum. The reference encodes the model's
hidden states (Hugging Face's `output_hidden_states`) with the SAE math written out here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from steering import SaeAttachment, load_model
from steering.demo.toy import random_sae
from steering.discovery.catalog import Catalog
from steering.engine import Engine
from steering.errors import InvalidRequestError
from steering.frontend import FrontEnd
from steering.requests import SearchBy, TextRequest
from steering.sae.jumprelu import JumpReLUSAE

LAYER = 1
PLANTED = 13  # fires on the query's word "harbour" only, far above everything else
QUERY = "the old harbour"
TYPICAL = {"s": {PLANTED: 4.0, 2: 0.5, 3: 100.0}}


def _sae(model: Any, tokenizer: Any) -> JumpReLUSAE:
    """A random SAE whose feature PLANTED reads the direction of the hidden state at the
    query's last token, with a threshold only that token passes."""
    base = random_sae(64, 48, seed=5, threshold=0.02)
    ids = tokenizer(QUERY, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
    direction = hidden[-1] / hidden[-1].norm()
    w_enc, b_enc, threshold = base.W_enc.clone(), base.b_enc.clone(), base.threshold.clone()
    w_enc[:, PLANTED] = 10 * direction
    cos = (hidden[1:] @ direction) * 10
    threshold[PLANTED] = float((cos[-1] + cos[:-1].max()) / 2)  # only the last token passes
    b_enc[PLANTED] = 0.0
    return JumpReLUSAE(w_enc, base.W_dec, b_enc, base.b_dec, threshold)


@pytest.fixture(scope="module")
def front(model_folders: dict[str, Path]) -> Iterator[FrontEnd]:
    loaded = load_model(model_folders["gemma2"], dtype=torch.float32)
    sae = _sae(loaded.model, loaded.tokenizer)
    attachments = [SaeAttachment("s", sae, LAYER)]
    labels = {"s": {PLANTED: "ports and ships", 2: "the harbour wall", 5: "old harbour"}}
    catalog = Catalog(labels, typical_max=TYPICAL)
    frontend = FrontEnd(Engine.from_loaded(loaded, attachments), loaded.tokenizer, catalog=catalog)
    frontend.start()
    try:
        yield frontend
    finally:
        frontend.stop()


def _reference(front: FrontEnd, query: str) -> list[tuple[int, float]]:
    """(feature, score) of every feature with a positive mean, best first (ties: lower index)."""
    ids = front.tokenize(TextRequest(prompt=query))
    model, sae = front.engine.model, front.engine.hooks.attachments[0].sae
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    x = out.hidden_states[LAYER + 1][0].float()
    pre = x @ sae.W_enc.float() + sae.b_enc.float()
    f = torch.where(pre > sae.threshold.float(), pre, torch.zeros_like(pre))
    steerable = torch.tensor([t not in front.special_ids for t in ids])
    mean = f[steerable].sum(0) / steerable.sum()
    scores = [
        (i, float(m) / TYPICAL["s"].get(i, 1.0)) for i, m in enumerate(mean.tolist()) if m > 0
    ]
    return sorted(scores, key=lambda p: (-p[1], p[0]))


def _search(front: FrontEnd, query: str, by: SearchBy, **kw: Any) -> Any:
    return asyncio.run(front.search(query, by=by, **kw))


def test_activation_search_ranks_the_planted_feature_first_as_the_reference_does(
    front: FrontEnd,
) -> None:
    expected = _reference(front, QUERY)
    found = _search(front, QUERY, SearchBy.ACTIVATION, limit=20)
    assert found[0].feature == PLANTED and expected[0][0] == PLANTED
    assert [m.feature for m in found] == [i for i, _ in expected[:20]]
    assert [m.score for m in found] == pytest.approx([s for _, s in expected[:20]], rel=1e-4)
    assert all(m.found_by == "activation" and m.sae == "s" for m in found)
    assert (found[0].label, found[0].typical_max) == ("ports and ships", 4.0)
    assert all(m.score > 0 for m in found)


def test_both_puts_label_hits_first_and_lists_each_feature_once(front: FrontEnd) -> None:
    labels = _search(front, "harbour", SearchBy.LABELS)
    assert [(m.feature, m.found_by) for m in labels] == [(5, "labels"), (2, "labels")]
    both = _search(front, "harbour", SearchBy.BOTH, limit=6)
    by_activation = _search(front, "harbour", SearchBy.ACTIVATION, limit=6)
    assert both[:2] == labels
    rest = [m for m in by_activation if m.feature not in (2, 5)]
    assert both[2:] == rest[:4]
    assert len({m.feature for m in both}) == len(both) == 6


def test_an_activation_search_needs_a_steerable_query(front: FrontEnd) -> None:
    bos = front.tokenizer.decode([front.tokenizer.bos_token_id])
    with pytest.raises(InvalidRequestError) as err:
        _search(front, bos, SearchBy.ACTIVATION)
    assert err.value.field == "query"
    with pytest.raises(InvalidRequestError):
        _search(front, QUERY, SearchBy.ACTIVATION, sae="nope")
