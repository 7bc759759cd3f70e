"""Training a JumpReLU SAE, after Rajamanoharan et al. (2024), "Jumping Ahead: Improving
Reconstruction Fidelity with JumpReLU Sparse Autoencoders".

    f(x) = JumpReLU_θ(x W_enc + b_enc)        JumpReLU_θ(z) = z · H(z − θ)
    x̂(x) = f(x) W_dec + b_dec
    L(x) = ‖x − x̂(x)‖² + λ ‖f(x)‖₀            ‖f‖₀ = Σ_i H(z_i − θ_i)

H has no useful gradient, so the paper's straight-through estimators give θ pseudo-derivatives
through a rectangle kernel K(u) = 1{|u| < ½} of bandwidth ε:

    ∂JumpReLU_θ(z)/∂θ := −(θ/ε) K((z − θ)/ε)      ∂H(z − θ)/∂θ := −(1/ε) K((z − θ)/ε)

(and no gradient reaches z through H). As in the paper: inputs are scaled by fixed factors
folded into the parameters afterwards; W_dec's rows start as random unit vectors and W_enc as its
transpose, b_enc at 0, θ at 0.001, ε = 0.001; Adam with β₁ = 0; λ warms up linearly, the
learning rate warms up and decays at the end; W_dec's rows are kept at unit norm.

Departures, for a short CPU run on a model with massive activations:
- b_dec starts at the data mean (Gemma's residual stream has a large mean that a zero b_dec
  would take many thousands of steps to learn).
- With `standardize`, each input dimension is scaled by its own factor (1 / (σ_i √d)) instead
  of one scalar (E‖x‖² = 1). Gemma 3 270M's layer-6 residual keeps ~60% of its variance in two
  dimensions where reconstruction errors barely change the next-token loss; a plain L2 loss
  spends the dictionary on them. Folding divides W_dec by the factors and rescales each feature
  so its decoder row is a unit vector again: the folded SAE is an ordinary JumpReLU SAE in the
  residual's own units.
- With `revive` > 0, features that have not fired for `dead_window` steps get the pre-activation
  loss of Anthropic's JumpReLU recipe (January 2025 update; SAELens `pre_act_loss_coefficient`),
  revive · Σ_i ReLU(θ_i − z_i) ‖W_dec,i‖ over those features only, which moves their
  pre-activations up to their thresholds instead of leaving them dead for good.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steering.sae.jumprelu import JumpReLUSAE


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        grad_z = grad * (z > theta).to(z.dtype)
        pseudo = -(theta / ctx.eps) * _rectangle((z - theta) / ctx.eps)
        return grad_z, (grad * pseudo).sum(dim=0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        pseudo = -(1.0 / ctx.eps) * _rectangle((z - theta) / ctx.eps)
        return None, (grad * pseudo).sum(dim=0), None


def jumprelu(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    out: torch.Tensor = _JumpReLU.apply(z, theta, eps)  # type: ignore[no-untyped-call]
    return out


def step(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    out: torch.Tensor = _Step.apply(z, theta, eps)  # type: ignore[no-untyped-call]
    return out


@dataclass(frozen=True)
class TrainConfig:
    width: int = 2048
    steps: int = 3000
    batch: int = 2048
    lr: float = 7e-4
    sparsity: float = 1e-3  # λ, in the units of the scaled inputs (E‖x‖² = 1)
    bandwidth: float = 0.001
    init_threshold: float = 0.001
    lr_warmup: float = 0.05  # fractions of `steps`
    sparsity_warmup: float = 0.2
    lr_decay: float = 0.2
    # When set, λ is tuned while training runs so that L0 settles near this target: after λ's
    # warm-up and until `tune_until` of the steps, log λ moves by `tune_gain` × log(L0 / target)
    # per step (L0 averaged over recent steps); then λ stays fixed at the value reached.
    target_l0: float | None = None
    tune_until: float = 0.8
    tune_gain: float = 0.002
    standardize: bool = False  # one scale per input dimension instead of one scalar
    revive: float = 0.0  # the pre-activation loss's coefficient for dead features
    dead_window: int = 200  # steps without firing after which a feature counts as dead
    seed: int = 0


class TrainingSAE(nn.Module):
    def __init__(self, d_model: int, width: int, init_threshold: float, mean: torch.Tensor):
        super().__init__()
        w_dec = torch.empty(width, d_model)
        nn.init.kaiming_uniform_(w_dec)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.w_dec = nn.Parameter(w_dec)
        self.w_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.b_dec = nn.Parameter(mean.clone().float())
        self.threshold = nn.Parameter(torch.full((width,), init_threshold))
        self.sparsity = 0.0  # the λ training ended with (set by `train`)

    def forward(
        self, x: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, L0 per row with the estimator's gradient, pre-activations z)."""
        z = x @ self.w_enc + self.b_enc
        f = jumprelu(z, self.threshold, eps)
        return f @ self.w_dec + self.b_dec, step(z, self.threshold, eps).sum(dim=-1), z

    def revival_loss(self, z: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """Σ over dead features of ReLU(θ − z) ‖W_dec‖, averaged over rows."""
        gap = (self.threshold[dead] - z[:, dead]).relu()
        loss: torch.Tensor = (gap * self.w_dec[dead].norm(dim=1)).sum(dim=-1).mean()
        return loss

    @torch.no_grad()
    def constrain(self) -> None:
        """Unit-norm decoder rows, positive thresholds."""
        self.w_dec.div_(self.w_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        self.threshold.clamp_(min=1e-6)

    @torch.no_grad()
    def unit_row_gradient(self) -> None:
        """Drop the part of W_dec's gradient that would only change its rows' norms."""
        if self.w_dec.grad is not None:
            along = (self.w_dec.grad * self.w_dec).sum(dim=1, keepdim=True)
            self.w_dec.grad -= along * self.w_dec

    @torch.no_grad()
    def folded(self, scale: torch.Tensor | float) -> JumpReLUSAE:
        """The SAE for unscaled inputs x (it was trained on scale ⊙ x, `scale` a scalar or one
        factor per dimension): activations in the residual stream's own units, decoder rows
        unit vectors. Feature i's decoder row in raw units is W_dec,i / scale, of norm n_i;
        scaling its encoder side by n_i and its row by 1 / n_i changes nothing but its units."""
        s = torch.as_tensor(scale, dtype=torch.float32).expand(self.w_enc.shape[0])
        w_dec = self.w_dec.detach() / s
        n = w_dec.norm(dim=1)
        return JumpReLUSAE(
            W_enc=s[:, None] * self.w_enc.detach() * n,
            W_dec=w_dec / n[:, None],
            b_enc=self.b_enc.detach() * n,
            b_dec=self.b_dec.detach() / s,
            threshold=self.threshold.detach() * n,
        )


def input_scale(
    acts: torch.Tensor, sample: int = 65536, *, standardize: bool = False
) -> torch.Tensor:
    """The scalar s with E‖s·x‖² = 1, or with `standardize` the factors 1 / (σ_i √d) that give
    every dimension the same variance and the centred inputs E‖x − μ‖² = 1."""
    x = acts[:sample].float()
    if standardize:
        return 1.0 / (x.std(dim=0).clamp_min(1e-6) * math.sqrt(x.shape[-1]))
    return torch.tensor(1.0 / math.sqrt(x.pow(2).sum(dim=-1).mean().item()))


def save_atomically(obj: object, file: Path) -> None:
    """`torch.save` beside `file`, then renamed over it: an interrupted save leaves no half file."""
    torch.save(obj, file.with_suffix(".tmp"))
    file.with_suffix(".tmp").rename(file)


def _schedule(cfg: TrainConfig, i: int) -> tuple[float, float]:
    """(learning-rate factor, λ) at step i."""
    warm = max(1, round(cfg.lr_warmup * cfg.steps))
    decay_from = cfg.steps - round(cfg.lr_decay * cfg.steps)
    lr = min(1.0, (i + 1) / warm)
    if i >= decay_from:
        lr *= max(0.0, (cfg.steps - i) / max(1, cfg.steps - decay_from))
    sparsity = cfg.sparsity * min(1.0, (i + 1) / max(1, round(cfg.sparsity_warmup * cfg.steps)))
    return lr, sparsity


def train(
    acts: torch.Tensor,
    cfg: TrainConfig,
    *,
    checkpoint: Path | None = None,
    every: int = 250,
    log: Callable[[str], object] = lambda line: sys.stderr.write(line + "\n"),
) -> tuple[TrainingSAE, torch.Tensor]:
    """Train on rows of `acts` (N, d_model), unscaled; (the trained SAE, the input scale).

    With `checkpoint`, the state is saved every `every` steps and a run resumes from it."""
    gen = torch.Generator().manual_seed(cfg.seed)
    scale = input_scale(acts, standardize=cfg.standardize)
    torch.manual_seed(cfg.seed)
    mean = acts[:65536].float().mean(dim=0) * scale
    sae = TrainingSAE(acts.shape[-1], cfg.width, cfg.init_threshold, mean)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.0, 0.999))
    first, log_tuning, recent_l0 = 0, 0.0, None
    last_fired = torch.zeros(cfg.width, dtype=torch.long)  # the step each feature last fired
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint)
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        first, (log_tuning, recent_l0) = state["step"], state["tuning"]
        last_fired = state.get("last_fired", last_fired)
    start, seen_l0, seen_mse = time.monotonic(), 0.0, 0.0
    for i in range(first, cfg.steps):
        lr, sparsity = _schedule(cfg, i)
        sparsity *= math.exp(log_tuning)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr
        x = acts[torch.randint(len(acts), (cfg.batch,), generator=gen)].float() * scale
        recon, l0, z = sae(x, cfg.bandwidth)
        mse = (recon - x).pow(2).sum(dim=-1).mean()
        loss = mse + sparsity * l0.mean()
        with torch.no_grad():
            last_fired[(z > sae.threshold).any(dim=0)] = i
        dead = i - last_fired >= cfg.dead_window
        if cfg.revive > 0 and dead.any():
            loss = loss + cfg.revive * sae.revival_loss(z, dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.unit_row_gradient()
        opt.step()
        sae.constrain()
        batch_l0 = l0.mean().item()
        seen_l0, seen_mse = seen_l0 + batch_l0, seen_mse + mse.item()
        recent_l0 = batch_l0 if recent_l0 is None else 0.95 * recent_l0 + 0.05 * batch_l0
        tuning = cfg.sparsity_warmup * cfg.steps <= i < cfg.tune_until * cfg.steps
        if cfg.target_l0 is not None and tuning:
            log_tuning += cfg.tune_gain * math.log(max(recent_l0, 1e-3) / cfg.target_l0)
        if (i + 1) % 50 == 0 or i + 1 == cfg.steps:
            rate = (i + 1 - first) / (time.monotonic() - start)
            log(f"step {i + 1}/{cfg.steps}  mse {seen_mse / 50:.3f}  L0 {seen_l0 / 50:.1f}  "
                f"λ {sparsity:.3g}  dead {dead.float().mean().item():.1%}  "
                f"eta {(cfg.steps - i - 1) / rate:.0f} s")  # fmt: skip
            seen_l0 = seen_mse = 0.0
        if checkpoint is not None and ((i + 1) % every == 0 or i + 1 == cfg.steps):
            state = {"sae": sae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                     "step": i + 1, "tuning": (log_tuning, recent_l0),
                     "last_fired": last_fired}  # fmt: skip
            save_atomically(state, checkpoint)
    sae.sparsity = cfg.sparsity * math.exp(log_tuning)  # λ as it ended
    return sae, scale
