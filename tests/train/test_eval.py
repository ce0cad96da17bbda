"""vae-eval: the IWAE bound against a brute-force log p(x) on a 1-D latent, its order against the
ELBO and in k, the per-dimension figures, and the command as a user meets it."""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import expect_error
from PIL import Image
from typer.testing import CliRunner, Result

from vae_runtime.errors import InvalidArgumentError
from vae_train import cli as eval_cli
from vae_train.cli import eval_app
from vae_train.data import MnistImages
from vae_train.device import Progress
from vae_train.evaluate import EvalSettings, bound_terms, evaluate
from vae_train.model import VAE, VAEConfig
from vae_train.training import TrainSettings, train

TINY = VAEConfig(hidden_dim=16, latent_dim=1)


@pytest.fixture(scope="module")
def model_1d(make_digits: Callable[..., Any]) -> tuple[VAE, np.ndarray]:
    """A 1-D latent model trained a little (so that q is near the posterior, as in practice),
    and 6 test digits."""
    train_images, _ = make_digits(300, 21)
    test_images, _ = make_digits(6, 22)
    torch.manual_seed(0)
    model = VAE(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(train_images.reshape(300, -1)).float() / 255
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        logits, mu, logvar = model(x, torch.randn(300, 1, generator=gen))
        loss = (F.softplus(logits) - x * logits).sum() + 0.5 * (
            logvar.exp() + mu**2 - 1 - logvar
        ).sum()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model.eval(), test_images


@torch.inference_mode()
def brute_force_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log of the integral of p(x|z) N(z; 0, 1) dz over a fine grid of z in [-10, 10]
    (trapezoid rule in float64), for each image in x (B, 784)."""
    z = torch.linspace(-10, 10, 40001, dtype=torch.float64)
    logits = model.decode_logits(z[:, None].float()).double()  # (G, 784)
    log_lik = x.double() @ logits.T - F.softplus(logits).sum(-1)  # (B, G)
    log_f = log_lik - 0.5 * (z * z + math.log(2 * math.pi))
    dz = float(z[1] - z[0])
    weights = torch.full_like(z, dz)
    weights[[0, -1]] = dz / 2
    return torch.logsumexp(log_f + weights.log(), dim=1)


def test_iwae_equals_brute_force_integration(model_1d: tuple[VAE, np.ndarray]) -> None:
    """With a proposal that covers every posterior (q = N(5, 1) for all x: the posteriors of
    these digits sit at z ~ 4.5..5.7, sd ~ 0.4), L_k at k = 20000 is log p(x) to a few
    hundredths; the trained encoder's own q is narrower and off-centre (the next test)."""
    model = copy.deepcopy(model_1d[0])
    images = model_1d[1]
    with torch.no_grad():
        for head, bias in ((model.fc2_mu, 5.0), (model.fc2_logvar, 0.0)):
            head.weight.zero_()
            head.bias.fill_(bias)
    x = torch.from_numpy(images.reshape(len(images), -1)).float() / 255
    exact = brute_force_log_px(model, x)
    with torch.inference_mode():
        terms = bound_terms(model, x, 20000, torch.Generator().manual_seed(3))
    se = terms["iwae_var"].sqrt()
    assert (terms["iwae"] <= exact + 4 * se + 1e-3).all()
    np.testing.assert_allclose(terms["iwae"].numpy(), exact.numpy(), atol=0.05)
    assert ((exact - terms["iwae"]).abs() <= 6 * se + 0.02).all()


def test_iwae_is_above_the_elbo_and_rises_with_k(model_1d: tuple[VAE, np.ndarray]) -> None:
    model, images = model_1d
    x = torch.from_numpy(images.reshape(len(images), -1)).float() / 255
    exact = brute_force_log_px(model, x)
    means = []
    with torch.inference_mode():
        for k in (1, 4, 32, 512):
            runs = [bound_terms(model, x, k, torch.Generator().manual_seed(s)) for s in range(40)]
            means.append(float(torch.stack([r["iwae"] for r in runs]).mean()))
            if k == 512:
                elbo = torch.stack([r["rec"] - r["kl"].sum(1) for r in runs]).mean()
                assert means[-1] > float(elbo) + 0.01  # a strictly tighter bound here
    assert means == sorted(means), means  # in expectation L_1 <= L_4 <= L_32 <= L_512
    assert means[-1] <= float(exact.mean()) + 0.01  # ... and all below log p(x)
    assert float(exact.mean()) - means[-1] < float(exact.mean()) - means[0]


def test_evaluate_figures(model_1d: tuple[VAE, np.ndarray]) -> None:
    model, images = model_1d
    a = evaluate(model, images, EvalSettings(samples=200, seed=4))
    b = evaluate(model, images, EvalSettings(samples=200, seed=4))
    c = evaluate(model, images, EvalSettings(samples=200, seed=5))
    assert a == {**b, "seconds": a["seconds"]}  # same seed, same figures
    assert a["neg_iwae"] != c["neg_iwae"]
    assert a["neg_iwae"] <= a["neg_elbo"]
    assert a["gap"] == pytest.approx(a["neg_elbo"] - a["neg_iwae"])
    assert a["neg_elbo"] == pytest.approx(a["elbo_bce"] + a["elbo_kl"])
    assert 0 < a["neg_iwae_se"] < 1
    assert 0 < a["neg_elbo_se"] < 1
    assert len(a["kl_per_dim"]) == len(a["activity"]) == 1
    assert a["elbo_kl"] == pytest.approx(sum(a["kl_per_dim"]))
    x = torch.from_numpy(images.reshape(6, -1)).float() / 255
    with torch.inference_mode():
        mu, _ = model.encode(x)
        probs = model.decode(mu)
    assert a["activity"][0] == pytest.approx(float(mu[:, 0].var(unbiased=False)), rel=1e-5)
    assert a["active"] == [a["activity"][0] > 0.01]
    assert a["recon_mse"] == pytest.approx(float((probs - x).pow(2).mean()), rel=1e-5)
    one = evaluate(model, images, EvalSettings(samples=1))
    assert one["neg_iwae_se"] is None  # one draw: no spread to measure


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples": 0}, r"samples \(k\) must be in 1\.\.1,000,000"),
        ({"samples": 10**7}, r"samples \(k\) must be in"),
        ({"count": 0}, "count must be >= 1"),
        ({"seed": -1}, "seed must be in"),
        ({"device": "tpu"}, "device must be one of"),
    ],
)
def test_eval_settings_refuse_nonsense(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        EvalSettings(**kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    from vae_train.data import load_mnist

    out = tmp_path_factory.mktemp("eval-model")
    data = load_mnist(mnist_dir)
    settings = TrainSettings(epochs=1, batch_size=128, seed=2, device="cpu")
    train(settings, VAEConfig(hidden_dim=16, latent_dim=3), out_dir=out, data=data)
    return out / "model.pt"


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(eval_app, [str(a) for a in args], prog_name="vae-eval")


def test_vae_eval_writes_json_and_chart(trained: Path, mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "res" / "e.json"
    args = [trained, "-k", 20, "-n", 50, "--data-dir", mnist_dir, "--device", "cpu"]
    result = invoke(*args, "--out", out, "--binarize")
    assert result.exit_code == 0, result.output
    assert "IWAE bound, k = 20" in result.stdout
    assert "binarised" in result.stdout
    report = json.loads(out.read_text())
    assert report["images"] == 50
    assert report["binarized"] is True
    assert report["model"]["epoch"] == 1
    assert report["neg_iwae"] <= report["neg_elbo"] + 3 * report["neg_elbo_se"]
    with Image.open(tmp_path / "res" / "e_kl.png") as im:
        assert im.format == "PNG"
    again = tmp_path / "again.json"
    assert invoke(*args, "--out", again, "--binarize", "-q", "--no-chart").exit_code == 0
    assert not (tmp_path / "again_kl.png").exists()
    second = json.loads(again.read_text())
    assert {k: v for k, v in second.items() if k != "seconds"} == {
        k: v for k, v in report.items() if k != "seconds"
    }  # same seed, same figures
    # default: beside the model
    assert invoke(*args, "-q").exit_code == 0
    assert (trained.parent / "eval.json").is_file()
    assert (trained.parent / "eval_kl.png").is_file()


def test_vae_eval_defaults_are_a_quick_estimate(
    trained: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    """k = 500 on the first 2,000 test images (all of them when the set holds fewer: 128 here);
    -n 0 and -k 5000 give the full evaluation."""
    assert (eval_cli.DEFAULT_SAMPLES, eval_cli.DEFAULT_COUNT) == (500, 2000)
    out = tmp_path / "quick.json"
    args = [trained, "--data-dir", mnist_dir, "--device", "cpu", "--no-chart", "-q"]
    result = invoke(*args, "--out", out)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    report = json.loads(out.read_text())
    assert (report["samples"], report["images"]) == (500, 128)
    result = invoke(*args, "--out", out, "-n", "0", "-k", "3")  # an existing file: refused
    expect_error(result, 2, r"quick.json already exists; pass --force \(-f\) to replace it$")
    assert invoke(*args, "--out", out, "-n", "0", "-k", "3", "--force").exit_code == 0
    full = json.loads(out.read_text())
    assert (full["samples"], full["images"]) == (3, 128)
    assert "[default: 500]" in " ".join(invoke("--help").stdout.split())


def test_progress_shows_in_a_log_too() -> None:
    """Not a terminal: a plain line at most every `every` seconds (never one per batch)."""
    log = io.StringIO()
    progress = Progress(log, every=0.0)
    progress.update("IWAE k=500", 16, 128, 95.25)
    progress.clear()
    assert log.getvalue().startswith("IWAE k=500  16/128  loss 95.25")
    assert log.getvalue().endswith("s left\n") and "\r" not in log.getvalue()
    slow = io.StringIO()
    progress = Progress(slow)  # every PLAIN_EVERY = 5 s: nothing yet
    for done in range(1, 100):
        progress.update("IWAE", done, 100, 1.0)
    assert slow.getvalue() == ""
    quiet = io.StringIO()
    Progress(quiet, enabled=False, every=0.0).update("IWAE", 1, 2, 1.0)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["-k", "0"], 2, r"samples \(k\) must be in 1\.\.1,000,000"),
        (["-n", "100000"], 2, "the test set has 128 images"),
        (["--out", "{model}"], 2, "is the input"),
        (["--device", "gpu"], 2, "device must be one of"),
    ],
)
def test_vae_eval_bad_input_is_one_line(
    trained: Path, mnist_dir: Path, extra: list[str], code: int, needle: str
) -> None:
    before = trained.read_bytes()
    extra = [e.replace("{model}", str(trained)) for e in extra]
    args = [trained, "-k", 2, "--data-dir", mnist_dir, "--device", "cpu", "--force"]
    expect_error(invoke(*args, *extra), code, needle)
    assert trained.read_bytes() == before


def test_vae_eval_missing_or_foreign_model(tmp_path: Path, mnist_dir: Path) -> None:
    expect_error(invoke(tmp_path / "none.pt", "--data-dir", mnist_dir), 1, "no such file")
    (tmp_path / "x.pt").write_text("hello")
    expect_error(invoke(tmp_path / "x.pt", "--data-dir", mnist_dir), 1, "not a PyTorch checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]  # nothing written


def test_trained_models_iwae_on_tiny_data(
    tmp_path: Path, tiny_data: MnistImages, make_digits: Callable[..., Any]
) -> None:
    """On a trained 2-D model the bound is tighter than the ELBO by a clear margin."""
    ckpt = train(
        TrainSettings(epochs=3, batch_size=32, seed=1, device="cpu", lr=3e-3),
        VAEConfig(hidden_dim=32, latent_dim=2),
        out_dir=tmp_path,
        data=tiny_data,
    )
    result = evaluate(ckpt.build_model(), tiny_data.test[:40], EvalSettings(samples=500))
    assert result["gap"] > 5 * max(result["neg_iwae_se"], result["neg_elbo_se"])
