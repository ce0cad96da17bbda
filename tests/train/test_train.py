"""The training loop: outputs, determinism, resume, evaluation, faults, checkpoints."""

from __future__ import annotations

import importlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vae_runtime import signals
from vae_runtime.errors import (
    Interrupted,
    InvalidArgumentError,
    NumericalError,
    OutputError,
    VaeError,
)
from vae_runtime.images import tile
from vae_runtime.sampling import sample_latents
from vae_train.checkpoint import Checkpoint, load_checkpoint
from vae_train.data import MnistImages
from vae_train.device import (
    COMPUTE_DTYPES,
    check_compute_dtype,
    require_compute_dtype,
    select_device,
)
from vae_train.model import VAE, VAEConfig, loss_terms
from vae_train.training import TrainSettings, train

Settings = Callable[..., TrainSettings]
train_module = importlib.import_module("vae_train.training")


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run(
    out: Path, data: MnistImages, config: VAEConfig, settings: TrainSettings, **kw: Any
) -> Checkpoint:
    out.mkdir(parents=True, exist_ok=True)
    return train(settings, config, out_dir=out, data=data, **kw)


def test_outputs(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    ckpt = _run(tmp_path, tiny_data, tiny_config, tiny_settings())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loss.png",
        "metrics.jsonl",
        "model.pt",
        "progress.gif",
        "reconstructions.png",
        "samples.png",
    ]  # and no temporary files left behind
    stored = load_checkpoint(tmp_path / "model.pt")
    assert stored.epoch == ckpt.epoch == 2
    assert stored.config == tiny_config
    assert _equal_states(stored.state_dict, ckpt.state_dict)
    assert stored.run == {
        "epochs": 2,
        "batch_size": 64,
        "lr": 1e-3,
        "seed": 5,
        "device": "cpu",
        "data": "synthetic",
        "compute_dtype": "fp32",
        "binarize": False,
    }
    assert set(stored.rng) == {"shuffle", "noise"}
    assert stored.optimizer is not None
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == stored.metrics
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["test_loss"] == pytest.approx(r["test_bce"] + r["test_kl"])
        assert r["train_loss"] == pytest.approx(r["train_bce"] + r["train_kl"])
        assert r["seconds"] > 0
    with Image.open(tmp_path / "samples.png") as im:
        assert (im.mode, im.size) == ("L", (152, 152))  # 5 x (28 + 2) + 2
    with Image.open(tmp_path / "reconstructions.png") as im:
        assert (im.mode, im.size) == ("L", (242, 62))  # 8 columns, originals above


def test_samples_png_uses_the_runtime_latents(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    _run(tmp_path, tiny_data, tiny_config, tiny_settings(epochs=1))
    model = load_checkpoint(tmp_path / "model.pt").build_model()
    z = torch.from_numpy(sample_latents(25, tiny_config.latent_dim, seed=5))
    with torch.no_grad():
        expected = tile(model.decode(z).numpy().reshape(25, 28, 28), 5, 5)
    with Image.open(tmp_path / "samples.png") as im:
        np.testing.assert_array_equal(np.asarray(im), expected)


def test_reconstructions_show_originals_above(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    _run(tmp_path, tiny_data, tiny_config, tiny_settings(epochs=1))
    with Image.open(tmp_path / "reconstructions.png") as im:
        grid = np.asarray(im)
    np.testing.assert_array_equal(grid[2:30], tile(tiny_data.test[:8], 1, 8)[2:30])


def test_same_seed_is_bit_identical_and_seed_matters(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    a = _run(tmp_path / "a", tiny_data, tiny_config, tiny_settings())
    b = _run(tmp_path / "b", tiny_data, tiny_config, tiny_settings())
    c = _run(tmp_path / "c", tiny_data, tiny_config, tiny_settings(seed=6))
    assert _equal_states(a.state_dict, b.state_dict)
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]
    assert not torch.equal(a.state_dict["fc1.weight"], c.state_dict["fc1.weight"])


def test_training_lowers_the_loss(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    ckpt = _run(tmp_path, tiny_data, tiny_config, tiny_settings(epochs=4, lr=3e-3))
    first, last = ckpt.metrics[0], ckpt.metrics[-1]
    assert last["train_loss"] < first["train_loss"] - 10
    assert last["test_loss"] < first["test_loss"] - 10


def test_resume_is_bit_identical_to_training_straight(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    straight = _run(tmp_path / "straight", tiny_data, tiny_config, tiny_settings(epochs=5))
    _run(tmp_path / "split", tiny_data, tiny_config, tiny_settings(epochs=2))
    resumed = _run(
        tmp_path / "split",
        tiny_data,
        tiny_config,
        tiny_settings(epochs=5),
        resume=tmp_path / "split" / "model.pt",
    )
    assert resumed.epoch == 5
    assert _equal_states(straight.state_dict, resumed.state_dict)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        for i in straight.optimizer["state"]:  # type: ignore[index]
            s, r = straight.optimizer["state"][i][key], resumed.optimizer["state"][i][key]  # type: ignore[index]
            assert torch.equal(s, r)
    drop = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert drop(straight.metrics) == drop(resumed.metrics)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"batch_size": 32}, "--batch-size 64"),
        ({"lr": 0.01}, "--lr 0.001"),
        ({"seed": 9}, "--seed 5"),
        ({"epochs": 2}, "already trained 2 epochs"),
    ],
)
def test_resume_refuses_other_settings(
    tmp_path: Path,
    tiny_data: MnistImages,
    tiny_config: VAEConfig,
    tiny_settings: Settings,
    change: dict[str, Any],
    match: str,
) -> None:
    _run(tmp_path, tiny_data, tiny_config, tiny_settings())
    settings = tiny_settings(**{"epochs": 4, **change})
    with pytest.raises(InvalidArgumentError, match=match):
        _run(tmp_path, tiny_data, tiny_config, settings, resume=tmp_path / "model.pt")


def test_resume_refuses_another_model_shape(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    _run(tmp_path, tiny_data, tiny_config, tiny_settings())
    with pytest.raises(InvalidArgumentError, match="--hidden-dim/--latent-dim"):
        _run(
            tmp_path,
            tiny_data,
            VAEConfig(hidden_dim=32, latent_dim=5),
            tiny_settings(epochs=3),
            resume=tmp_path / "model.pt",
        )


def test_evaluation_samples_z(
    tmp_path: Path,
    tiny_data: MnistImages,
    tiny_config: VAEConfig,
    tiny_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[torch.Tensor] = []
    forward = VAE.forward

    def spy(self: VAE, x: torch.Tensor, eps: torch.Tensor) -> Any:
        if not self.training:
            seen.append(eps.clone())
        return forward(self, x, eps)

    monkeypatch.setattr(VAE, "forward", spy)
    ckpt = _run(tmp_path, tiny_data, tiny_config, tiny_settings(epochs=1))
    eps = torch.cat(seen)  # the test set's noise, (100, latent_dim)
    assert eps.shape == (100, tiny_config.latent_dim)
    assert 0.8 < float(eps.std()) < 1.2  # z is sampled from the posterior, not its mean
    # ... and the recorded test loss is that sampled ELBO
    model = ckpt.build_model()
    x = torch.from_numpy(tiny_data.test.reshape(-1, 784)).float() / 255
    with torch.no_grad():
        logits, mu, logvar = forward(model, x, eps)
        bce, kl = loss_terms(logits, x, mu, logvar)
    assert ckpt.metrics[-1]["test_bce"] == pytest.approx(float(bce) / 100, rel=1e-5)
    assert ckpt.metrics[-1]["test_kl"] == pytest.approx(float(kl) / 100, rel=1e-5)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
    tiny_data: MnistImages,
    tiny_config: VAEConfig,
    tiny_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"n": 0}
    batches_per_epoch = 5  # 300 images in batches of 64

    def poisoned(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        bce, kl = loss_terms(*args)
        calls["n"] += 1
        if calls["n"] > batches_per_epoch + 2:  # from the third batch of epoch 2 on
            return bce * float("nan"), kl
        return bce, kl

    monkeypatch.setattr(train_module, "loss_terms", poisoned)
    with pytest.raises(NumericalError, match=r"nan in training in epoch 2.*keeps epoch 1") as info:
        _run(tmp_path, tiny_data, tiny_config, tiny_settings(epochs=3))
    assert "\n" not in str(info.value)
    kept = load_checkpoint(tmp_path / "model.pt")
    assert kept.epoch == 1
    assert all(torch.isfinite(t).all() for t in kept.state_dict.values())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1  # the set of epoch 1


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, epoch: int, how: Callable[[], None]) -> None:
    """Make evaluation of `epoch` call `how` (raise KeyboardInterrupt, send SIGTERM)."""
    original = train_module._Run._evaluate

    def evaluate(self: Any, e: int) -> tuple[float, float]:
        if e == epoch:
            how()
        return original(self, e)

    monkeypatch.setattr(train_module._Run, "_evaluate", evaluate)


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def test_interrupt_saves_the_last_finished_epoch_and_resumes_exactly(
    tmp_path: Path,
    tiny_data: MnistImages,
    tiny_config: VAEConfig,
    tiny_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    straight = _run(tmp_path / "straight", tiny_data, tiny_config, tiny_settings(epochs=4))
    _interrupt_at(monkeypatch, 3, _ctrl_c)
    out = tmp_path / "cut"
    with pytest.raises(Interrupted, match=r"holds 2 finished.*--resume"):
        _run(out, tiny_data, tiny_config, tiny_settings(epochs=4))
    assert load_checkpoint(out / "model.pt").epoch == 2
    monkeypatch.undo()
    resumed = _run(out, tiny_data, tiny_config, tiny_settings(epochs=4), resume=out / "model.pt")
    assert _equal_states(straight.state_dict, resumed.state_dict)


def test_sigterm_is_an_interrupt_where_the_handlers_are_installed(
    tmp_path: Path,
    tiny_data: MnistImages,
    tiny_config: VAEConfig,
    tiny_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    signals.install()  # what every command does first
    try:
        _interrupt_at(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Interrupted, match="holds 1 finished") as info:
            _run(tmp_path, tiny_data, tiny_config, tiny_settings(epochs=3))
        assert info.value.exit_code == 143
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert load_checkpoint(tmp_path / "model.pt").epoch == 1


def test_a_forced_run_stopped_in_its_first_epoch_replaces_nothing(
    tmp_path: Path,
    tiny_data: MnistImages,
    tiny_config: VAEConfig,
    tiny_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _run(tmp_path, tiny_data, tiny_config, tiny_settings(epochs=1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _interrupt_at(monkeypatch, 1, _ctrl_c)
    with pytest.raises(Interrupted, match="no epoch had finished, so no file was changed"):
        _run(tmp_path, tiny_data, tiny_config, tiny_settings(seed=9), force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    fresh = tmp_path / "fresh"
    with pytest.raises(Interrupted):
        train(tiny_settings(), tiny_config, out_dir=fresh, data=tiny_data)
    assert not fresh.exists()  # the folder it made is gone again


def test_output_folder_is_checked_before_training(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot create output folder"):
        train(tiny_settings(), tiny_config, out_dir=tmp_path / "a-file" / "x", data=tiny_data)


def test_refused_run_leaves_no_folder(tmp_path: Path, tiny_config: VAEConfig) -> None:
    with pytest.raises(VaeError):  # no data: refused before training
        train(
            TrainSettings(epochs=1),
            tiny_config,
            out_dir=tmp_path / "run",
            data_dir=tmp_path / "no-data",
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, r"epochs must be in 1\.\.10,000, got 0"),
        ({"epochs": 2.0}, "epochs must be an integer, got 2.0"),
        ({"batch_size": -4}, r"batch_size must be in 1\.\.65,536"),
        ({"seed": True}, "seed must be an integer, got True"),
        ({"lr": float("nan")}, r"lr must be a finite number in 0\.\.10"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"device": "gpu"}, "device must be one of auto, cpu, cuda, cuda:N, mps"),
    ],
)
def test_settings_refuse_nonsense(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        TrainSettings(**kwargs)


def test_device_selection() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="not available"):
            select_device("cuda")
    with pytest.raises(InvalidArgumentError, match="cuda:99"):
        select_device("cuda:99")


def test_the_compute_dtype_is_not_a_graph_precision() -> None:
    """TrainSettings.compute_dtype is the training arithmetic (COMPUTE_DTYPES), not a graph's
    number format (contract.PRECISIONS); errors name the command line's --precision."""
    assert COMPUTE_DTYPES == ("fp32", "bf16")
    assert TrainSettings().compute_dtype == check_compute_dtype("fp32") == "fp32"
    for bad in ("fp16", "int8", None):
        with pytest.raises(InvalidArgumentError, match="--precision must be one of fp32, bf16"):
            TrainSettings(compute_dtype=bad)  # type: ignore[arg-type]
    require_compute_dtype("fp32", torch.device("cpu"))  # fp32 runs anywhere


def test_objects_made_before_the_epochs_are_out_of_the_collectors_sight_while_they_run(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    import gc

    assert gc.get_freeze_count() == 0
    frozen: list[int] = []
    _run(
        tmp_path,
        tiny_data,
        tiny_config,
        tiny_settings(),
        log=lambda _: frozen.append(gc.get_freeze_count()),
    )
    assert len(frozen) == 2 and all(n > 10_000 for n in frozen)  # torch's modules, at least
    assert gc.get_freeze_count() == 0  # and back in view after the run


def test_a_callers_frozen_objects_stay_frozen_and_a_failed_run_unfreezes(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    import gc

    mine = [object()]  # a tracked container, frozen by "the caller"
    gc.freeze()
    try:
        _run(tmp_path / "a", tiny_data, tiny_config, tiny_settings(epochs=1))
        # gc.get_objects() lists the three generations, not the frozen objects
        assert not any(o is mine for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is mine for o in gc.get_objects())

    def stop(_: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        _run(tmp_path / "b", tiny_data, tiny_config, tiny_settings(), log=stop)
    assert gc.get_freeze_count() == 0
