"""Steering hooks on tiny Gemma 2 / Gemma 3 / multimodal Gemma 3 models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import nn

from steering import (
    EditMode,
    FeatureEdit,
    LoadedModel,
    ModelError,
    SaeAttachment,
    StepTables,
    build_tables,
    decoder_layers,
    install_steering,
    steerable_positions,
)
from steering.demo.toy import random_sae
from tests.reference import reference_row, rel_error

PROMPTS = ["Tell me about the sea", "The forest", "Thank you so much, that is wonderful news!"]


def _d_model(lm: LoadedModel) -> int:
    return int(lm.model.config.get_text_config().hidden_size)


def _attachments(lm: LoadedModel) -> list[SaeAttachment]:
    """Three SAEs on two layers, two of them sharing layer 1."""
    d = _d_model(lm)
    return [
        SaeAttachment("a", random_sae(d, 128, seed=1, threshold=0.02), layer=1),
        SaeAttachment("b", random_sae(d, 64, seed=2, threshold=0.02), layer=1),
        SaeAttachment("c", random_sae(d, 96, seed=3, threshold=0.02), layer=2),
    ]


def _batch(lm: LoadedModel, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Left-padded batch with explicit position ids, as the engine will build it."""
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(list(prompts), return_tensors="pt", padding=True)
    position_ids = (enc.attention_mask.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": enc.input_ids,
        "attention_mask": enc.attention_mask,
        "position_ids": position_ids,
    }


def _logits(lm: LoadedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(**batch).logits


def _tables(
    lm: LoadedModel, hooks: Any, row_edits: Sequence[Sequence[FeatureEdit]], ids: torch.Tensor
) -> StepTables:
    return StepTables(build_tables(row_edits, hooks.saes), steerable_positions(ids, lm.special_ids))


class Recorder:
    """Records a layer's output as the hooks before it left it."""

    def __init__(self, module: nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        self.outputs.append((output[0] if isinstance(output, tuple) else output).detach().clone())


def _mixed_edits(lm: LoadedModel) -> list[list[FeatureEdit]]:
    return [
        [
            FeatureEdit("a", 5, EditMode.SET, 4.0),
            FeatureEdit("a", 17, EditMode.ABLATE, only_when_active=True),
            FeatureEdit("c", 3, EditMode.ADD, 2.5),
        ],
        [],
        [
            FeatureEdit("b", 7, EditMode.SCALE, 3.0, only_when_active=True),
            FeatureEdit("a", 5, EditMode.ADD, -1.0),
            FeatureEdit("c", 90, EditMode.SET, 6.0, only_when_active=True),
        ],
    ]


def test_no_edits_is_bit_identical_prefill_and_decode(tiny: LoadedModel) -> None:
    batch = _batch(tiny, PROMPTS)
    ids = batch["input_ids"]
    plain = _decode_run(tiny, batch, steps=3, step_tables=None)
    with install_steering(tiny.model, _attachments(tiny)) as hooks:
        unset = _decode_run(tiny, batch, steps=3, step_tables=None)
        empty = _decode_run(
            tiny,
            batch,
            steps=3,
            step_tables=lambda ids: _tables(tiny, hooks, [[]] * 3, ids),
            hooks=hooks,
        )
    for got in (unset, empty):
        assert len(got) == len(plain) == 4
        for a, b in zip(got, plain, strict=False):
            assert torch.equal(a, b)
    assert ids.shape[0] == 3


def _decode_run(
    lm: LoadedModel,
    batch: dict[str, torch.Tensor],
    steps: int,
    step_tables: Callable[[torch.Tensor], StepTables] | None,
    hooks: Any = None,
) -> list[torch.Tensor]:
    """Prefill then greedy decode with the KV cache; the logits of every forward."""
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    cache, out = None, []
    for _ in range(steps + 1):
        kwargs = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "cache": cache,
            "use_cache": True,
        }
        with torch.no_grad():
            if step_tables is None:
                result = lm.model(**kwargs)
            else:
                with hooks.step(step_tables(ids)):
                    result = lm.model(**kwargs)
        logits = result.logits[:, -1:]
        out.append(logits)
        cache = result.cache
        ids = logits.argmax(-1)
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
        pos = pos[:, -1:] + 1
    return out


def test_each_steered_layer_equals_the_full_reference(tiny: LoadedModel) -> None:
    batch = _batch(tiny, PROMPTS)
    layers = decoder_layers(tiny.model)
    raw = {layer: Recorder(layers[layer]) for layer in (1, 2)}
    row_edits = _mixed_edits(tiny)
    with install_steering(tiny.model, _attachments(tiny)) as hooks:
        steered = {layer: Recorder(layers[layer]) for layer in (1, 2)}
        with hooks.step(_tables(tiny, hooks, row_edits, batch["input_ids"])), torch.no_grad():
            tiny.model(**batch)
        saes = hooks.saes
    for recorder in (*raw.values(), *steered.values()):
        recorder.handle.remove()
    steerable = steerable_positions(batch["input_ids"], tiny.special_ids)
    for row, edits in enumerate(row_edits):
        by = {name: [e for e in edits if e.sae == name] for name in "abc"}
        # Layer 1 carries 'a' then 'b', applied in order; layer 2 carries 'c'.
        x1 = raw[1].outputs[0][row]
        want1 = reference_row(
            reference_row(x1, saes["a"], by["a"], steerable[row]),
            saes["b"],
            by["b"],
            steerable[row],
        )
        want2 = reference_row(raw[2].outputs[0][row], saes["c"], by["c"], steerable[row])
        assert rel_error(steered[1].outputs[0][row], want1) <= 1e-5
        assert rel_error(steered[2].outputs[0][row], want2) <= 1e-5
        if not edits:
            assert torch.equal(steered[1].outputs[0][row], x1)
    assert not torch.equal(steered[2].outputs[0][0], raw[2].outputs[0][0])


@pytest.mark.parametrize("only_when_active", [False, True])
@pytest.mark.parametrize("mode", list(EditMode))
def test_every_mode_end_to_end_matches_reference_hooks(
    gemma2: LoadedModel, mode: EditMode, only_when_active: bool
) -> None:
    """Every mode on Gemma 2; the mixed-edit tests above cover every family."""
    tiny = gemma2
    value = {EditMode.SET: 5.0, EditMode.ADD: 2.0, EditMode.SCALE: 3.0, EditMode.ABLATE: 0.0}[mode]
    edits = [
        FeatureEdit(name, i, mode, value, only_when_active)
        for name in "ac"
        for i in range(0, 40, 3)
    ]
    batch = _batch(tiny, PROMPTS[:1])
    attachments = _attachments(tiny)
    with install_steering(tiny.model, attachments) as hooks:
        with hooks.step(_tables(tiny, hooks, [edits], batch["input_ids"])):
            got = _logits(tiny, batch)
    steerable = steerable_positions(batch["input_ids"], tiny.special_ids)[0]
    want = _reference_logits(tiny, attachments, batch, [edits], [steerable])
    assert rel_error(got, want) <= 1e-5
    assert not torch.equal(got, _logits(tiny, batch))


def _reference_logits(
    lm: LoadedModel,
    attachments: list[SaeAttachment],
    batch: dict[str, torch.Tensor],
    row_edits: list[list[FeatureEdit]],
    steerables: list[torch.Tensor],
) -> torch.Tensor:
    """Logits with naive per-row full-SAE hooks (the reference)."""
    layers = decoder_layers(lm.model)

    def make(attachment: SaeAttachment) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            x = output[0] if isinstance(output, tuple) else output
            rows = [
                reference_row(
                    x[r],
                    attachment.sae,
                    [e for e in edits if e.sae == attachment.name],
                    steerables[r],
                )
                for r, edits in enumerate(row_edits)
            ]
            new = torch.stack(rows).to(x.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = [layers[a.layer].register_forward_hook(make(a)) for a in attachments]
    try:
        return _logits(lm, batch)
    finally:
        for handle in handles:
            handle.remove()


def test_batch_rows_equal_their_solo_runs(tiny: LoadedModel) -> None:
    row_edits = _mixed_edits(tiny)
    batch = _batch(tiny, PROMPTS)
    attachments = _attachments(tiny)
    unhooked = _logits(tiny, batch)
    with install_steering(tiny.model, attachments) as hooks:
        with hooks.step(_tables(tiny, hooks, row_edits, batch["input_ids"])):
            together = _logits(tiny, batch)
        for row, prompt in enumerate(PROMPTS):
            solo_batch = _batch(tiny, [prompt])
            with hooks.step(_tables(tiny, hooks, [row_edits[row]], solo_batch["input_ids"])):
                solo = _logits(tiny, solo_batch)[0]
            n = solo.shape[0]
            assert rel_error(together[row, -n:], solo) <= 1e-4
            assert torch.equal(together[row, -n:].argmax(-1), solo.argmax(-1))
            if not row_edits[row]:
                assert torch.equal(together[row], unhooked[row])  # bit for bit, in the same batch
            else:
                assert not torch.allclose(together[row], unhooked[row])


def test_steered_decode_matches_steered_prefill(tiny: LoadedModel) -> None:
    """Steering at (B, 1) decode steps agrees with steering the whole sequence at once."""
    row_edits = _mixed_edits(tiny)
    batch = _batch(tiny, PROMPTS)
    with install_steering(tiny.model, _attachments(tiny)) as hooks:
        tables = lambda ids: _tables(tiny, hooks, row_edits, ids)  # noqa: E731
        steps = _decode_run(tiny, batch, steps=4, step_tables=tables, hooks=hooks)
        generated = torch.cat([s.argmax(-1) for s in steps[:-1]], dim=1)
        full = {
            "input_ids": torch.cat([batch["input_ids"], generated], dim=1),
            "attention_mask": torch.cat(
                [batch["attention_mask"], torch.ones_like(generated)], dim=1
            ),
        }
        full["position_ids"] = (full["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        with hooks.step(tables(full["input_ids"])):
            whole = _logits(tiny, full)
    for k, step in enumerate(steps):
        position = batch["input_ids"].shape[1] - 1 + k
        assert rel_error(step[:, 0], whole[:, position]) <= 1e-4


def test_remove_restores_the_model_exactly(tiny: LoadedModel) -> None:
    batch = _batch(tiny, PROMPTS)
    before = _logits(tiny, batch)
    layers = decoder_layers(tiny.model)
    hooks = install_steering(tiny.model, _attachments(tiny))
    assert hooks.installed and len(layers[1]._forward_hooks) == 1
    with hooks.step(_tables(tiny, hooks, _mixed_edits(tiny), batch["input_ids"])):
        assert not torch.equal(_logits(tiny, batch), before)
    hooks.remove()
    assert not hooks.installed
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
    assert torch.equal(_logits(tiny, batch), before)


def test_step_tables_are_cleared_even_on_error(tiny: LoadedModel) -> None:
    batch = _batch(tiny, PROMPTS)
    before = _logits(tiny, batch)
    with install_steering(tiny.model, _attachments(tiny)) as hooks:
        with (
            pytest.raises(RuntimeError, match="boom"),
            hooks.step(_tables(tiny, hooks, _mixed_edits(tiny), batch["input_ids"])),
        ):
            raise RuntimeError("boom")
        assert torch.equal(_logits(tiny, batch), before)


def test_reconstruct_mode_replaces_the_residual(tiny: LoadedModel) -> None:
    d = _d_model(tiny)
    sae = random_sae(d, 128, seed=4, threshold=0.02)
    batch = _batch(tiny, PROMPTS[:2])
    layer = decoder_layers(tiny.model)[2]
    raw = Recorder(layer)
    edits = [[FeatureEdit("r", 3, EditMode.SET, 2.0)], []]
    with install_steering(
        tiny.model, [SaeAttachment("r", sae, layer=2, reconstruct=True)]
    ) as hooks:
        steered = Recorder(layer)
        with hooks.step(_tables(tiny, hooks, edits, batch["input_ids"])):
            _logits(tiny, batch)
    raw.handle.remove()
    steered.handle.remove()
    steerable = steerable_positions(batch["input_ids"], tiny.special_ids)
    x = raw.outputs[0]
    f = sae.encode(x)
    f[0, :, 3] = 2.0
    want = torch.where(steerable[..., None], sae.decode(f), x)
    assert rel_error(steered.outputs[0], want) <= 1e-5


# ---- installation ----------------------------------------------------------------------------


class _TupleLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (x * 2, None)


class _TupleModel(nn.Module):
    """A model whose layers return tuples, as transformers 4.x decoder layers did."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_TupleLayer(), _TupleLayer()])

    def get_decoder(self) -> nn.Module:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)[0]
        return x


def test_tuple_layer_outputs_are_handled() -> None:
    model, sae = _TupleModel(), random_sae(8, 16, seed=0)
    x = torch.randn(2, 3, 8)
    edits = [[FeatureEdit("s", 1, EditMode.SET, 3.0)], []]
    with install_steering(model, [SaeAttachment("s", sae, layer=0)]) as hooks:
        with hooks.step(StepTables(build_tables(edits, hooks.saes))):
            got = model(x)
    want0 = reference_row(x[0] * 2, sae, edits[0]) * 2
    assert rel_error(got[0], want0) <= 1e-5
    assert torch.equal(got[1], x[1] * 4)


def test_installation_errors_are_clear(tiny: LoadedModel) -> None:
    d = _d_model(tiny)
    n = len(decoder_layers(tiny.model))
    sae = random_sae(d, 16)
    cases = [
        ([SaeAttachment("s", sae, layer=n)], f"layer {n} is out of range"),
        ([SaeAttachment("s", sae, layer=0, site="mlp_out")], "site 'mlp_out' is not served"),
        (
            [SaeAttachment("s", random_sae(d + 1, 16), layer=0)],
            f"d_model {d + 1} does not match the model's {d}",
        ),
        ([SaeAttachment("s", sae, layer=0), SaeAttachment("s", sae, layer=1)], "used twice"),
    ]
    for attachments, message in cases:
        with pytest.raises(ModelError, match=message):
            install_steering(tiny.model, attachments)
    assert all(len(layer._forward_hooks) == 0 for layer in decoder_layers(tiny.model))
    with pytest.raises(ModelError, match="cannot find decoder layers"):
        install_steering(nn.Linear(2, 2), [])
