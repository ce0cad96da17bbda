"""The one way every bench measures: alternating pairs, per-pair ratios, median and spread.

    python bench/measure.py          # prints the machine block (what `make bench` prints first)

Two contenders, A and B, run in pairs: A B, B A, A B, B A, ... (the order flips every other pair,
so a machine that speeds up or slows down during the run favours neither). Each pair gives one
ratio, B's seconds over A's: how many times faster A is than B. The figure is the median of the
pairs' ratios (at least MIN_PAIRS), printed with its spread: min-max and the interquartile range.
Never a best-of, never a ratio of medians taken apart, never a median of per-seed ratios.

Every sample starts after a pause of SETTLE_S. An onnxruntime session's thread pool keeps its
threads spinning for a while after each run, on the cores that the other contender's threads
then need, so the sample after a switch of contender ran slower. Two sessions of the same fp32
decoder file in one process, batch 1024, 9 pairs, twice (2026-12-05): with no pause the pairs
where A ran first read 0.94-1.45x and those where B did 0.76-0.81x (`order_effect` 1.63, 1.66),
and the int8 decoder's pairs spanned 1.65-2.13x within one run; with 50 ms, 0.99-1.05x and
0.99-1.02x (1.01, 1.02). A pause is also what a deployed process sees between bursts. If the
pairs of one order still differ from those of the other by more than ORDER_WARNING,
`alternate_samples` says so on stderr: the median is then not to be quoted.

A contender is either a callable (timed in-process with `time.perf_counter`, `loops` calls per
sample, calibrated so that a sample lasts at least `min_sample_s`) or a command (a list of
arguments: a whole process, its wall time and its peak RSS from `wait4`).

The runner is this module's own, not a maintained tool, for these reasons:
- hyperfine (Debian's 1.15) runs all of one command's runs, then all of the next's; it has no
  option that interleaves two commands pair by pair, so slow drift on a shared machine lands on
  one side. Its statistics (mean, min-max) are of each command apart, not of per-pair ratios.
- pyperf measures one benchmark per run in its own worker processes, calibrating and spawning
  20 of them by default, and compares separate runs afterwards (`compare_to`); it does not
  alternate two contenders either, owns the script's command line (its Runner parses sys.argv)
  and adds seconds of calibration to every figure. Its value, stable timings of one function,
  matters less here than cancelling drift between two.
Both would add a dependency for a loop of 30 lines, which is tested in tests/test_bench_measure.py.

`machine()` is the block printed at the top of every bench: date, CPU model and the flags that
matter here (avx2, avx512f, avx512_vnni, avx512_bf16, amx), cores (affinity), memory, the
versions of python, numpy, onnxruntime and torch (read from the installed metadata: importing
torch would change what the torch-free benches measure) and the threading environment variables.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

MIN_PAIRS = 5
SETTLE_S = 0.05  # the pause before every sample (see above)
ORDER_WARNING = 1.10  # A-first pairs' median over B-first pairs' median (or its inverse)
FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OMP_NUM_THREADS",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "MKL_NUM_THREADS",
    "VAE_TUNE_THREADS",
)

Contender = Callable[[], object] | Sequence[str]


@dataclass(frozen=True)
class Spread:
    """Median of some values, with their min-max and interquartile range."""

    median: float
    low: float
    high: float
    q1: float
    q3: float
    n: int

    def show(self, digits: int = 2, unit: str = "") -> str:
        """'2.41x (2.20-2.60, IQR 2.30-2.50, 7 pairs)' for unit 'x'."""
        f = f"{{:.{digits}f}}"
        what = "pairs" if unit == "x" else "runs"
        return (
            f"{f.format(self.median)}{unit} ({f.format(self.low)}-{f.format(self.high)}, "
            f"IQR {f.format(self.q1)}-{f.format(self.q3)}, {self.n} {what})"
        )


def spread(values: Sequence[float]) -> Spread:
    """The median, min-max and quartiles (inclusive method: they lie within min-max)."""
    if not values:
        raise ValueError("spread of no values")
    ordered = sorted(values)
    q1, _, q3 = (
        statistics.quantiles(ordered, n=4, method="inclusive")
        if len(ordered) > 1
        else (ordered[0],) * 3
    )
    return Spread(statistics.median(ordered), ordered[0], ordered[-1], q1, q3, len(ordered))


@dataclass(frozen=True)
class Run:
    """One whole process: wall seconds and peak resident memory in MB."""

    seconds: float
    peak_mb: float


@contextmanager
def every_cpu() -> Iterator[None]:
    """Let what this thread starts run on every CPU. A process that loads libgomp (imports
    torch) with OMP_PROC_BIND set, as train_speed.py does to run under vae-train's threads,
    has its main thread bound to one core, and a child inherits that one-core mask: until
    2026-12-04 the whole-process figures ran both contenders on a single core."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def run_process(
    argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> Run:
    """Run `argv` to completion, output discarded, on every CPU (`every_cpu`). Exits the bench
    with its stderr on a failure."""
    start = time.perf_counter()
    with every_cpu():
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if code != 0:
        sys.exit(f"command failed ({code}): {' '.join(argv)}\n{err}")
    return Run(seconds, usage.ru_maxrss / 1024)  # Linux reports KiB


def calibrate(fn: Callable[[], object], min_sample_s: float) -> int:
    """Calls of `fn` per sample so that one sample lasts at least `min_sample_s`."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - start >= min_sample_s or loops >= 1 << 24:
            return loops
        loops *= 2


@dataclass
class Comparison:
    """Seconds of each sample of A and B (per call for callables), pair by pair."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # "ab" or "ba", per pair
    peak_mb: dict[str, float] = field(default_factory=dict)  # commands: max over runs

    @property
    def ratios(self) -> list[float]:
        """B's seconds over A's, per pair: how many times faster A is than B."""
        return [b / a for a, b in zip(self.a, self.b, strict=True)]

    @property
    def ratio(self) -> Spread:
        return spread(self.ratios)

    @property
    def order_effect(self) -> float:
        """The median ratio of the A-first pairs over that of the B-first pairs: 1 when the order
        within a pair does not matter (a drift alone moves it a little)."""
        first = {
            o: [r for r, k in zip(self.ratios, self.order, strict=True) if k == o]
            for o in ("ab", "ba")
        }
        if not (first["ab"] and first["ba"]):
            return 1.0
        return statistics.median(first["ab"]) / statistics.median(first["ba"])

    @property
    def seconds_a(self) -> Spread:
        return spread(self.a)

    @property
    def seconds_b(self) -> Spread:
        return spread(self.b)


def alternate_samples(
    sample_a: Callable[[], float],
    sample_b: Callable[[], float],
    pairs: int = 7,
    warmup: int = 1,
    *,
    settle_s: float = SETTLE_S,
    label: str = "",
) -> Comparison:
    """The core loop: `warmup` untimed pairs, then `pairs` pairs, the order flipped every other
    pair (ab, ba, ab, ...), each sample after a pause of `settle_s`. Each sampler returns the
    seconds of one sample. Warns on stderr of an order effect (`Comparison.order_effect`),
    naming the comparison by `label`."""
    if pairs < MIN_PAIRS:
        raise ValueError(f"pairs must be at least {MIN_PAIRS}, got {pairs}")

    def settled(sample: Callable[[], float]) -> float:
        time.sleep(settle_s)
        return sample()

    for _ in range(warmup):
        settled(sample_a)
        settled(sample_b)
    result = Comparison()
    for i in range(pairs):
        if i % 2 == 0:
            a, b = settled(sample_a), settled(sample_b)
            result.order.append("ab")
        else:
            b, a = settled(sample_b), settled(sample_a)
            result.order.append("ba")
        result.a.append(a)
        result.b.append(b)
    effect = result.order_effect
    if not 1 / ORDER_WARNING <= effect <= ORDER_WARNING:
        sys.stdout.flush()  # the warning lands after what the bench printed before this comparison
        print(
            f"warning: {label + ': ' if label else ''}the pairs where A ran first measured "
            f"{effect:.2f}x those where B did; "
            "the median depends on the order, do not quote it",
            file=sys.stderr,
        )
    return result


def alternate(
    a: Contender,
    b: Contender,
    pairs: int = 7,
    warmup: int = 1,
    *,
    loops: int | None = None,
    min_sample_s: float = 0.05,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    settle_s: float = SETTLE_S,
    label: str = "",
) -> Comparison:
    """A against B in alternating pairs. Callables: seconds per call, `loops` calls per sample
    (calibrated on the slower of the two when None). Commands: wall seconds of a whole process,
    and each one's peak RSS in `peak_mb` ("a", "b")."""
    peaks = {"a": 0.0, "b": 0.0}

    def sampler(c: Contender, key: str) -> Callable[[], float]:
        if callable(c):
            fn = c
            return lambda: _timed(fn, n)

        def whole() -> float:
            r = run_process(c, cwd, env)
            peaks[key] = max(peaks[key], r.peak_mb)
            return r.seconds

        return whole

    n = loops or 1
    if loops is None and callable(a) and callable(b):
        a(), b()  # first-call costs stay out of the calibration
        n = max(calibrate(a, min_sample_s), calibrate(b, min_sample_s))
    result = alternate_samples(
        sampler(a, "a"), sampler(b, "b"), pairs, warmup, settle_s=settle_s, label=label
    )
    if not (callable(a) and callable(b)):
        result.peak_mb = {k: v for k, v in peaks.items() if v}
    return result


def _timed(fn: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def repeat(
    argv: Sequence[str],
    runs: int = 7,
    warmup: int = 1,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    before: Callable[[], None] | None = None,
) -> tuple[Spread, float]:
    """One command alone (no contender): its wall seconds over `runs` runs after `warmup`, and
    the peak RSS (MB, max over runs). `before` runs ahead of each run, untimed."""
    seconds, peak = [], 0.0
    for i in range(warmup + runs):
        if before is not None:
            before()
        r = run_process(argv, cwd, env)
        if i >= warmup:
            seconds.append(r.seconds)
            peak = max(peak, r.peak_mb)
    return spread(seconds), peak


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """'met' or '**missed**' for a figure against its target."""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**missed**"


def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [f for f in FLAGS if f in flags]


def _meminfo() -> str:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return "unknown"
    kb = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if v}
    total, available = kb["MemTotal"] / 2**20, kb.get("MemAvailable", 0) / 2**20
    return f"{total:.1f} GiB total, {available:.1f} available"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gpus() -> list[str]:
    root = Path("/proc/driver/nvidia/gpus")
    names = []
    for info in sorted(root.glob("*/information")) if root.is_dir() else []:
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    return names


def usable_cpus() -> set[int]:
    """The CPUs this process's threads may run on: the union of every thread's affinity. Under
    OMP_PROC_BIND, libgomp binds each of its threads to one core, the main thread included, so
    the main thread's own mask would say 1 where the process computes on all of them."""
    cpus: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with suppress(OSError, ValueError):  # a thread may end while we look
            cpus |= os.sched_getaffinity(int(task.name))
    return cpus or os.sched_getaffinity(0)


def machine() -> str:
    """The machine block: what every bench prints before its figures."""
    model, flags = _cpu()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    env = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]
    lines = [
        f"date     {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"cpu      {model}; flags: {' '.join(flags) or 'none of ' + ' '.join(FLAGS)}",
        f"cores    {len(usable_cpus())} usable (affinity) of {os.cpu_count()}; load average {load}",
        f"memory   {_meminfo()}",
        f"gpu      {', '.join(_gpus()) or 'none visible'}",
        f"software python {platform.python_version()}, numpy {_version('numpy')}, "
        f"onnxruntime {_version('onnxruntime')}, torch {_version('torch')}",
        f"env      {' '.join(env) or 'no thread variables set'}",
    ]
    return "\n".join(lines)


def print_machine(title: str) -> None:
    """The bench's title, then the machine block, then a blank line."""
    print(f"== {title}")
    print(machine())
    print(flush=True)


if __name__ == "__main__":
    print_machine("machine")
