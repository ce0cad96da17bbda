"""How fast the runtime Scorer scores images, against its limit: the decoder alone.

    VAE_DATA_DIR=/path/to/mnist python bench/score_speed.py --onnx-dir out --model out/model.pt
    python bench/score_speed.py --onnx-dir out --quick        # a check in seconds

For each k (1, 64, 5000): images per second of `Scorer.score` on MNIST test images (or rendered
digits without VAE_DATA_DIR), against the decoder alone through the runtime on the same number
of latents (n x k) at the same batch (`scoring.DEFAULT_ROWS` rows per run, its logits output,
latents drawn beforehand): the ratio is the scorer's share of the decoder's samples per second.
Target at k = 64: >= 0.70 (the encoder, the draws, the log-mean-exp and the likelihood cost at
most 30% on top of the k decodes). With --model, also beside vae-eval's torch path
(`vae_train.evaluate.evaluate`) on the same images at the same k. Every ratio is the median of
alternating pairs (bench/measure.py) with its min-max. At k = 5000 fewer images are scored (at
most --rows-cap / k) so that a pass stays short; images per second is what is compared.

    VAE_DATA_DIR=/path/to/mnist python bench/score_speed.py --onnx-dir out --ray

--ray, instead: whole `vae-score` processes over the MNIST test IDX file at k = 64, one process
(its onnxruntime threads on every core) against `vae-score --ray` (a local Ray instance, Ray
Data, --actors 2 of 1 CPU each, one onnxruntime thread each), in alternating pairs: what Ray
Data costs or buys on this one machine, start-up included. Needs VAE_DATA_DIR and the ray extra.

    python bench/score_speed.py --onnx-dir out --turns

--turns, instead: two graphs taking turns in one process, as the Scorer's pair does (docs/api.md):
encode a batch, decode its means, batch after batch, with both graphs loaded `spinning=False`
against the default (each graph's threads spinning between its runs); and one decoder alone,
the same two ways. Batches of 1, 64 and 1024 test images, alternating pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import alternate, print_machine, verdict

from vae_runtime import Decoder, Encoder
from vae_runtime.contract import DECODER_FILE, ENCODER_FILE
from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_runtime.scoring import DEFAULT_ROWS, Scorer

TARGET = 0.70  # the scorer's samples/s over the decoder's at k = 64
TARGET_K = 64


def test_images(data_dir: str | None, count: int) -> tuple[np.ndarray, str]:
    """uint8 (count, 28, 28): MNIST's test images when a data folder is given, else rendered."""
    if data_dir:
        found = sorted(Path(data_dir).glob("t10k-images*"))
        if not found:
            sys.exit(f"score_speed: no t10k-images file in {data_dir}")
        images = read_idx(found[0], IMAGES_MAGIC, limit=count)
        return np.ascontiguousarray(images), f"MNIST test images from {found[0]}"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import render_digits

    return render_digits(count, 0)[0], "rendered digits (set VAE_DATA_DIR for MNIST)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, default=Path("out"), help="vae-export's folder")
    parser.add_argument("--model", type=Path, help="model.pt: also time vae-eval's torch path")
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"), help="MNIST")
    parser.add_argument("--count", type=int, default=10_000, help="test images (10,000)")
    parser.add_argument("--ks", default="1,64,5000", help="values of k, comma-separated")
    parser.add_argument("--repeats", type=int, default=7, help="alternating pairs (>= 5)")
    parser.add_argument("--rows-cap", type=int, default=640_000, help="n x k at most per pass")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--ray", action="store_true", help="vae-score against vae-score --ray")
    parser.add_argument("--turns", action="store_true", help="two graphs in turns, spinning")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a check, no figure")
    args = parser.parse_args()
    if args.ray:
        ray_comparison(args)
        return
    if args.turns:
        turns_comparison(args)
        return
    if args.quick:
        args.count, args.ks, args.repeats, args.rows_cap = 64, "1,8", 5, 512
    ks = [int(k) for k in args.ks.split(",")]
    print_machine("score_speed: the Scorer against the decoder alone (and vae-eval's torch path)")
    images, what = test_images(args.data_dir, args.count)
    scorer = Scorer.load(args.onnx_dir, threads=args.threads)
    decoder = scorer.decoder
    print(f"images: {what}; batch: {DEFAULT_ROWS} decoder rows per run")
    model = None
    if args.model is not None:
        import torch

        from vae_train.checkpoint import load_checkpoint
        from vae_train.evaluate import EvalSettings, evaluate

        torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
        model = load_checkpoint(args.model).build_model(args.model)
    print()
    print("| k | images | scorer images/s | decoder-alone images/s | scorer/decoder | target |")
    print("| ---: | ---: | ---: | ---: | --- | --- |")
    torch_rows = []
    for k in ks:
        n = max(1, min(len(images), args.rows_cap // k))
        x = images[:n]
        z = np.random.default_rng(0).standard_normal((n * k, scorer.latent_dim)).astype(np.float32)

        def score(x: np.ndarray = x, k: int = k) -> None:
            scorer.score(x, k=k, seed=0)

        def decode(z: np.ndarray = z) -> None:
            for start in range(0, z.shape[0], DEFAULT_ROWS):
                decoder.decode_logits(z[start : start + DEFAULT_ROWS], batch_size=DEFAULT_ROWS)

        result = alternate(score, decode, pairs=args.repeats, loops=1, label=f"k={k}, decoder")
        share = result.ratio  # decoder seconds / scorer seconds = scorer's share of samples/s
        target = f">= {TARGET:.2f}: {verdict(share.median, TARGET)}" if k == TARGET_K else ""
        print(
            f"| {k} | {n:,} | {n / result.seconds_a.median:,.0f} | "
            f"{n / result.seconds_b.median:,.0f} | {share.show(2, 'x')} | {target} |"
        )
        if model is not None:
            import torch

            settings = EvalSettings(samples=k, seed=0)

            def torch_eval(x: np.ndarray = x, settings: EvalSettings = settings) -> None:
                evaluate(model, x, settings)

            versus = alternate(score, torch_eval, args.repeats, loops=1, label=f"k={k}, vae-eval")
            torch_rows.append((k, n, versus))
    if torch_rows:
        print()
        print("| k | images | scorer images/s | vae-eval (torch) images/s | scorer speed-up |")
        print("| ---: | ---: | ---: | ---: | --- |")
        for k, n, versus in torch_rows:
            print(
                f"| {k} | {n:,} | {n / versus.seconds_a.median:,.0f} | "
                f"{n / versus.seconds_b.median:,.0f} | {versus.ratio.show(2, 'x')} |"
            )
    if args.quick:
        print("\n(--quick: tiny settings, a check of the script; these are not figures)")


def turns_comparison(args: argparse.Namespace) -> None:
    """Encoder and decoder taking turns, and a decoder alone: spinning off against on."""
    pairs = 5 if args.quick else max(args.repeats, 5)
    min_s = 0.005 if args.quick else 0.2
    print_machine("score_speed --turns: two graphs taking turns in one process, spinning off/on")
    images, what = test_images(args.data_dir, 1024)
    folder = args.onnx_dir
    pair = {
        spin: (
            Encoder.load(folder / ENCODER_FILE, threads=args.threads, spinning=spin),
            Decoder.load(folder / DECODER_FILE, threads=args.threads, spinning=spin),
        )
        for spin in (False, True)
    }
    print(f"images: {what}; spinning=False's seconds against the default's, {pairs} pairs")
    print("| batch | encode then decode, in turns: off over on | decoder alone: off over on |")
    print("| ---: | --- | --- |")
    for batch in (1, 64, 1024):
        x = images[:batch]
        z = pair[True][0].encode(x)[0]

        def turns(spin: bool, x: np.ndarray = x) -> Callable[[], object]:
            encoder, decoder = pair[spin]
            return lambda: decoder.decode(encoder.encode(x)[0])

        def alone(spin: bool, z: np.ndarray = z) -> Callable[[], object]:
            decoder = pair[spin][1]
            return lambda: decoder.decode(z)

        together, apart = (
            alternate(
                make(False), make(True), pairs, min_sample_s=min_s, label=f"{name}, batch {batch}"
            )
            for name, make in (("in turns", turns), ("alone", alone))
        )
        print(f"| {batch} | {together.ratio.show(2, 'x')} | {apart.ratio.show(2, 'x')} |")
    if args.quick:
        print("\n(--quick: tiny settings, a check of the script; these are not figures)")


def ray_comparison(args: argparse.Namespace) -> None:
    """Whole vae-score processes: one process against Ray Data on this machine."""
    if not args.data_dir:
        sys.exit("score_speed --ray: set VAE_DATA_DIR (or --data-dir) to MNIST's IDX folder")
    found = sorted(Path(args.data_dir).glob("t10k-images*"))
    if not found:
        sys.exit(f"score_speed: no t10k-images file in {args.data_dir}")
    pairs = 5 if args.quick else max(args.repeats, 5)
    print_machine("score_speed --ray: vae-score in one process against vae-score --ray")
    command = Path(sys.executable).parent / "vae-score"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = str(args.onnx_dir.resolve())
        common = [str(command), str(found[0]), "--onnx-dir", onnx_dir, "-k", "64", "-f", "-q"]
        single = [*common, "-o", f"{tmp}/scores.csv"]
        on_ray = [*common, "--ray", "--actors", "2", "-o", f"{tmp}/shards"]
        result = alternate(single, on_ray, pairs=pairs, warmup=1, cwd=Path(tmp))
    count = len(read_idx(found[0], IMAGES_MAGIC))
    a, b = result.seconds_a, result.seconds_b
    print(f"\n{count:,} MNIST test images at k = 64, whole processes, {pairs} alternating pairs")
    print("| vae-score | wall s, median (min-max) | images/s, start-up included | peak RSS MB |")
    print("| --- | --- | ---: | ---: |")
    print(
        f"| one process | {a.show(2, ' s')} | {count / a.median:,.0f} | "
        f"{result.peak_mb.get('a', 0):.0f} |"
    )
    print(
        f"| --ray, 2 actors | {b.show(2, ' s')} | {count / b.median:,.0f} | "
        f"{result.peak_mb.get('b', 0):.0f} (the driver) |"
    )
    print(f"--ray's seconds over one process's: {result.ratio.show(2, 'x')}")


if __name__ == "__main__":
    main()
