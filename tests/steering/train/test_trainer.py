"""The demo SAE's trainer: the JumpReLU paper's pseudo-derivatives, a run that recovers a planted
sparse dictionary, the folding of the input scale, resuming, and the shipped file format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering import load_sae, save_sae
from steering.train.trainer import (
    TrainConfig,
    TrainingSAE,
    input_scale,
    jumprelu,
    step,
    train,
)

EPS = 0.1


def test_jumprelu_gradients_are_the_papers_pseudo_derivatives() -> None:
    z = torch.tensor([[0.5, 1.02, 1.53], [0.97, 0.2, 1.2]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.5], requires_grad=True)
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = jumprelu(z, theta, EPS)
    assert torch.equal(out, torch.tensor([[0.0, 1.02, 1.53], [0.0, 0.0, 0.0]]))
    out.backward(grad)
    # z: the gradient passes where the unit is open. θ: −(θ/ε)·K((z−θ)/ε)·g, K = 1{|u| < ½}:
    # z = 0.97 (u = −0.3), 1.02 (u = 0.2) and 1.53 (u = 0.3) fall inside the kernel.
    assert z.grad is not None and theta.grad is not None
    assert z.grad.tolist() == [[0.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    expected = [-(1.0 / EPS) * 4.0, -(1.0 / EPS) * 2.0, -(1.5 / EPS) * 3.0]
    assert theta.grad.tolist() == pytest.approx(expected)


def test_step_counts_open_units_and_moves_only_the_threshold() -> None:
    z = torch.tensor([[0.5, 1.02], [0.97, 1.5]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0], requires_grad=True)
    out = step(z, theta, EPS)
    assert out.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    (out * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    assert z.grad is None or not z.grad.any()  # no gradient reaches z through H
    assert theta.grad is not None
    # −(1/ε)·K((z−θ)/ε)·g: 0.97 and 1.02 fall inside the kernel, 0.5 and 1.5 do not.
    assert theta.grad.tolist() == pytest.approx([-(1 / EPS) * 3.0, -(1 / EPS) * 2.0])


def _planted(n: int = 12000, d: int = 64, k: int = 64, seed: int = 0) -> torch.Tensor:
    """Rows that are sparse sums of `k` unit directions (about 3 per row) plus an offset."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(k, d, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    on = torch.rand(n, k, generator=gen) < 3 / k
    strength = 1.0 + 2.0 * torch.rand(n, k, generator=gen)
    return (on * strength) @ directions + 0.5 * torch.randn(d, generator=gen)


CFG = TrainConfig(width=128, steps=400, batch=256, lr=3e-3, sparsity=0.01, seed=1)


def _fve(sae: object, x: torch.Tensor) -> tuple[float, float]:
    f = sae.encode(x)  # type: ignore[attr-defined]
    residual = (sae.decode(f) - x).pow(2).sum()  # type: ignore[attr-defined]
    total = (x - x.mean(dim=0)).pow(2).sum()
    return 1 - (residual / total).item(), (f > 0).float().sum(dim=-1).mean().item()


def test_training_recovers_a_sparse_planted_dictionary() -> None:
    torch.manual_seed(0)
    x = _planted()
    sae, scale = train(x[:10000], CFG, log=lambda line: None)
    fve, l0 = _fve(sae.folded(scale), x[10000:])
    assert fve > 0.7, fve
    assert 2 < l0 < 8, l0  # about 3 planted directions per row, not a dense code
    untrained = TrainingSAE(64, 128, CFG.init_threshold, torch.zeros(64)).folded(scale)
    assert _fve(untrained, x[10000:])[0] < 0.5


@pytest.mark.parametrize("per_dimension", [False, True])
def test_folding_the_input_scale_changes_nothing_but_units(per_dimension: bool) -> None:
    x = _planted(n=64)
    scale = torch.rand(64) + 0.1 if per_dimension else torch.tensor(0.37)
    sae = TrainingSAE(64, 128, 0.001, x.mean(dim=0) * scale)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.threshold.uniform_(0.0, 1.0)
        recon, _, z = sae(x * scale, EPS)
    folded = sae.folded(scale)
    assert torch.allclose(folded.decode(folded.encode(x)), recon / scale, atol=1e-4)
    assert torch.equal(folded.encode(x) > 0, z > sae.threshold)  # the same features fire
    norms = folded.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # unit rows, raw units


def test_standardized_inputs_have_unit_variance_per_dimension_in_sum() -> None:
    x = _planted() * torch.linspace(0.1, 100.0, 64)  # dimensions of very different spread
    scaled = x * input_scale(x, standardize=True)
    variances = scaled.var(dim=0)
    assert torch.allclose(variances, torch.full_like(variances, 1 / 64), rtol=1e-3)
    assert abs((scaled - scaled.mean(dim=0)).pow(2).sum(dim=-1).mean().item() - 1.0) < 1e-2


def test_an_interrupted_run_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _planted(n=2000)
    cfg = TrainConfig(width=64, steps=20, batch=64, lr=1e-3, sparsity=1e-3, seed=3)
    whole, _ = train(x, cfg, log=lambda line: None)
    ckpt = tmp_path / "checkpoint.pt"
    real_step, calls = torch.optim.Adam.step, []

    def interrupted(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 13:  # steps 11 and 12 are lost: the last checkpoint is step 10's
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(x, cfg, checkpoint=ckpt, every=10, log=lambda line: None)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert torch.load(ckpt)["step"] == 10
    resumed, _ = train(x, cfg, checkpoint=ckpt, every=10, log=lambda line: None)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_the_trained_sae_saves_as_gemma_scope_2_and_loads_back(tmp_path: Path) -> None:
    x = _planted(n=2000)
    sae, scale = train(x, TrainConfig(width=64, steps=5, batch=64), log=lambda line: None)
    folded = sae.folded(scale)
    loaded = load_sae(save_sae(folded, tmp_path / "sae"))
    assert (tmp_path / "sae" / "params.safetensors").is_file()
    assert torch.equal(loaded.encode(x), folded.encode(x))


def test_lambda_tuned_for_a_target_l0_settles_near_it() -> None:
    x = _planted()
    for target in (4.0, 12.0):
        tuned = {"sparsity": 0.01, "target_l0": target, "steps": 600, "tune_gain": 0.02}
        cfg = TrainConfig(**{**CFG.__dict__, **tuned})
        sae, scale = train(x[:10000], cfg, log=lambda line: None)
        _, l0 = _fve(sae.folded(scale), x[10000:])
        assert 0.6 * target < l0 < 1.5 * target, (target, l0)
        assert sae.sparsity > 0


def test_the_revival_loss_brings_dead_features_back() -> None:
    """A strong λ kills features for good; the pre-activation loss on features that stopped
    firing moves them back up to their thresholds."""
    x = _planted()
    dead = {}
    for revive in (0.0, 1.0):
        cfg = TrainConfig(**{**CFG.__dict__, "sparsity": 0.05, "revive": revive, "dead_window": 20})
        sae, scale = train(x[:10000], cfg, log=lambda line: None)
        fired = (sae.folded(scale).encode(x[10000:]) > 0).sum(dim=0)
        dead[revive] = (fired == 0).float().mean().item()
    assert dead[0.0] > 0.1 and dead[1.0] < dead[0.0] / 2, dead


def test_the_revival_loss_reaches_only_dead_features() -> None:
    sae = TrainingSAE(64, 128, 0.5, torch.zeros(64))
    z = torch.randn(32, 128)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[[3, 70]] = True
    sae.revival_loss(z, dead).backward()
    assert sae.threshold.grad is not None and sae.w_dec.grad is not None
    moved = sae.threshold.grad.nonzero().flatten().tolist()
    assert moved == [3, 70] and (sae.threshold.grad[moved] > 0).all()  # thresholds pushed down
    assert sae.w_dec.grad[~dead].abs().sum() == 0
