"""loss.png drawn with PIL (vae_train.loss_chart): ticks, odd histories, and no matplotlib in a
vae-train run."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vae_train.loss_chart import COLOURS, SIZE, loss_png, nice_ticks


def _metrics(n: int) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "train_loss": 160.0 - 3 * e,
            "test_loss": 158.0 - 3 * e,
            "train_bce": 130.0 - 3 * e,
            "test_bce": 128.0 - 3 * e,
            "train_kl": 22.0 + e / 2,
            "test_kl": 22.3 + e / 2,
        }
        for e in range(1, n + 1)
    ]


def test_nice_ticks() -> None:
    assert nice_ticks(118.3, 161.2) == [120, 130, 140, 150, 160]
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    assert nice_ticks(5.0, 5.0) == [5.0]  # no range: one tick, no division by zero


def test_the_chart_draws_both_splits_for_any_history() -> None:
    for n in (1, 2, 40):  # one epoch (no line, markers only), a few, past the marker limit
        with Image.open(io.BytesIO(loss_png(_metrics(n), "title"))) as im:
            assert im.format == "PNG"
            assert im.size == SIZE
            pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
        for colour in COLOURS.values():
            assert (pixels == colour).all(axis=1).sum() > 20, (n, colour)


def test_a_training_run_imports_no_matplotlib(tmp_path: Path) -> None:
    """matplotlib's import was ~0.65 s of every vae-train process; loss.png no longer needs it."""
    code = (
        "import sys, numpy as np\n"
        "from vae_train.training import TrainSettings, train\n"
        "from vae_train.model import VAEConfig\n"
        "from vae_train.data import MnistImages\n"
        "d = np.zeros((64, 28, 28), np.uint8)\n"
        "train(TrainSettings(epochs=1, device='cpu'), VAEConfig(8, 2), out_dir=sys.argv[1],"
        " data=MnistImages(d, d[:8], 'zeros'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('matplotlib'))[:3])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert (tmp_path / "loss.png").is_file()
    assert done.stdout.strip() == "[]", done.stdout
