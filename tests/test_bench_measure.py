"""bench/measure.py: the statistics, the alternation order and the whole-process runner."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def measure() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_measure", ROOT / "bench" / "measure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_measure"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_measure"]


def test_spread_of_known_values(measure: ModuleType) -> None:
    s = measure.spread([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (s.median, s.low, s.high, s.q1, s.q3, s.n) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
    even = measure.spread([1.0, 2.0, 3.0, 10.0])
    assert even.median == 2.5
    assert (even.low, even.high) == (1.0, 10.0)
    assert even.q1 == pytest.approx(1.75)
    assert even.q3 == pytest.approx(4.75)
    one = measure.spread([7.0])
    assert (one.median, one.low, one.high, one.q1, one.q3) == (7.0,) * 5
    with pytest.raises(ValueError, match="no values"):
        measure.spread([])


def test_show_names_median_range_and_count(measure: ModuleType) -> None:
    text = measure.spread([2.0, 2.2, 2.4, 2.6, 3.0]).show(2, "x")
    assert text == "2.40x (2.00-3.00, IQR 2.20-2.60, 5 pairs)"
    assert measure.spread([1.0]).show(1, " s").endswith("1 runs)")


def _scripted(values: list[float], log: list[str], name: str) -> Callable[[], float]:
    it = iter(values)

    def sample() -> float:
        log.append(name)
        return next(it)

    return sample


def test_alternation_flips_the_order_every_other_pair(measure: ModuleType) -> None:
    log: list[str] = []
    a = _scripted([9.0, 1.0, 1.0, 2.0, 1.0, 4.0, 1.0], log, "a")  # first: the warm-up
    b = _scripted([9.0, 2.0, 3.0, 4.0, 2.0, 8.0, 1.5], log, "b")
    result = measure.alternate_samples(a, b, pairs=6, warmup=1)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.order == ["ab", "ba", "ab", "ba", "ab", "ba"]
    # ratios are B over A, pair by pair; the warm-up pair is not among them
    assert result.ratios == [2.0, 3.0, 2.0, 2.0, 2.0, 1.5]
    assert result.ratio.median == 2.0
    assert (result.ratio.low, result.ratio.high) == (1.5, 3.0)
    assert result.seconds_a.median == 1.0


def test_a_drift_favours_neither_side(measure: ModuleType) -> None:
    """Each sample takes longer than the last (a machine slowing down); A and B cost the same."""
    clock = iter(range(1, 100))
    same = measure.alternate_samples(
        lambda: float(next(clock)), lambda: float(next(clock)), pairs=8, warmup=0
    )
    ratios = same.ratios
    assert all(r > 1 for r in ratios[0::2]) and all(r < 1 for r in ratios[1::2])
    assert same.ratio.median == pytest.approx(1.0, abs=0.1)


def test_every_sample_starts_after_the_settling_pause(measure: ModuleType) -> None:
    """The pause lets the other contender's spinning threads go idle; it is not timed."""
    spans: list[tuple[float, float]] = []

    def sample() -> float:
        start = time.perf_counter()
        spans.append((start, time.perf_counter()))
        return 1.0

    result = measure.alternate_samples(sample, sample, pairs=5, warmup=1, settle_s=0.02)
    assert len(spans) == 12 and result.ratios == [1.0] * 5
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
    assert min(gaps) >= 0.02


def test_an_order_effect_is_measured_and_reported(
    measure: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second sample of each pair 20% slower, as after a switch of thread pools: A-first
    pairs read 1.2x, B-first 1/1.2x, and the median is one mode or the other."""
    log: list[str] = []

    def sampler(name: str) -> Callable[[], float]:
        def sample() -> float:
            log.append(name)
            return 1.2 if len(log) % 2 == 0 else 1.0

        return sample

    result = measure.alternate_samples(sampler("a"), sampler("b"), 7, 0, settle_s=0, label="b25")
    assert result.order_effect == pytest.approx(1.44)
    assert "warning: b25: the pairs where A ran first measured 1.44x those where B did" in (
        capsys.readouterr().err
    )
    even = measure.alternate_samples(lambda: 1.0, lambda: 2.0, 5, 0, settle_s=0)
    assert even.order_effect == 1.0 and capsys.readouterr().err == ""


def test_fewer_than_five_pairs_refused(measure: ModuleType) -> None:
    with pytest.raises(ValueError, match="at least 5"):
        measure.alternate_samples(lambda: 1.0, lambda: 1.0, pairs=4)


def test_callables_are_timed_per_call(measure: ModuleType) -> None:
    calls = {"a": 0, "b": 0}

    def a() -> None:
        calls["a"] += 1

    def b() -> None:
        calls["b"] += 1
        sum(range(2000))

    result = measure.alternate(a, b, pairs=5, warmup=0, loops=3)
    assert calls == {"a": 15, "b": 15}
    assert len(result.ratios) == 5
    assert result.ratio.median > 1  # a does nothing: faster than b
    assert result.peak_mb == {}


def test_calibration_reaches_the_sample_length(measure: ModuleType) -> None:
    loops = measure.calibrate(lambda: sum(range(100)), 0.002)
    assert loops >= 1
    assert loops & (loops - 1) == 0  # doubles from 1


def test_whole_processes_alternate(measure: ModuleType) -> None:
    cmd = [sys.executable, "-c", "pass"]
    result = measure.alternate(cmd, cmd, pairs=5, warmup=0)
    assert len(result.a) == len(result.b) == 5
    assert all(s > 0 for s in result.a + result.b)
    assert set(result.peak_mb) == {"a", "b"}
    assert all(mb > 1 for mb in result.peak_mb.values())
    wall, peak = measure.repeat(cmd, runs=2, warmup=0)
    assert wall.n == 2 and peak > 1


def test_a_failing_command_stops_the_bench(measure: ModuleType) -> None:
    with pytest.raises(SystemExit, match=r"command failed \(3\)"):
        measure.run_process([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_verdict_says_missed(measure: ModuleType) -> None:
    assert measure.verdict(2.3, 2.2) == "met"
    assert measure.verdict(2.1, 2.2) == "**missed**"
    assert measure.verdict(0.3, 0.35, higher_is_better=False) == "met"


def test_machine_block_names_what_moves_the_figures(measure: ModuleType) -> None:
    block = measure.machine()
    for key in ("date", "cpu", "cores", "memory", "numpy", "onnxruntime", "torch"):
        assert key in block
    assert "usable (affinity)" in block


def test_the_machine_block_counts_the_cpus_of_every_thread(measure: ModuleType) -> None:
    """Under OMP_PROC_BIND libgomp binds the main thread to one core and its workers to the
    others: the block counts the CPUs the process's threads use, not the main thread's one."""
    every = sorted(os.sched_getaffinity(0))
    if len(every) < 2:
        pytest.skip("needs two CPUs to bind two threads apart")
    bound, release = threading.Event(), threading.Event()

    def worker() -> None:
        os.sched_setaffinity(0, {every[1]})
        bound.set()
        release.wait(10)

    thread = threading.Thread(target=worker)
    os.sched_setaffinity(0, {every[0]})
    thread.start()
    try:
        assert bound.wait(10)
        cpus = measure.usable_cpus()
        assert {every[0], every[1]} <= cpus  # the main thread's mask alone is {every[0]}
        assert f"{len(cpus)} usable (affinity)" in measure.machine()
    finally:
        release.set()
        thread.join()
        os.sched_setaffinity(0, every)


def test_a_measured_process_runs_on_every_cpu(measure: ModuleType, tmp_path: Path) -> None:
    """A bench bound to one core (libgomp with OMP_PROC_BIND binds the thread that loads it)
    still starts its contenders on every CPU, and keeps its own binding."""
    every = os.sched_getaffinity(0)
    out = tmp_path / "affinity"
    child = f"import os; open({str(out)!r}, 'w').write(repr(sorted(os.sched_getaffinity(0))))"
    os.sched_setaffinity(0, {min(every)})
    try:
        measure.run_process([sys.executable, "-c", child])
        assert os.sched_getaffinity(0) == {min(every)}
    finally:
        os.sched_setaffinity(0, every)
    assert out.read_text() == repr(sorted(set(range(os.cpu_count() or 1)) & every))


def test_the_gpu_check_runs_through_as_a_dry_run_on_the_cpu(mnist_dir: Path) -> None:
    """bench/gpu_check.sh is what a GPU session runs, once, in minutes it cannot get back: its
    bench part and the whole-process comparison (vae-train started as `python -m vae_train`, as
    on a machine without the project installed) run to the end on the CPU and print their
    tables."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "QUICK": "1",
        "VAE_DATA_DIR": str(mnist_dir),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "| cpu (a dry run: both steps eager), batch 128, fp32 | s / epoch | target |" in out
    assert "test loss after" in out
    assert "| vae-train --device cpu --epochs 1 |" in out
    assert "| floor: import torch |" in out
