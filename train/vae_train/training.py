"""The training loop: in-memory MNIST, explicit generators, autograd, one committed set per epoch.

Speed comes from doing no per-image Python work: the training images sit in one uint8 tensor
(N, 784) on the device; each epoch gathers them once in shuffled order, and a batch is a
contiguous slice converted to float on the fly; gradients come from autograd (the model is
written once, in model.py); the step itself sits behind graphs.capture_step, which records it
into a CUDA graph on a GPU and runs it eagerly elsewhere. Reproducibility comes from two
explicit CPU generators (shuffle order, reparameterisation noise) whose states travel in the
checkpoint, so 2 epochs + resume for 3 more is bit for bit 5 epochs straight.

Compute dtype (vae-train --precision): fp32 by default (bit-reproducible); `bf16` runs the
matmuls under `torch.autocast` in bfloat16 (each weight cast once per step: autocast caches the
casts of a forward pass) while the weights, Adam's state, the loss and the checkpoint stay
float32, and only where the device has bf16
arithmetic (`device.require_compute_dtype`).

Nothing is lost: every output is checked before the data is read, and after each finished epoch
model.pt, metrics.jsonl and the figures (samples.png, reconstructions.png, loss.png,
progress.gif) are replaced together (`fileio.Outputs`). A run stopped before its first epoch
ends writes nothing, so an existing model.pt survives even `--force` until the new run has an
epoch to put in its place.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vae_runtime
from vae_runtime import signals
from vae_runtime.contract import PRODUCER
from vae_runtime.errors import (
    Interrupted,
    InvalidArgumentError,
    NumericalError,
    check_float,
    check_int,
)
from vae_runtime.fileio import Outputs
from vae_runtime.images import png_bytes, tile, to_uint8
from vae_runtime.sampling import MAX_SEED, sample_latents

from . import figures, loss_chart
from .adam import Adam
from .checkpoint import (
    COMPUTE_DTYPE_KEY,
    MAX_EPOCH,
    Checkpoint,
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint,
)
from .data import DEFAULT_MIRRORS, MnistImages, binarize, load_mnist, locate_mnist
from .device import (
    Progress,
    check_compute_dtype,
    check_device,
    flush_denormals,
    require_compute_dtype,
    select_device,
)
from .graphs import TrainStep, capture_step
from .model import VAE, VAEConfig, linear_layer, loss_terms

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.png"
RECONSTRUCTIONS_FILE = "reconstructions.png"
LOSS_FILE = "loss.png"
PROGRESS_FILE = "progress.gif"
OUTPUT_FILES = (
    MODEL_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    RECONSTRUCTIONS_FILE,
    LOSS_FILE,
    PROGRESS_FILE,
)
MAX_PROGRESS_FRAMES = 120  # progress.gif keeps this many epochs at most, thinned evenly
MAX_BATCH_SIZE = 1 << 16  # images per step
MAX_LR = 10.0  # Adam at lr 10 already diverges on this model; more is a typo
EVAL_BATCH = 1000  # evaluation holds no graph, so bigger batches are cheaper per image
# Settings whose command-line flag is not their name with dashes (vae_train.cli).
_FLAGS = {COMPUTE_DTYPE_KEY: "--precision"}
_REFRESH_EVERY = 16  # batches between progress updates (each reads the loss: a sync on GPUs)


@dataclass(frozen=True)
class TrainSettings:
    """How to train (not what: the model's shape is VAEConfig). Stored in the checkpoint's `run`.

    `epochs` is the total a run reaches; a resumed run continues until it has that many.
    `compute_dtype` is the training arithmetic, which the command line calls --precision (a
    graph's number format, contract.PRECISIONS, is another thing)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 1
    device: str = "auto"
    compute_dtype: str = "fp32"  # or "bf16": matmuls in bfloat16, everything else float32
    binarize: bool = False  # each epoch's pixels drawn as Bernoulli(intensity)

    def __post_init__(self) -> None:
        # Stored as plain ints and floats whatever was given: the checkpoint keeps them, and a
        # numpy number would not survive its safe load.
        values = {
            "epochs": check_int("epochs", self.epochs, 1, MAX_EPOCH),
            "batch_size": check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE),
            "seed": check_int("seed", self.seed, 0, MAX_SEED - 1),  # seed + 1: the noise's
            "lr": check_float("lr", self.lr, 0.0, MAX_LR),
            "device": check_device(self.device),
            "compute_dtype": check_compute_dtype(self.compute_dtype),
        }
        if not isinstance(self.binarize, bool):
            raise InvalidArgumentError(f"binarize must be True or False, got {self.binarize!r}")
        if values["lr"] == 0.0:
            raise InvalidArgumentError("lr must be > 0, got 0.0")
        for name, value in values.items():
            object.__setattr__(self, name, value)


def train(
    settings: TrainSettings = TrainSettings(),
    config: VAEConfig = VAEConfig(),
    *,
    out_dir: Path | str = Path("."),
    data: MnistImages | None = None,
    data_dir: Path | str | None = None,
    cache_dir: Path | None = None,
    resume: Path | str | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
) -> Checkpoint:
    """Train the VAE; after every epoch replace model.pt, metrics.jsonl, samples.png and
    reconstructions.png in `out_dir` (made if missing) together. Returns the final checkpoint.

    `data` (already in memory) wins over `data_dir`, a folder read as it is, which wins over
    `cache_dir` (downloaded into; see `load_mnist`). With `resume`, the model, optimizer, epoch
    and generator states come from that checkpoint, whose config and settings must match
    `config` and `settings` (except `epochs`, the new total, and `device`). Files already in
    `out_dir` are replaced only with `force`, or when its model.pt is the checkpoint being
    resumed (the run goes on there); `log` receives one line per epoch.

    Raises VaeError subclasses for bad input, NumericalError if the loss stops being finite,
    Interrupted (a KeyboardInterrupt) on Ctrl-C / SIGTERM, saying which epoch model.pt holds.
    """
    out = Path(out_dir)
    model_path = out / MODEL_FILE
    resume_path = Path(resume) if resume is not None else None
    resuming_it = resume_path is not None and _same_file(resume_path, model_path)
    device = select_device(settings.device)
    require_compute_dtype(settings.compute_dtype, device)
    reads = [] if data is not None else locate_mnist(data_dir, cache_dir)
    if resume_path is not None and not resuming_it:
        reads.append(resume_path)
    targets = [out / name for name in OUTPUT_FILES]
    with Outputs(targets, reads=reads, force=force or resuming_it, create_dirs=True) as outputs:
        previous = None
        if resume_path is not None:
            previous = load_checkpoint(resume_path)
            previous.build_model(resume_path)  # the weights fit its config?
            _check_resumable(previous, settings, config, resume_path)
        if data is None:
            data = load_mnist(data_dir, cache_dir=cache_dir, mirrors=mirrors, log=log)
        run = _Run(settings, config, device, data, previous, resume_path)
        if not resuming_it:
            run.saved = 0  # model.pt in out_dir holds nothing of this run yet
        with flush_denormals(), _collector_skips_what_exists():
            return run.fit(outputs, model_path, log, progress or Progress(enabled=False))


@contextlib.contextmanager
def _collector_skips_what_exists() -> Iterator[None]:
    """Move every object that exists now (the modules torch and the rest imported, the data, the
    model) out of the garbage collector's sight while the epochs run, and back after. They live
    as long as the run; left in view, each of the collector's full passes walks all of them
    (~170,000 after `import torch`), and one such pass fell inside a 5-epoch run's first epochs:
    ~70 ms of GC (`gc.callbacks` timings, docs/vae-train.md#speed). A caller that froze objects
    itself keeps them frozen."""
    if gc.get_freeze_count():  # someone else's freeze: leave it as it is
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_resumable(
    ckpt: Checkpoint, settings: TrainSettings, config: VAEConfig, path: Path
) -> None:
    if ckpt.optimizer is None or set(ckpt.rng) != {"shuffle", "noise"}:
        raise CheckpointError(f"{path}: holds no optimizer or generator state; cannot resume it")
    if ckpt.config != config:
        raise InvalidArgumentError(
            f"{path} holds a model with {ckpt.config.to_dict()}, but {config.to_dict()} was asked "
            "for; pass the same --hidden-dim/--latent-dim to resume"
        )
    # Runs written before --precision and --binarize existed were fp32 and greyscale.
    stored_run = {COMPUTE_DTYPE_KEY: "fp32", "binarize": False, **ckpt.run}
    for name in ("batch_size", "lr", "seed", COMPUTE_DTYPE_KEY, "binarize"):
        stored, given = stored_run.get(name), getattr(settings, name)
        if stored != given:
            flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
            if name == "binarize":
                was, now = ("--binarize", "without") if stored else ("no --binarize", "with")
                raise InvalidArgumentError(
                    f"{path} was trained with {was}, got a resume {now} it; resume it as it "
                    "was trained"
                )
            shown = repr(stored)[:40] if name != COMPUTE_DTYPE_KEY else str(stored)[:40]
            raise InvalidArgumentError(
                f"{path} was trained with {flag} {shown}, got {given}; pass {flag} {shown} "
                "to resume it"
            )
    if ckpt.epoch >= settings.epochs:
        raise InvalidArgumentError(
            f"{path} has already trained {ckpt.epoch} epochs and --epochs is {settings.epochs} "
            f"(the total); pass --epochs above {ckpt.epoch} to train further"
        )


class _Run:
    """One training run's state: model, optimizer, generators, data on the device, history."""

    def __init__(
        self,
        settings: TrainSettings,
        config: VAEConfig,
        device: torch.device,
        data: MnistImages,
        previous: Checkpoint | None = None,
        previous_path: Path | None = None,
    ) -> None:
        self.settings, self.config, self.device = settings, config, device
        self.source = data.source
        # (N, 784) uint8 on the device: 47 MB for all of MNIST's training set.
        self.train_images = _as_rows(data.train, device)
        # --binarize: the test set is binarised once, from the seed (the same rule as vae-eval)
        test = binarize(data.test, settings.seed) if settings.binarize else data.test
        self.test_images = _as_rows(test, device)
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, globals untouched
            torch.manual_seed(settings.seed)
            layer = linear_layer(device, settings.compute_dtype)
            self.model = VAE(config, layer).to(device)
        self.optimizer = Adam(self.model.parameters(), lr=settings.lr)
        self.shuffle_gen = torch.Generator().manual_seed(settings.seed)
        self.noise_gen = torch.Generator().manual_seed(settings.seed + 1)
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []
        # progress.gif's frames: (epoch, uint8 (25, 28, 28) decoded latents), in the checkpoint
        self.frames: list[tuple[int, torch.Tensor]] = []
        self._step: TrainStep | None = None  # the captured training step (cuda), once made
        if previous is not None:
            self._restore(previous, previous_path or Path("checkpoint"))
        self.saved = self.epoch  # epochs model.pt holds (a resumed one: what it held)

    def _restore(self, ckpt: Checkpoint, path: Path) -> None:
        self.model.load_state_dict(ckpt.state_dict)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.shuffle_gen.set_state(ckpt.rng["shuffle"])
            self.noise_gen.set_state(ckpt.rng["noise"])
            self._trial_step(ckpt)
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise CheckpointError(f"{path}: resume state is damaged ({detail})") from None
        self.epoch, self.metrics = ckpt.epoch, list(ckpt.metrics)
        if ckpt.progress:
            epochs, images = ckpt.progress["epochs"], ckpt.progress["images"]
            self.frames = [(int(e), images[i]) for i, e in enumerate(epochs.tolist())]

    def _trial_step(self, ckpt: Checkpoint) -> None:
        """One Adam step from the restored state on a copy of the model: whatever torch would
        choke on at the first real step (a missing moment, a bad lr, betas or eps, a shape)
        shows up here, as a damaged checkpoint, and the run itself is untouched."""
        model = copy.deepcopy(self.model)
        optimizer = Adam(model.parameters(), lr=self.settings.lr)
        optimizer.load_state_dict(ckpt.optimizer)  # copies the moments: the run's stay as they are
        for p in optimizer.params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise ValueError("a step from Adam's state gives non-finite weights")

    def _snapshot(self) -> Checkpoint:
        """The state now, as a checkpoint (tensors copied to the CPU)."""
        return Checkpoint(
            config=self.config,
            state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            run={
                "epochs": self.settings.epochs,
                "batch_size": self.settings.batch_size,
                "lr": self.settings.lr,
                "seed": self.settings.seed,
                "device": str(self.device),
                "data": self.source,
                COMPUTE_DTYPE_KEY: self.settings.compute_dtype,
                "binarize": self.settings.binarize,
            },
            epoch=self.epoch,
            metrics=list(self.metrics),
            optimizer=_copy_to_cpu(self.optimizer.state_dict()),
            rng={"shuffle": self.shuffle_gen.get_state(), "noise": self.noise_gen.get_state()},
            versions={"torch": str(torch.__version__), PRODUCER: vae_runtime.__version__},
            progress={
                "epochs": torch.tensor([e for e, _ in self.frames], dtype=torch.int64),
                "images": torch.stack([f for _, f in self.frames])
                if self.frames
                else torch.zeros((0, 25, 28, 28), dtype=torch.uint8),
            },
        )

    def _commit(self, outputs: Outputs, out: Path, ckpt: Checkpoint, samples: bytes) -> None:
        """Stage model.pt, metrics.jsonl and the four figures, and replace the six together."""
        outputs.write_bytes(
            out / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in ckpt.metrics).encode()
        )
        outputs.write_bytes(out / SAMPLES_FILE, samples)
        outputs.write_bytes(out / RECONSTRUCTIONS_FILE, self._reconstructions())
        title = f"vae-train {self.config.hidden_dim}-{self.config.latent_dim}, {self.source}"
        if self.settings.binarize:
            title += ", binarised"
        outputs.write_bytes(out / LOSS_FILE, loss_chart.loss_png(ckpt.metrics, title))
        frames = [
            figures.progress_frame(f.numpy(), e, self.settings.epochs) for e, f in self.frames
        ]
        outputs.write_bytes(out / PROGRESS_FILE, figures.progress_gif(frames))
        outputs.write_bytes(out / MODEL_FILE, checkpoint_bytes(ckpt))
        with signals.deferred():  # what is on disk and what the interrupted line says agree
            outputs.commit()
            self.saved = ckpt.epoch

    def fit(
        self,
        outputs: Outputs,
        model_path: Path,
        log: Callable[[str], None] | None,
        progress: Progress,
    ) -> Checkpoint:
        last = self._snapshot()
        try:
            while self.epoch < self.settings.epochs:
                epoch = self.epoch + 1
                start = time.perf_counter()
                progress.start()
                train_bce, train_kl = self._train_epoch(epoch, progress, model_path)
                test_bce, test_kl = self._evaluate(epoch)
                seconds = time.perf_counter() - start
                progress.clear()
                if not math.isfinite(test_bce + test_kl):
                    raise self._nonfinite(test_bce + test_kl, "on the test set", epoch, model_path)
                record = {
                    "epoch": epoch,
                    "train_loss": train_bce + train_kl,
                    "train_bce": train_bce,
                    "train_kl": train_kl,
                    "test_loss": test_bce + test_kl,
                    "test_bce": test_bce,
                    "test_kl": test_kl,
                    "seconds": round(seconds, 4),
                }
                self.epoch, self.metrics = epoch, [*self.metrics, record]
                samples = self._samples(epoch)
                last = self._snapshot()
                self._commit(outputs, model_path.parent, last, samples)
                if log is not None:
                    log(
                        f"epoch {epoch:>3}/{self.settings.epochs}  train "
                        f"{record['train_loss']:8.2f}  test {record['test_loss']:8.2f} "
                        f"(bce {test_bce:.2f} + kl {test_kl:.2f})  {seconds:6.2f} s"
                    )
        except KeyboardInterrupt as exc:
            progress.clear()
            detail = (
                f"{model_path} holds {self.saved} finished epoch(s); continue with "
                f"--resume {model_path}"
                if self.saved
                else "no epoch had finished, so no file was changed"
            )
            if isinstance(exc, Interrupted):
                exc.detail = detail
                raise
            raise Interrupted(signal.SIGINT, detail) from None
        return last

    def _train_epoch(self, epoch: int, progress: Progress, path: Path) -> tuple[float, float]:
        """One pass over the training set; returns mean BCE and KL per image (nats)."""
        self.model.train()
        n = self.train_images.shape[0]
        label = f"epoch {epoch}/{self.settings.epochs}"
        order = torch.randperm(n, generator=self.shuffle_gen).to(self.device)
        # All of the epoch's noise in one draw, (N, latent_dim); row i belongs to position i.
        eps = torch.randn(n, self.config.latent_dim, generator=self.noise_gen).to(self.device)
        shuffled = self.train_images.index_select(0, order)  # (N, 784) uint8, one gather
        return self._batches(shuffled, eps, progress, label, path, epoch)

    def _batches(
        self,
        shuffled: torch.Tensor,
        eps: torch.Tensor,
        progress: Progress,
        label: str,
        path: Path,
        epoch: int,
    ) -> tuple[float, float]:
        """The epoch's steps over `shuffled`, in batches; returns mean BCE and KL per image."""
        bs = self.settings.batch_size
        n = shuffled.shape[0]
        n_batches = math.ceil(n / bs)
        step = self._step_for(shuffled[:bs], eps[:bs])
        sums = step.sums
        sums.zero_()
        # Each read of the running loss waits for the device: on a GPU, a few per epoch
        every = _REFRESH_EVERY if self.device.type == "cpu" else max(_REFRESH_EVERY, n_batches // 4)
        for b, start in enumerate(range(0, n, bs)):
            step(shuffled[start : start + bs], eps[start : start + bs])
            if b == 0 or (b + 1) % every == 0 or b + 1 == n_batches:
                loss = float(sums.sum()) / min(n, (b + 1) * bs)
                if not math.isfinite(loss):
                    raise self._nonfinite(loss, "in training", epoch, path)
                progress.update(label, b + 1, n_batches, loss)
        return float(sums[0]) / n, float(sums[1]) / n

    def _step_for(self, x: torch.Tensor, eps: torch.Tensor) -> TrainStep:
        """The training step (graphs.capture_step): recorded once per run where CUDA graphs
        are used, eager (and rebuilt each epoch, at no cost) elsewhere."""
        if self._step is not None:
            return self._step
        # running sums stay on the device (no sync per batch); mps has no float64
        acc = torch.float32 if self.device.type == "mps" else torch.float64
        sums = torch.zeros(2, dtype=acc, device=self.device)
        step = capture_step(
            self._loss,
            self.optimizer,
            x,
            eps,
            sums,
            binarize=self.settings.binarize,
            compute_dtype=self.settings.compute_dtype,
        )
        if step.graph is not None:
            self._step = step
        return step

    def _loss(self, images: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed BCE and KL of a batch of uint8 images (B, 784), as the seed sums them."""
        x = images.float().div_(255.0)  # (B, 784) in [0, 1]
        if self.settings.binarize:  # dynamic binarisation, from the run's noise generator
            u = torch.rand(x.shape, generator=self.noise_gen).to(self.device)
            x = torch.lt(u, x).float()
        if self.settings.compute_dtype == "bf16":  # the matmuls in bf16; the loss in float32
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = self.model(x, eps)
            logits, mu, logvar = (t.float() for t in out)
        else:
            logits, mu, logvar = self.model(x, eps)
        return loss_terms(logits, x, mu, logvar)

    @torch.inference_mode()
    def _evaluate(self, epoch: int) -> tuple[float, float]:
        """Mean test BCE and KL per image with z sampled (the ELBO), from a generator seeded by
        (seed, epoch) so evaluation never shifts the training noise and resumes reproduce it."""
        model = self.model.eval()
        gen = torch.Generator().manual_seed(_eval_seed(self.settings.seed, epoch))
        n = self.test_images.shape[0]
        bce_sum = kl_sum = 0.0
        for start in range(0, n, EVAL_BATCH):
            x = self.test_images[start : start + EVAL_BATCH].float().div_(255.0)
            eps = torch.randn(x.shape[0], self.config.latent_dim, generator=gen).to(self.device)
            logits, mu, logvar = model(x, eps)
            bce, kl = loss_terms(logits, x, mu, logvar)
            bce_sum += float(bce)
            kl_sum += float(kl)
        return bce_sum / n, kl_sum / n

    @torch.inference_mode()
    def _samples(self, epoch: int) -> bytes:
        """samples.png: 25 latents from the runtime's sampler (same seed, same latents as
        vae-generate), decoded; the same 25 images become this epoch's progress.gif frame."""
        model = self.model.eval()
        z = torch.from_numpy(sample_latents(25, self.config.latent_dim, self.settings.seed))
        samples = model.decode(z.to(self.device)).cpu().numpy().reshape(25, 28, 28)
        grid = tile(samples, 5, 5)
        pixels = torch.from_numpy(to_uint8(samples).copy())  # (25, 28, 28)
        self.frames.append((epoch, pixels))
        if len(self.frames) > MAX_PROGRESS_FRAMES:  # every other older one goes; the last stays
            self.frames = [*self.frames[:-1:2], self.frames[-1]]
        return png_bytes(grid)

    @torch.inference_mode()
    def _reconstructions(self) -> bytes:
        """reconstructions.png: 8 test images above their reconstructions from the posterior
        mean (binarised test images with --binarize)."""
        model = self.model.eval()
        x = self.test_images[:8].float().div_(255.0)  # (8, 784)
        mu, _ = model.encode(x)
        recon = model.decode(mu)  # the posterior mean's reconstruction, no sampling noise
        pair = torch.cat([x, recon]).cpu().numpy().reshape(-1, 28, 28)
        return png_bytes(tile(pair, 2, x.shape[0]))

    def _nonfinite(self, value: float, where: str, epoch: int, path: Path) -> NumericalError:
        kept = f"{path} keeps epoch {self.saved}" if self.saved else "no file was changed"
        return NumericalError(
            f"the loss became {value} {where} in epoch {epoch}; training stopped and {kept}; "
            "try a smaller --lr"
        )


def _as_rows(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> uint8 (N, 784) on `device`, without copying on the CPU."""
    flat = np.ascontiguousarray(images).reshape(images.shape[0], -1)
    if not flat.flags.writeable:  # torch warns on read-only numpy memory; it never writes here
        flat = flat.copy()
    return torch.from_numpy(flat).to(device)


def _copy_to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _copy_to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_to_cpu(v) for v in value]
    return value


def _eval_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
