"""The training loop: in-memory MNIST, explicit generators, a checkpoint per epoch, resume, faults.

Speed comes from doing no per-image Python work: the training images sit in one uint8 tensor
(N, 784) on the device; each epoch gathers them once in shuffled order, and a batch is a
contiguous slice converted to float on the fly. Reproducibility comes from two explicit CPU
generators (shuffle order, reparameterisation noise) whose states travel in the checkpoint, so
2 epochs + resume for 3 more is bit for bit 5 epochs straight.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import vae_runtime
from vae_runtime.contract import PRODUCER
from vae_runtime.errors import InvalidArgumentError, NumericalError, OutputError
from vae_runtime.fileio import atomic_output, check_output_dir
from vae_runtime.images import save_png, tile
from vae_runtime.sampling import sample_latents

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data import DEFAULT_MIRRORS, MnistImages, load_mnist
from .model import VAE, VAEConfig, loss_and_grads, loss_terms

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.png"
RECONSTRUCTIONS_FILE = "reconstructions.png"
EVAL_BATCH = 1000  # evaluation holds no graph, so bigger batches are cheaper per image
_REFRESH_EVERY = 16  # batches between progress updates (each reads the loss: a sync on GPUs)
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES = "auto, cpu, cuda, cuda:N, mps"


@dataclass(frozen=True)
class TrainSettings:
    """How to train (not what: the model's shape is VAEConfig). Stored in the checkpoint's `run`.

    `epochs` is the total a run reaches; a resumed run continues until it has that many."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgumentError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _DEVICE_PATTERN.fullmatch(self.device):
            raise InvalidArgumentError(f"device must be one of {DEVICES}, got {self.device!r}")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training; the message says which checkpoint holds what."""


def select_device(name: str) -> torch.device:
    """'auto' -> cuda, else mps, else cpu; an explicit device must be available here."""
    if not _DEVICE_PATTERN.fullmatch(name):
        raise InvalidArgumentError(f"device must be one of {DEVICES}, got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise InvalidArgumentError(
                f"device {name!r} is not available (this torch sees {count} CUDA device(s)); "
                "use --device cpu or --device auto"
            )
    if name == "mps" and not has_mps:
        raise InvalidArgumentError("device 'mps' is not available here; use --device cpu or auto")
    return torch.device(name)


def train(
    settings: TrainSettings = TrainSettings(),
    config: VAEConfig = VAEConfig(),
    *,
    out_dir: Path | str = Path("."),
    data: MnistImages | None = None,
    data_dir: Path | str | None = None,
    resume: Path | str | None = None,
    force: bool = False,
    quiet: bool = False,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
) -> Checkpoint:
    """Train the VAE and write model.pt (after every epoch), metrics.jsonl, samples.png and
    reconstructions.png into `out_dir`, each atomically. Returns the final checkpoint.

    `data` (already in memory) wins over `data_dir`, which wins over $VAE_DATA_DIR and the
    download cache (see `load_mnist`). With `resume`, the model, optimizer, epoch and generator
    states come from that checkpoint, whose config and settings must match `config` and
    `settings` (except `epochs`, the new total, and `device`). A model.pt already in `out_dir`
    is replaced only with `force`, or when it is the checkpoint being resumed.

    Raises VaeError subclasses for bad input, NumericalError if the loss stops being finite,
    TrainingInterrupted on Ctrl-C / SIGTERM after saving the last finished epoch.
    """
    out = Path(out_dir)
    _check_out_dir(out)  # fail before any work, not after ten epochs
    existing = out / MODEL_FILE
    resuming_it = resume is not None and Path(resume).resolve() == existing.resolve()
    if existing.exists() and not (force or resuming_it):
        raise OutputError(
            f"{existing} already exists; continue it with --resume {existing}, start over with "
            "--force, or choose another --out"
        )
    device = select_device(settings.device)
    previous = load_checkpoint(resume) if resume is not None else None
    if previous is not None:
        _check_resumable(previous, settings, config, Path(resume))  # type: ignore[arg-type]
        previous.build_model(Path(resume))  # type: ignore[arg-type]  # weights fit the config?
    console = Console(quiet=quiet, highlight=False)
    if data is None:
        data = load_mnist(data_dir, mirrors=mirrors, log=console.print)
    try:  # created only now, so that a run refused above leaves no empty folder behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc.strerror}") from None
    run = _Run(settings, config, device, out, data, previous)
    with _signals_raise_interrupt(), _flush_denormals(), _progress(console, quiet) as progress:
        return run.fit(console, progress)


def _check_out_dir(out: Path) -> None:
    """`out` must be a writable folder, or be creatable: the nearest existing folder above it
    must be a writable folder (the missing part is made when training starts)."""
    if out.exists():
        check_output_dir(out)
        return
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output folder {out}: {parent} is not a writable folder")


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
    for name in ("batch_size", "lr", "seed"):
        stored, given = ckpt.run.get(name), getattr(settings, name)
        if stored != given:
            flag = "--" + name.replace("_", "-")
            raise InvalidArgumentError(
                f"{path} was trained with {flag} {stored}, got {given}; pass {flag} {stored} "
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
        out: Path,
        data: MnistImages,
        previous: Checkpoint | None,
    ) -> None:
        self.settings, self.config, self.device, self.out = settings, config, device, out
        self.source = data.source
        # (N, 784) uint8 on the device: 47 MB for all of MNIST's training set.
        self.train_images = _as_rows(data.train, device)
        self.test_images = _as_rows(data.test, device)
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, globals untouched
            torch.manual_seed(settings.seed)
            self.model = VAE(config).to(device)
        fused = device.type in ("cpu", "cuda")  # one kernel per step instead of ~10 per tensor
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr, fused=fused)
        self.shuffle_gen = torch.Generator().manual_seed(settings.seed)
        self.noise_gen = torch.Generator().manual_seed(settings.seed + 1)
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []
        if previous is not None:
            self._restore(previous)
        self.last_good = self._snapshot()  # what an interrupt saves: the last finished epoch

    def _restore(self, ckpt: Checkpoint) -> None:
        self.model.load_state_dict(ckpt.state_dict)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)  # type: ignore[arg-type]
            self.shuffle_gen.set_state(ckpt.rng["shuffle"])
            self.noise_gen.set_state(ckpt.rng["noise"])
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"resume state is damaged: {str(exc).splitlines()[0]}") from None
        self.epoch, self.metrics = ckpt.epoch, list(ckpt.metrics)

    def _snapshot(self) -> Checkpoint:
        """The state now, copied (the live tensors keep changing), as a checkpoint."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return Checkpoint(
            config=self.config,
            state_dict=state,
            run={
                "epochs": self.settings.epochs,
                "batch_size": self.settings.batch_size,
                "lr": self.settings.lr,
                "seed": self.settings.seed,
                "device": str(self.device),
                "data": self.source,
            },
            epoch=self.epoch,
            metrics=list(self.metrics),
            optimizer=_copy_to_cpu(self.optimizer.state_dict()),
            rng={"shuffle": self.shuffle_gen.get_state(), "noise": self.noise_gen.get_state()},
            versions={"torch": str(torch.__version__), PRODUCER: vae_runtime.__version__},
        )

    def _save(self, ckpt: Checkpoint) -> None:
        save_checkpoint(ckpt, self.out / MODEL_FILE)
        lines = "".join(json.dumps(m) + "\n" for m in ckpt.metrics)
        with atomic_output(self.out / METRICS_FILE) as tmp:
            tmp.write_text(lines)

    def fit(self, console: Console, progress: Progress | None) -> Checkpoint:
        model_path = self.out / MODEL_FILE
        n_batches = math.ceil(self.train_images.shape[0] / self.settings.batch_size)
        saved_epoch = -1
        try:
            while self.epoch < self.settings.epochs:
                epoch = self.epoch + 1
                start = time.perf_counter()
                task = None
                if progress is not None:
                    task = progress.add_task(
                        f"epoch {epoch}/{self.settings.epochs}", total=n_batches, loss="-"
                    )
                update = _make_update(progress, task, epoch, self.last_good.epoch, model_path)
                train_bce, train_kl = self._train_epoch(update)
                test_bce, test_kl = self._evaluate(epoch)
                seconds = time.perf_counter() - start
                if progress is not None and task is not None:
                    progress.remove_task(task)
                if not math.isfinite(test_bce + test_kl):
                    raise _nonfinite(
                        test_bce + test_kl,
                        "on the test set",
                        epoch,
                        self.last_good.epoch,
                        model_path,
                    )
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
                self.last_good = self._snapshot()
                self._save(self.last_good)
                saved_epoch = epoch
                console.print(
                    f"epoch {epoch:>3}/{self.settings.epochs}  train {record['train_loss']:8.2f}  "
                    f"test {record['test_loss']:8.2f} (bce {test_bce:.2f} + kl {test_kl:.2f})  "
                    f"{seconds:6.2f} s"
                )
        except KeyboardInterrupt:
            if saved_epoch != self.last_good.epoch:
                self._save(self.last_good)
            raise TrainingInterrupted(
                f"interrupted during epoch {self.last_good.epoch + 1}; {model_path} holds "
                f"{self.last_good.epoch} finished epoch(s); continue with --resume {model_path}"
            ) from None
        self._write_figures()
        return self.last_good

    def _train_epoch(self, update: Callable[[int, float], None]) -> tuple[float, float]:
        """One pass over the training set; returns mean BCE and KL per image (nats)."""
        model, optimizer, bs = self.model.train(), self.optimizer, self.settings.batch_size
        n = self.train_images.shape[0]
        order = torch.randperm(n, generator=self.shuffle_gen).to(self.device)
        # All of the epoch's noise in one draw, (N, latent_dim); row i belongs to position i.
        eps = torch.randn(n, self.config.latent_dim, generator=self.noise_gen).to(self.device)
        shuffled = self.train_images.index_select(0, order)  # (N, 784) uint8, one gather
        # running sums stay on the device (no sync per batch); mps has no float64
        acc = torch.float32 if self.device.type == "mps" else torch.float64
        bce_sum = torch.zeros((), dtype=acc, device=self.device)
        kl_sum = torch.zeros((), dtype=acc, device=self.device)
        for b, start in enumerate(range(0, n, bs)):
            x = shuffled[start : start + bs].float().div_(255.0)  # (B, 784) in [0, 1]
            # the loss summed over the batch (as the seed does) and its gradient, by hand
            bce, kl = loss_and_grads(model, x, eps[start : start + bs])
            optimizer.step()
            bce_sum += bce
            kl_sum += kl
            if b == 0 or (b + 1) % _REFRESH_EVERY == 0:  # the first too: no "nan" on the bar
                update(b + 1, float(bce_sum + kl_sum) / min(n, (b + 1) * bs))
        total = float(bce_sum + kl_sum) / n
        update(math.ceil(n / bs), total)
        return float(bce_sum) / n, float(kl_sum) / n

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
    def _write_figures(self) -> None:
        """samples.png: 25 latents from the runtime's sampler (same seed, same latents as
        vae-generate), decoded; reconstructions.png: 8 test images above their reconstructions."""
        model = self.model.eval()
        z = torch.from_numpy(sample_latents(25, self.config.latent_dim, self.settings.seed))
        samples = model.decode(z.to(self.device)).cpu().numpy().reshape(25, 28, 28)
        save_png(tile(samples, 5, 5), self.out / SAMPLES_FILE)
        x = self.test_images[:8].float().div_(255.0)  # (8, 784)
        mu, _ = model.encode(x)
        recon = model.decode(mu)  # the posterior mean's reconstruction, no sampling noise
        pair = torch.cat([x, recon]).cpu().numpy().reshape(-1, 28, 28)
        save_png(tile(pair, 2, x.shape[0]), self.out / RECONSTRUCTIONS_FILE)


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


def _nonfinite(value: float, where: str, epoch: int, good: int, path: Path) -> NumericalError:
    kept = f"{path} keeps epoch {good}" if good else f"no checkpoint was written to {path}"
    return NumericalError(
        f"the loss became {value} {where} in epoch {epoch}; training stopped and {kept}; "
        "try a smaller --lr"
    )


def _make_update(
    progress: Progress | None, task: Any, epoch: int, good: int, path: Path
) -> Callable[[int, float], None]:
    def update(done: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise _nonfinite(loss, "in training", epoch, good, path)
        if progress is not None:
            progress.update(task, completed=done, loss=f"{loss:.2f}")

    return update


@contextmanager
def _progress(console: Console, quiet: bool) -> Iterator[Progress | None]:
    if quiet or not console.is_terminal:  # a bar in a log file or a pipe is only noise
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bar:
        yield bar


@contextmanager
def _flush_denormals() -> Iterator[None]:
    """Treat subnormal floats as zero while training. ReLU units that die leave Adam moments that
    decay geometrically into the subnormal range (a quarter of fc1's after 10 epochs), and
    arithmetic on subnormals is slow on many x86 cores (on this AMD host the fused Adam step is
    ~15% slower with them; Intel cores pay far more). Values below 1.2e-38 carry nothing for
    this model. Restored to torch's default (off) afterwards."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


@contextmanager
def _signals_raise_interrupt() -> Iterator[None]:
    """Make SIGTERM behave like Ctrl-C (KeyboardInterrupt) while training, in the main thread."""
    if threading.current_thread() is not threading.main_thread():  # signal() would refuse
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
