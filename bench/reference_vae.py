"""The reference for whole-process timings: the classic PyTorch VAE example's training as one
script (per-image PIL Dataset + DataLoader, torch.optim.Adam), on the same data as vae-train.

    python bench/reference_vae.py --data-dir /path/to/mnist --epochs 5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from vae_train.cli import tune_threads

tune_threads(True)  # the same threads as vae-train's default

from train_speed import reference  # noqa: E402

from vae_train.data import load_mnist  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    data = load_mnist(args.data_dir)
    _, loss = reference(data.train, data.test, args.epochs, args.seed)
    print(f"reference: {args.epochs} epochs, test loss {loss:.2f}")


if __name__ == "__main__":
    main()
