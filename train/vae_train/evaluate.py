"""vae-eval: how good a model.pt is in the field's terms, on the test set.

- the ELBO (nats per image; E_q[log p(x|z)] averaged over the k draws, minus the analytic KL);
- the importance-weighted bound of Burda et al. (IWAE),
      log p(x) >= L_k = log (1/k) sum_i p(x, z_i) / q(z_i | x),   z_i ~ q(z | x),
  from the same k draws, its logsumexp streamed in float64 over chunks of draws, so memory stays
  bounded for any k; both with a Monte-Carlo standard error (delta method for L_k);
- per latent dimension: its mean KL and Burda et al.'s activity Cov_x(E_q[z_d | x]) (active when
  above 0.01); reconstruction BCE and MSE from the posterior mean.
Costs ~2 * k * (latent * hidden + hidden * 784) FLOPs per image: 3e13 for the 10,000 test images
at k = 5000 (minutes on 2 cores); `count` takes the first N images for a quick estimate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import vae_runtime
from vae_runtime.contract import PRODUCER
from vae_runtime.errors import InvalidArgumentError, check_int
from vae_runtime.fileio import Outputs, sha256_file
from vae_runtime.sampling import MAX_SEED

from . import figures
from .checkpoint import load_checkpoint
from .data import binarize, load_mnist, locate_mnist
from .device import Progress, check_device, select_device
from .model import VAE

EVAL_FORMAT = "mnist-vae/eval"
EVAL_FILE = "eval.json"
DEFAULT_SAMPLES = 5000  # Burda et al.'s k for the figures the literature quotes
MAX_SAMPLES = 1_000_000  # memory stays bounded for any k; this only bounds the time
ACTIVE_THRESHOLD = 0.01  # Burda et al.: a unit is active when Cov_x(E_q[z_d | x]) > 0.01
_ROWS = 8192  # decoder rows per chunk: (8192, 784) float32 logits = 25 MB
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate: k importance samples per image, the first `count` test images (None:
    all; with `up_to`, all when the set holds fewer, else fewer is an error), the seed of the
    draws (and of the binarisation), the device, binarised targets."""

    samples: int = DEFAULT_SAMPLES
    count: int | None = None
    seed: int = 0
    device: str = "auto"
    binarize: bool = False
    up_to: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples", check_int("samples (k)", self.samples, 1, MAX_SAMPLES))
        if self.count is not None:
            object.__setattr__(self, "count", check_int("count", self.count, 1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, MAX_SEED))
        object.__setattr__(self, "device", check_device(self.device))
        if not isinstance(self.binarize, bool):
            raise InvalidArgumentError(f"binarize must be True or False, got {self.binarize!r}")


@dataclass
class _Sums:
    """Per-image running sums over the k draws, float64: the streamed logsumexp of log w (max m,
    sum of exp(log w - m) and of its square) and the sum and square sum of log p(x|z)."""

    m: torch.Tensor
    s: torch.Tensor
    s2: torch.Tensor
    rec: torch.Tensor
    rec2: torch.Tensor

    @classmethod
    def empty(cls, n: int) -> _Sums:
        zeros = [torch.zeros(n, dtype=torch.float64) for _ in range(4)]
        return cls(torch.full((n,), -math.inf, dtype=torch.float64), *zeros)

    def add(self, log_w: torch.Tensor, rec: torch.Tensor) -> None:
        """Fold in (S, B) float64 log weights and log-likelihoods."""
        m = torch.maximum(self.m, log_w.max(0).values)
        scale = torch.exp(self.m - m)  # exp(-inf) = 0 at the first chunk
        e = torch.exp(log_w - m)
        self.s = self.s * scale + e.sum(0)
        self.s2 = self.s2 * scale * scale + (e * e).sum(0)
        self.m = m
        self.rec += rec.sum(0)
        self.rec2 += (rec * rec).sum(0)


def _log_weights(
    model: VAE,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    sums: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For B images x (B, 784) with posterior (mu, logvar) and draws eps (S, B, L): float64
    (S, B) log p(x|z) and log importance weights log p(x|z) + log p(z) - log q(z|x). The 784
    likelihood terms are summed in `sums`: float32 for vae-eval's means over thousands of
    images (its rounding, ~1e-4 nats per image, averages out; float64 costs a third more),
    float64 where single images are compared (~1e-6)."""
    s, b = eps.shape[:2]
    z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, L)
    logits = model.decode_logits(z.reshape(s * b, -1)).reshape(s, b, -1)  # (S, B, 784)
    # log p(x|z) = sum_j x_j l_j - softplus(l_j): the Bernoulli likelihood, stable for any l
    rec = (logits * x - F.softplus(logits)).to(sums).sum(-1)  # (S, B)
    log_pz = -0.5 * (z * z + _LOG_2PI).sum(-1)
    log_qz = -0.5 * (eps * eps + _LOG_2PI + logvar).sum(-1)  # (z - mu) / std = eps
    rec64 = rec.double().cpu()
    return rec64, rec64 + (log_pz - log_qz).double().cpu()


def bound_terms(
    model: VAE, x: torch.Tensor, k: int, gen: torch.Generator, rows: int = _ROWS
) -> dict[str, torch.Tensor]:
    """For B images x (B, 784) in [0, 1], k draws each: per image (B,) float64, `iwae` (L_k),
    `iwae_var` (the delta-method variance of L_k), `rec` (mean log p(x|z)), `rec_var` (the
    variance of that mean), `kl` (analytic, float32 per dimension: (B, latent)), and the
    posterior `mu`, `logvar`."""
    b = x.shape[0]
    mu, logvar = model.encode(x)  # (B, L) each
    sums = _Sums.empty(b)
    per_chunk = max(1, rows // b)
    for start in range(0, k, per_chunk):
        s = min(per_chunk, k - start)
        eps = torch.randn(s, b, mu.shape[1], generator=gen).to(x.device)  # (S, B, L)
        rec64, log_w = _log_weights(model, x, mu, logvar, eps)
        sums.add(log_w, rec64)
    log_k = math.log(k)
    iwae = sums.m + torch.log(sums.s) - log_k
    # Var(log mean w) ~ Var(w) / (k mean(w)^2) = (k s2 / s^2 - 1) / k  (delta method)
    iwae_var = (k * sums.s2 / (sums.s * sums.s) - 1).clamp_min(0) / k
    rec_mean = sums.rec / k
    rec_var = (
        ((sums.rec2 - k * rec_mean * rec_mean) / (k - 1)).clamp_min(0) / k
        if k > 1
        else torch.full_like(rec_mean, math.nan)
    )
    kl = 0.5 * (logvar.exp() + mu * mu - 1 - logvar)  # (B, L)
    return {
        "iwae": iwae,
        "iwae_var": iwae_var,
        "rec": rec_mean,
        "rec_var": rec_var,
        "kl": kl,
        "mu": mu,
        "logvar": logvar,
    }


@torch.inference_mode()
def scores_with_noise(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (B,) float64, with given draws eps (B, k, L) in place of sampled ones: `elbo`
    (the mean of the k log weights: a Monte-Carlo KL, not the analytic one of `evaluate`),
    `iwae` (their log-mean-exp) and `bce` (of the posterior mean's reconstruction, as
    `recon_bce`), all in nats. The torch side of the runtime Scorer's parity test: the log
    weights of `bound_terms`, their 784 likelihood terms summed in float64."""
    mu, logvar = model.encode(x)
    _, log_w = _log_weights(model, x, mu, logvar, eps.transpose(0, 1), torch.float64)  # (k, B)
    k = log_w.shape[0]
    logits = model.decode_logits(mu)
    bce = (F.softplus(logits) - x * logits).double().sum(-1)
    return {
        "elbo": log_w.mean(0),
        "iwae": torch.logsumexp(log_w, 0) - math.log(k),
        "bce": bce,
    }


@torch.inference_mode()
def evaluate(
    model: VAE,
    images: np.ndarray,
    settings: EvalSettings = EvalSettings(),
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The figures of `model` on uint8 `images` (N, 28, 28) (already binarised, if wanted):
    nats per image, see the module's docstring. Same settings, same numbers."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    progress = progress or Progress(enabled=False)
    k = settings.samples
    n = images.shape[0]
    gen = torch.Generator().manual_seed(settings.seed)
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(n, -1))
    batch = max(1, min(1024, _ROWS // min(k, _ROWS)))  # images per pass: B * S ~ _ROWS
    parts: dict[str, list[torch.Tensor]] = {}
    recon_bce = recon_se = iwae_sum = 0.0
    start_time = time.perf_counter()
    progress.start()
    for start in range(0, n, batch):
        x = flat[start : start + batch].to(device).float().div_(255.0)
        terms = bound_terms(model, x, k, gen)
        for key, value in terms.items():
            parts.setdefault(key, []).append(value.double().cpu())
        logits = model.decode_logits(terms["mu"])  # the posterior mean's reconstruction
        recon_bce += float((F.softplus(logits) - x * logits).sum())
        recon_se += float((torch.sigmoid(logits) - x).pow(2).sum())
        iwae_sum += float(terms["iwae"].sum())
        done = min(n, start + batch)
        progress.update(f"IWAE k={k}", done, n, -iwae_sum / done)
    progress.clear()
    cat = {key: torch.cat(value) for key, value in parts.items()}
    kl_dims = cat["kl"].mean(0)  # (L,)
    activity = cat["mu"].var(0, unbiased=False) if n > 1 else torch.zeros_like(kl_dims)
    kl = float(cat["kl"].sum(1).mean())
    neg_elbo = -float(cat["rec"].mean()) + kl
    neg_iwae = -float(cat["iwae"].mean())
    return {
        "images": n,
        "samples": k,
        "seed": settings.seed,
        "binarized": settings.binarize,
        "neg_elbo": neg_elbo,
        "neg_elbo_se": _se(cat["rec_var"], n),
        "elbo_bce": -float(cat["rec"].mean()),
        "elbo_kl": kl,
        "neg_iwae": neg_iwae,
        "neg_iwae_se": _se(cat["iwae_var"], n) if k > 1 else None,
        "gap": neg_elbo - neg_iwae,
        "recon_bce": recon_bce / n,
        "recon_mse": recon_se / (n * flat.shape[1]),
        "kl_per_dim": [float(v) for v in kl_dims],
        "activity": [float(v) for v in activity],
        "active": [bool(v > ACTIVE_THRESHOLD) for v in activity],
        "active_units": int((activity > ACTIVE_THRESHOLD).sum()),
        "active_threshold": ACTIVE_THRESHOLD,
        "seconds": round(time.perf_counter() - start_time, 3),
    }


def _se(variances: torch.Tensor, n: int) -> float | None:
    """Standard error of a mean over n images of independent per-image estimates."""
    value = math.sqrt(float(variances.sum())) / n
    return value if math.isfinite(value) else None


def eval_paths(model_path: Path, out: Path | None) -> tuple[Path, Path]:
    """(eval.json, its KL chart): `out` or eval.json beside the model; the chart beside the
    JSON, named after it (eval.json -> eval_kl.png)."""
    json_path = out if out is not None else model_path.parent / EVAL_FILE
    return json_path, json_path.with_name(f"{json_path.stem}_kl.png")


def run_eval(
    model_path: Path | str,
    settings: EvalSettings = EvalSettings(),
    *,
    out: Path | str | None = None,
    chart: bool = True,
    data_dir: Path | str | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate `model_path` on the test set; write eval.json (and the KL chart) through
    `Outputs` (checked before any work: never over the model or the data, over an existing file
    only with `force`); print a table through `log`. Returns what eval.json holds."""
    model_path = Path(model_path)
    json_path, chart_path = eval_paths(model_path, Path(out) if out is not None else None)
    device = select_device(settings.device)
    reads = [model_path, *locate_mnist(data_dir, cache_dir)]
    targets = [json_path, chart_path] if chart else [json_path]
    with Outputs(targets, reads=reads, force=force, create_dirs=True) as outputs:
        ckpt = load_checkpoint(model_path)
        model = ckpt.build_model(model_path)
        data = load_mnist(data_dir, cache_dir=cache_dir, log=log)
        test = data.test
        if settings.count is not None:
            if settings.count > len(test) and not settings.up_to:
                raise InvalidArgumentError(
                    f"count is {settings.count:,} but the test set has {len(test):,} images"
                )
            test = test[: settings.count]
        if settings.binarize:
            test = binarize(test, settings.seed)
        figures_ = evaluate(model, test, settings, device, progress)
        result = {
            "format": EVAL_FORMAT,
            "format_version": 1,
            "model": {
                "name": model_path.name,
                "sha256": sha256_file(model_path),
                "config": ckpt.config.to_dict(),
                "epoch": ckpt.epoch,
                "trained_binarized": bool(ckpt.run.get("binarize", False)),
            },
            "data": {"source": data.source, "set": "test", "first": len(test)},
            "device": str(device),
            **figures_,
            "versions": {"torch": str(torch.__version__), PRODUCER: vae_runtime.__version__},
        }
        outputs.write_bytes(json_path, (json.dumps(result, indent=1) + "\n").encode())
        if chart:
            title = (
                f"{model_path.name}: KL per latent dimension, {figures_['active_units']} of "
                f"{len(figures_['kl_per_dim'])} active; {len(test):,} test images"
            )
            outputs.write_bytes(
                chart_path, figures.kl_bars_png(figures_["kl_per_dim"], figures_["active"], title)
            )
        outputs.commit()
    if log is not None:
        for line in table(result):
            log(line)
        log(f"wrote {json_path}" + (f", {chart_path}" if chart else ""))
    return result


def table(result: dict[str, Any]) -> list[str]:
    """The terminal table of an eval.json."""
    k, n = result["samples"], result["images"]

    def se(value: float | None) -> str:
        return f"{value:10.3f}" if value is not None else "         -"

    targets = "binarised (fixed, seeded)" if result["binarized"] else "greyscale"
    elbo = f"-ELBO  (BCE {result['elbo_bce']:.2f} + KL {result['elbo_kl']:.2f})"
    lines = [
        f"{result['model']['name']}: epoch {result['model']['epoch']}, "
        f"{n:,} test images ({targets}), k = {k}, seed {result['seed']}",
        f"{'nats per image':<44}{'value':>10}{'MC s.e.':>10}",
        f"{elbo:<44}{result['neg_elbo']:10.2f}{se(result['neg_elbo_se'])}",
        f"{'-log p(x) <= IWAE bound, k = ' + str(k):<44}"
        f"{result['neg_iwae']:10.2f}{se(result['neg_iwae_se'])}",
        f"{'gap (-ELBO minus the IWAE bound)':<44}{result['gap']:10.2f}",
        f"{'reconstruction from the mean: BCE':<44}{result['recon_bce']:10.2f}",
        f"{'reconstruction from the mean: MSE per pixel':<44}{result['recon_mse']:10.5f}",
        f"active units: {result['active_units']} of {len(result['active'])} "
        f"(activity Cov_x(E_q[z_d|x]) > {result['active_threshold']})",
        f"{'dim':>4}{'KL':>9}{'activity':>10}",
    ]
    for d, (kl, act, on) in enumerate(
        zip(result["kl_per_dim"], result["activity"], result["active"], strict=True)
    ):
        lines.append(f"{d:>4}{kl:9.3f}{act:10.4f}{'' if on else '  inactive'}")
    return lines
