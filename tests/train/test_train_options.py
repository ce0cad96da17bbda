"""vae-train's options beyond the basics: bf16 (and its refusal where the CPU lacks it),
--binarize (seeded, resumed bit-exactly), and the loss.png and progress.gif figures."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import expect_error
from PIL import Image
from typer.testing import CliRunner

from vae_runtime.errors import InvalidArgumentError
from vae_train.checkpoint import load_checkpoint
from vae_train.cli import app
from vae_train.data import MnistImages, binarize
from vae_train.device import bf16_missing, require_compute_dtype
from vae_train.model import VAEConfig
from vae_train.training import MAX_PROGRESS_FRAMES, TrainSettings, train

Settings = Callable[..., TrainSettings]
training = importlib.import_module("vae_train.training")


def test_bf16_refused_where_the_cpu_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated absence: torch's probes say no AVX512-BF16 and no AMX."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert "neither AVX512-BF16 nor AMX" in bf16_missing(torch.device("cpu"))
    with pytest.raises(InvalidArgumentError, match="--precision bf16 refused"):
        require_compute_dtype("bf16", torch.device("cpu"))
    require_compute_dtype("fp32", torch.device("cpu"))  # fp32 runs anywhere
    result = CliRunner().invoke(
        app, ["--precision", "bf16", "--device", "cpu"], prog_name="vae-train"
    )
    expect_error(result, 2, r"--precision bf16 refused: this CPU has neither AVX512-BF16 nor AMX")
    # AMX alone is enough
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert bf16_missing(torch.device("cpu")) == ""


def test_precision_rule() -> None:
    with pytest.raises(InvalidArgumentError, match="precision must be one of fp32, bf16"):
        TrainSettings(compute_dtype="fp16")
    with pytest.raises(InvalidArgumentError, match="binarize"):
        TrainSettings(binarize=1)  # type: ignore[arg-type]
    assert "not offered on mps" in bf16_missing(torch.device("mps"))


@pytest.mark.usefixtures("bf16_cpu")
def test_bf16_trains_float32_state_close_to_fp32(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    fp32 = train(tiny_settings(epochs=2), tiny_config, out_dir=tmp_path / "a", data=tiny_data)
    bf16 = train(
        tiny_settings(epochs=2, compute_dtype="bf16"),
        tiny_config,
        out_dir=tmp_path / "b",
        data=tiny_data,
    )
    assert all(t.dtype == torch.float32 for t in bf16.state_dict.values())
    assert all(
        v.dtype == torch.float32
        for s in bf16.optimizer["state"].values()  # type: ignore[index]
        for v in s.values()
    )
    assert not torch.equal(fp32.state_dict["fc1.weight"], bf16.state_dict["fc1.weight"])
    assert abs(fp32.metrics[-1]["test_loss"] - bf16.metrics[-1]["test_loss"]) < 3.0
    assert load_checkpoint(tmp_path / "b" / "model.pt").run["compute_dtype"] == "bf16"
    # resume checks the precision like the other settings
    with pytest.raises(InvalidArgumentError, match="--precision bf16"):
        train(
            tiny_settings(epochs=3),
            tiny_config,
            out_dir=tmp_path / "b",
            data=tiny_data,
            resume=tmp_path / "b" / "model.pt",
        )


def test_binarize_is_seeded_bernoulli(make_digits: Callable[..., Any]) -> None:
    images, _ = make_digits(200, 3)
    a, b, c = binarize(images, 1), binarize(images, 1), binarize(images, 2)
    assert a.dtype == np.uint8
    assert a.shape == images.shape
    assert set(np.unique(a)) <= {0, 255}
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not a[images == 0].any()  # black stays black
    assert a[images == 255].all()  # white stays white
    mid = (images > 100) & (images < 156)
    assert abs(float((a[mid] == 255).mean()) - float(images[mid].mean()) / 255) < 0.05


def test_binarized_training_resumes_bit_exactly_and_is_checked(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    tiny_data = MnistImages(tiny_data.train[:96], tiny_data.test[:32], "synthetic")
    straight = train(
        tiny_settings(epochs=3, binarize=True), tiny_config, out_dir=tmp_path / "s", data=tiny_data
    )
    plain = train(tiny_settings(epochs=1), tiny_config, out_dir=tmp_path / "p", data=tiny_data)
    split = tmp_path / "r"
    train(tiny_settings(epochs=1, binarize=True), tiny_config, out_dir=split, data=tiny_data)
    resumed = train(
        tiny_settings(epochs=3, binarize=True),
        tiny_config,
        out_dir=split,
        data=tiny_data,
        resume=split / "model.pt",
    )
    for k, v in straight.state_dict.items():
        assert torch.equal(v, resumed.state_dict[k]), k
    assert straight.metrics[0]["test_loss"] != plain.metrics[0]["test_loss"]
    with pytest.raises(InvalidArgumentError, match="trained with --binarize"):
        train(
            tiny_settings(epochs=4),
            tiny_config,
            out_dir=split,
            data=tiny_data,
            resume=split / "model.pt",
        )
    # progress.gif spans all three epochs, across the resume
    assert resumed.progress["epochs"].tolist() == [1, 2, 3]
    with Image.open(split / "progress.gif") as gif:
        assert gif.n_frames == 3
        gif.seek(2)  # the last one held longer (Pillow merges the repeats into one frame)
        assert gif.info["duration"] > 300


def test_loss_png_and_progress_gif(
    tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig, tiny_settings: Settings
) -> None:
    ckpt = train(tiny_settings(epochs=2), tiny_config, out_dir=tmp_path, data=tiny_data)
    with Image.open(tmp_path / "loss.png") as im:
        assert im.format == "PNG"
        assert im.size == (900, 360)
        assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10  # something drawn
    samples = np.asarray(Image.open(tmp_path / "samples.png"))
    with Image.open(tmp_path / "progress.gif") as gif:
        assert gif.size == (304, 326)
        gif.seek(1)  # epoch 2's frame: samples.png, scaled 2x, above its caption
        frame = np.asarray(gif.convert("L"))
    np.testing.assert_array_equal(frame[:304], samples.repeat(2, 0).repeat(2, 1))
    assert frame[304:].any()  # the caption
    assert ckpt.progress["images"].shape == (2, 25, 28, 28)


def test_progress_frames_are_thinned_not_unbounded(
    tmp_path: Path, tiny_data: MnistImages, tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "MAX_PROGRESS_FRAMES", 3)
    small = MnistImages(tiny_data.train[:64], tiny_data.test[:16], "synthetic")
    ckpt = train(
        tiny_settings(epochs=5), VAEConfig(hidden_dim=8, latent_dim=2), out_dir=tmp_path, data=small
    )
    assert ckpt.progress["epochs"].tolist() == [1, 4, 5]  # 1 2 3 4 -> 1 3 4 -> 1 3 4 5 -> 1 4 5
    assert MAX_PROGRESS_FRAMES >= 100
