"""Edit validation and the sparse-delta math against the full encode/decode reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from steering import (
    EditMode,
    FeatureEdit,
    InvalidEditError,
    apply_full,
    apply_sparse_delta,
    build_tables,
    steerable_positions,
    validate_edits,
)
from steering.demo.toy import random_sae
from tests.reference import reference_row, rel_error

D_MODEL, D_SAE, T = 32, 96, 7
VALUES = {EditMode.SET: 3.5, EditMode.ADD: -1.25, EditMode.SCALE: 4.0, EditMode.ABLATE: 0.0}


@pytest.fixture
def sae():
    return random_sae(D_MODEL, D_SAE, seed=5, threshold=0.2)


def _active_features(sae, x: torch.Tensor) -> list[int]:
    """Features active at some positions and inactive at others (so the gate matters)."""
    f = sae.encode(x)
    fires = (f > 0).float().mean(dim=0)
    return [int(i) for i in torch.nonzero((fires > 0.2) & (fires < 0.8)).flatten()]


@pytest.mark.parametrize("only_when_active", [False, True])
@pytest.mark.parametrize("mode", list(EditMode))
def test_each_mode_equals_full_reference(sae, mode: EditMode, only_when_active: bool) -> None:
    x = torch.randn(1, T, D_MODEL)
    features = [*_active_features(sae, x[0])[:3], 0, 1]
    edits = [
        FeatureEdit("s", i, mode, VALUES[mode], only_when_active) for i in dict.fromkeys(features)
    ]
    table = build_tables([edits], {"s": sae})["s"]
    got = apply_sparse_delta(x, table)
    want = reference_row(x[0], sae, edits)
    assert rel_error(got[0], want) <= 1e-5
    changed = not torch.equal(got, x)
    assert changed  # every mode here moves the residual somewhere


def test_gate_leaves_inactive_positions_alone(sae) -> None:
    x = torch.randn(1, T, D_MODEL)
    feature = _active_features(sae, x[0])[0]
    active = sae.encode(x[0])[:, feature] > 0
    table = build_tables(
        [[FeatureEdit("s", feature, EditMode.SET, 9.0, only_when_active=True)]], {"s": sae}
    )
    got = apply_sparse_delta(x, table["s"])
    assert torch.equal(got[0, ~active], x[0, ~active])
    assert not torch.equal(got[0, active], x[0, active])


def test_feature_exactly_at_threshold_is_inactive(sae) -> None:
    """Strict '>': with pre == threshold the feature does not fire, so a gated edit is a no-op."""
    at_threshold = type(sae)(**(sae.params() | {"b_enc": sae.threshold.clone()}))
    x = torch.zeros(1, T, D_MODEL)
    gated = build_tables(
        [[FeatureEdit("s", 4, EditMode.SET, 9.0, only_when_active=True)]], {"s": at_threshold}
    )
    assert torch.equal(apply_sparse_delta(x, gated["s"]), x)
    ungated = build_tables([[FeatureEdit("s", 4, EditMode.SET, 9.0)]], {"s": at_threshold})
    assert (
        rel_error(apply_sparse_delta(x, ungated["s"])[0], 9.0 * at_threshold.W_dec[4].expand(T, -1))
        <= 1e-6
    )


def test_rows_with_different_edits_and_rows_without(sae) -> None:
    x = torch.randn(4, T, D_MODEL)
    row_edits = [
        [FeatureEdit("s", 3, EditMode.SET, 2.0), FeatureEdit("s", 10, EditMode.ABLATE)],
        [],
        [FeatureEdit("s", 10, EditMode.SCALE, -2.0, only_when_active=True)],
        [FeatureEdit("s", 50, EditMode.ADD, 0.5)],
    ]
    table = build_tables(row_edits, {"s": sae})["s"]
    assert table.rows.tolist() == [0, 2, 3]
    assert table.features.tolist() == [3, 10, 50]
    got = apply_sparse_delta(x, table)
    assert torch.equal(got[1], x[1])  # bit for bit
    for row in (0, 2, 3):
        assert rel_error(got[row], reference_row(x[row], sae, row_edits[row])) <= 1e-5


def test_no_edits_builds_no_table(sae) -> None:
    assert build_tables([[], []], {"s": sae}) == {}


def test_several_saes_get_one_table_each(sae) -> None:
    other = random_sae(D_MODEL, 40, seed=9)
    tables = build_tables(
        [[FeatureEdit("a", 1, EditMode.SET, 1.0)], [FeatureEdit("b", 39, EditMode.ADD, 1.0)]],
        {"a": sae, "b": other},
    )
    assert {k: v.rows.tolist() for k, v in tables.items()} == {"a": [0], "b": [1]}
    assert tables["b"].w_enc.shape == (D_MODEL, 1) and tables["b"].w_dec.shape == (1, D_MODEL)


def test_special_positions_are_not_steered(sae) -> None:
    ids = torch.tensor([[0, 0, 2, 17, 18, 5, 19], [2, 11, 12, 13, 14, 15, 16]])
    steerable = steerable_positions(ids, torch.tensor([0, 1, 2, 5]))
    assert steerable.tolist()[0] == [False, False, False, True, True, False, True]
    x = torch.randn(2, T, D_MODEL)
    edits = [FeatureEdit("s", 4, EditMode.SET, 5.0)]
    got = apply_sparse_delta(x, build_tables([edits, edits], {"s": sae})["s"], steerable)
    assert torch.equal(got[~steerable], x[~steerable])
    for row in range(2):
        assert rel_error(got[row], reference_row(x[row], sae, edits, steerable[row])) <= 1e-5


def test_bfloat16_residual_keeps_its_dtype_and_unedited_rows(sae) -> None:
    x = torch.randn(2, T, D_MODEL).bfloat16()
    table = build_tables([[FeatureEdit("s", 4, EditMode.SET, 5.0)], []], {"s": sae})["s"]
    got = apply_sparse_delta(x, table)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got[1], x[1])
    want = reference_row(x[0], sae, [FeatureEdit("s", 4, EditMode.SET, 5.0)])
    assert rel_error(got[0].float(), want) <= 1e-2  # bf16 rounding of the result only


def test_full_path_with_error_term_matches_sparse(sae) -> None:
    x = torch.randn(3, T, D_MODEL)
    row_edits = [
        [FeatureEdit("s", 2, EditMode.SET, 3.0)],
        [],
        [FeatureEdit("s", 7, EditMode.SCALE, 2.0)],
    ]
    table = build_tables(row_edits, {"s": sae})["s"]
    sparse = apply_sparse_delta(x, table)
    full = apply_full(x, sae, table)
    assert rel_error(full, sparse) <= 1e-5


def test_full_reconstruction_drops_the_error_term(sae) -> None:
    x = torch.randn(2, T, D_MODEL)
    edits = [FeatureEdit("s", 2, EditMode.SET, 3.0)]
    table = build_tables([edits, []], {"s": sae})["s"]
    got = apply_full(x, sae, table, keep_error=False)
    f = sae.encode(x)
    f[0, :, 2] = 3.0
    assert rel_error(got, sae.decode(f)) <= 1e-6


def test_input_is_never_written(sae) -> None:
    x = torch.randn(2, T, D_MODEL)
    before = x.clone()
    table = build_tables([[FeatureEdit("s", 2, EditMode.SET, 3.0)], []], {"s": sae})["s"]
    apply_sparse_delta(x, table)
    apply_full(x, sae, table)
    assert torch.equal(x, before)


# ---- validation ---------------------------------------------------------------------------

WIDTHS = {"res": 100, "other": 10}


def test_valid_edits_pass() -> None:
    edits = [FeatureEdit("res", 99, EditMode.SET, 1e4), FeatureEdit("other", 0, EditMode.ABLATE)]
    assert validate_edits(edits, WIDTHS) == tuple(edits)


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (FeatureEdit("nope", 1, EditMode.SET, 1.0), "edits[1].sae", "unknown SAE 'nope'"),
        (FeatureEdit("res", 100, EditMode.SET, 1.0), "edits[1].feature", "out of range"),
        (FeatureEdit("res", -1, EditMode.SET, 1.0), "edits[1].feature", "out of range"),
        (FeatureEdit("res", 5, EditMode.SET, float("nan")), "edits[1].value", "finite"),
        (FeatureEdit("res", 5, EditMode.ADD, float("inf")), "edits[1].value", "finite"),
        (FeatureEdit("res", 5, EditMode.SCALE, 1e20), "edits[1].value", "at most"),
        (FeatureEdit("res", 5, EditMode.SET, -10001.0), "edits[1].value", "at most"),
        (FeatureEdit("res", 1, EditMode.ADD, 1.0), "edits[1].feature", "edited twice"),
        (FeatureEdit("res", 5, "set", 1.0), "edits[1].mode", "unknown edit mode"),  # type: ignore[arg-type]
    ],
)
def test_invalid_edits_name_the_field(edit: FeatureEdit, field: str, message: str) -> None:
    first = FeatureEdit("res", 1, EditMode.SET, 1.0)
    with pytest.raises(InvalidEditError, match=message) as err:
        validate_edits([first, edit], WIDTHS)
    assert err.value.field == field


def test_magnitude_cap_is_configurable() -> None:
    edit = FeatureEdit("res", 5, EditMode.SET, 50.0)
    validate_edits([edit], WIDTHS, max_abs_value=50.0)
    with pytest.raises(InvalidEditError, match="at most 10"):
        validate_edits([edit], WIDTHS, max_abs_value=10.0)


def test_same_feature_on_different_saes_is_fine() -> None:
    validate_edits(
        [FeatureEdit("res", 3, EditMode.SET, 1.0), FeatureEdit("other", 3, EditMode.SET, 1.0)],
        WIDTHS,
    )


def test_random_batches_match_reference(sae) -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        batch = int(torch.randint(1, 6, (1,), generator=gen))
        x = torch.randn(batch, T, D_MODEL, generator=gen)
        row_edits = []
        for _ in range(batch):
            k = int(torch.randint(0, 5, (1,), generator=gen))
            features = torch.randperm(D_SAE, generator=gen)[:k].tolist()
            modes = itertools.cycle(list(EditMode)[trial % 4 :] + list(EditMode)[: trial % 4])
            row_edits.append(
                [
                    FeatureEdit(
                        "s", f, next(modes), float(torch.randn(1, generator=gen)), bool(f % 2)
                    )
                    for f in features
                ]
            )
        tables = build_tables(row_edits, {"s": sae})
        got = apply_sparse_delta(x, tables["s"]) if tables else x
        for row in range(batch):
            assert rel_error(got[row], reference_row(x[row], sae, row_edits[row])) <= 1e-5
