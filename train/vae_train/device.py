"""Where training runs: the device, its compute dtype, subnormal flushing, and the progress line.

Kept apart from the training loop (training.py), which only asks for a device, wraps its work in
`flush_denormals()` and reports progress through `Progress`.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import torch

from vae_runtime.errors import InvalidArgumentError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")
DEVICES = "auto, cpu, cuda, cuda:N, mps"
PLAIN_EVERY = 5.0  # seconds between progress lines where the stream is not a terminal
# The arithmetic of training (vae-train --precision): not a graph's number format, which is
# vae_runtime.contract.PRECISIONS (fp32, int8, fp16).
COMPUTE_DTYPES = ("fp32", "bf16")


def check_device(name: str) -> str:
    """The device rule: one of DEVICES."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise InvalidArgumentError(f"device must be one of {DEVICES}, got {name!r}")
    return name


def select_device(name: str) -> torch.device:
    """'auto' -> cuda, else mps, else cpu; an explicit device must be available here."""
    check_device(name)
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


def check_compute_dtype(name: str) -> str:
    """The compute-dtype rule: one of COMPUTE_DTYPES (the command line's --precision)."""
    if not isinstance(name, str) or name not in COMPUTE_DTYPES:
        raise InvalidArgumentError(
            f"compute dtype: --precision must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}"
        )
    return name


def bf16_missing(device: torch.device) -> str:
    """Why `device` cannot do bf16 matmuls fast ("" when it can). A CPU needs AVX512-BF16 or AMX
    (without them oneDNN emulates bf16, slower than fp32); torch's own probes answer, the ones
    its CPU dispatch uses (`torch.cpu._is_avx512_bf16_supported`, `_is_amx_tile_supported`:
    cpuinfo's view of CPUID, not /proc/cpuinfo). On a CUDA GPU bf16 is not offered: the
    captured fp32 step is launch-bound, and bf16 was measured slower there."""
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if any(getattr(torch.cpu, name, lambda: False)() for name in probes):
            return ""
        return (
            "this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated, slower than fp32"
        )
    if device.type == "cuda":
        # Refused rather than silently trained in fp32, so that the checkpoint's compute dtype
        # is what ran: at batch 128 the step is launch-bound and bf16 only adds casts.
        return (
            "on a GPU this model's step is bound by kernel launches, not arithmetic, so bf16 "
            "adds casts and buys nothing (docs/vae-train.md#gpu)"
        )
    return (
        f"bf16 training is not offered on {device.type} (only on CPUs with AVX512-BF16 or AMX, "
        "and CUDA GPUs)"
    )


def require_compute_dtype(compute_dtype: str, device: torch.device) -> None:
    """Refuse (InvalidArgumentError) a compute dtype the device cannot run fast; fp32 runs
    anywhere."""
    if check_compute_dtype(compute_dtype) == "bf16" and (reason := bf16_missing(device)):
        raise InvalidArgumentError(f"--precision bf16 refused: {reason}; use --precision fp32")


@contextmanager
def flush_denormals() -> Iterator[None]:
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


class Progress:
    """Epoch (or stage), items done, running loss, time left. On a terminal, one self-rewriting
    line; elsewhere (a log file, a pipe), a plain line at most every `every` seconds, so that a
    log shows long work going on too. Nothing at all when not `enabled` (--quiet)."""

    def __init__(
        self, stream: TextIO | None = None, enabled: bool = True, every: float = PLAIN_EVERY
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.every = every
        self._start = self._last = time.perf_counter()

    def start(self) -> None:
        self._start = self._last = time.perf_counter()

    def update(self, epoch: str, done: int, total: int, loss: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self._start
        left = elapsed / done * (total - done) if done else math.nan
        eta = f"{left:4.0f} s left" if math.isfinite(left) else ""
        if not self.tty:
            if now - self._last >= self.every:
                self._last = now
                line = f"{epoch}  {done}/{total}  loss {loss:.2f}  {eta.strip()}"
                self.stream.write(line.rstrip() + "\n")
                self.stream.flush()
            return
        width = 24
        bar = "#" * (width * done // max(total, 1))
        self.stream.write(
            f"\r{epoch}  [{bar:<{width}}] {done}/{total}  loss {loss:8.2f}  {eta}\033[K"
        )
        self.stream.flush()

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
