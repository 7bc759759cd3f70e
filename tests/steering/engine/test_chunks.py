"""Where prefill chunks end: the most tokens a step's cost allows, from the prompt alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from steering.engine.chunks import ChunkCosts


def _config(**text: int) -> SimpleNamespace:
    fields: dict[str, object] = dict(hidden_size=640, num_attention_heads=4, head_dim=256)
    fields |= dict(num_key_value_heads=1, intermediate_size=2048, num_hidden_layers=2) | text
    return SimpleNamespace(get_text_config=lambda: SimpleNamespace(**fields))


def test_keys_are_the_weights_per_token_over_one_keys_attention() -> None:
    costs = ChunkCosts.for_model(_config(), 512)
    # q, k, v, o projections and the gated MLP's three matrices, in multiply-adds per token,
    # over scores and values of one key on 4 heads of width 256.
    weights = 640 * 256 * (4 + 1 + 1 + 4) + 3 * 640 * 2048
    assert costs.keys == weights // (2 * 4 * 256)


@pytest.mark.parametrize("budget", [1, 7, 64, 512])
@pytest.mark.parametrize("start", [0, 1, 100, 3999])
def test_a_chunk_is_the_most_tokens_within_one_steps_cost(budget: int, start: int) -> None:
    costs = ChunkCosts(budget, keys=300, windows=(None, 64))
    size = costs.chunk(start, 10_000)
    brute = max(t for t in range(1, budget + 1) if t == 1 or costs.cost(t, start) <= costs.per_step)
    assert size == brute
    assert costs.chunk(start, 3) == min(3, brute)


def test_a_prompts_chunks_cover_it_and_shrink_as_keys_grow() -> None:
    costs = ChunkCosts.for_model(_config(), 512)
    sizes = costs.bounds(4000)
    assert sum(sizes) == 4000 and sizes[0] == 512
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True) and sizes[-2] < 512
    done = 0
    for size in sizes:
        assert costs.cost(size, done) <= costs.per_step
        done += size


def test_a_sliding_layer_pays_for_its_window_only() -> None:
    full = ChunkCosts.for_model(_config(), 512)
    sliding = ChunkCosts.for_model(
        _config(layer_types=["sliding_attention", "full_attention"], sliding_window=100), 512
    )
    assert full.windows == (None, None) and sliding.windows == (100, None)
    assert sliding.cost(50, 100) == sliding.cost(50, 0) + 50 * 2 * 100  # both hold 100 keys
    assert sliding.cost(50, 3000) - sliding.cost(50, 100) == 50 * 2900  # the window is full
    assert full.cost(50, 3000) - full.cost(50, 100) == 2 * 50 * 2900
