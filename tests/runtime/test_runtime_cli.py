"""The three runtime commands through CliRunner: outputs, byte-identical reruns, one-line errors."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from helpers import expect_error, expect_interrupted, outcome
from PIL import Image
from runtime_graphs import quantize
from typer.testing import CliRunner, Result

from vae_runtime import Decoder, fileio, sample_latents
from vae_runtime.cli import generate_app, interpolate_app, reconstruct_app
from vae_runtime.console import VaeCommand, make_app
from vae_runtime.errors import DataError, Interrupted, InvalidArgumentError, OutputRefusedError
from vae_runtime.idx import write_idx

runner = CliRunner()


def run(app, args: list[str]) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current folder for the command's default outputs."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# -- what every command shares: the exit-code table ----------------------------------------------


def _app_raising(exc: BaseException) -> typer.Typer:
    app = make_app("Raises.")

    @app.command(cls=VaeCommand)
    def command(count: int = typer.Option(1, min=1)) -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (DataError("x.idx: truncated"), 1, "prog: error: x.idx: truncated$"),
        (InvalidArgumentError("rows must be >= 1"), 2, "prog: error: rows must be >= 1$"),
        (OutputRefusedError("a.png is the input"), 2, "prog: error: a.png is the input$"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/full/model.pt"),
            1,
            "prog: error: /full/model.pt: No space left on device$",
        ),
        (MemoryError(), 1, "prog: error: out of memory"),
        (ZeroDivisionError("a bug"), 1, r"prog: error: internal error \(ZeroDivisionError"),
    ],
)
def test_exit_codes_and_one_line(exc: BaseException, code: int, line: str) -> None:
    result = CliRunner().invoke(_app_raising(exc), [], prog_name="prog")
    exit_code, out, err = outcome(result)
    assert exit_code == code and out == "" and len(err.splitlines()) == 1, err
    assert re.match(line, err.strip()), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--count", "0"], "prog: error: Invalid value for '--count'"),
        (["--bogus"], "prog: error: No such option: --bogus"),
    ],
)
def test_usage_errors_exit_2(args: list[str], line: str) -> None:
    result = CliRunner().invoke(_app_raising(DataError("unused")), args, prog_name="prog")
    assert expect_error(result, 2).startswith(line)


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (Interrupted(signal.SIGTERM), 143, "prog: interrupted by SIGTERM; no file was changed"),
        (Interrupted(signal.SIGINT, "kept it"), 130, "prog: interrupted by SIGINT; kept it"),
        (KeyboardInterrupt(), 130, "prog: interrupted by SIGINT; no file was changed"),
    ],
)
def test_interrupts_exit_128_plus_the_signal(exc: BaseException, code: int, line: str) -> None:
    result = CliRunner().invoke(_app_raising(exc), [], prog_name="prog")
    assert expect_interrupted(result, code) == line


def test_vae_debug_shows_the_traceback_behind_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_DEBUG", "1")
    result = CliRunner().invoke(_app_raising(DataError("x.idx: bad")), [], prog_name="prog")
    _, _, err = outcome(result)
    assert "Traceback (most recent call last)" in err
    assert "DataError: x.idx: bad" in err
    assert err.strip().splitlines()[-1] == "prog: error: x.idx: bad"


# -- vae-generate --------------------------------------------------------------------------------


def test_generate_default_is_a_5x5_grid_and_byte_identical(graphs, work: Path) -> None:
    result = run(generate_app, ["--onnx", graphs["decoder"]])
    assert result.exit_code == 0, result.output
    first = (work / "samples.png").read_bytes()
    with Image.open(work / "samples.png") as image:
        assert image.size == (5 * 30 + 2, 5 * 30 + 2)
        assert image.mode == "L"
    assert files_in(work) == {"samples.png"}  # no temporary file left behind
    again = run(generate_app, ["--onnx", graphs["decoder"]])  # an existing file: refused
    expect_error(again, 2, r"samples.png already exists; pass --force \(-f\) to replace it$")
    assert run(generate_app, ["--onnx", graphs["decoder"], "--force"]).exit_code == 0
    assert (work / "samples.png").read_bytes() == first
    run(generate_app, ["--onnx", graphs["decoder"], "--seed", "1", "-o", "other.png"])
    assert (work / "other.png").read_bytes() != first


def test_generate_grid_shows_the_seeds_samples(graphs, work: Path) -> None:
    args = ["--decoder", graphs["decoder20"], "--rows", "2", "--cols", "3", "--seed", "4"]
    result = run(generate_app, [*args, "-t", "0.7", "--scale", "2", "--padding", "0"])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(work / "samples.png"))
    assert grid.shape == (2 * 28 * 2, 3 * 28 * 2)
    expected = Decoder.load(graphs["decoder20"]).decode(sample_latents(6, 20, 4, 0.7))
    pixels = np.rint(expected[:, 0] * 255).astype(np.uint8)  # (6, 28, 28)
    np.testing.assert_array_equal(grid[56:112:2, 56:112:2], pixels[4])  # row 1, col 1 (0-based)


def test_generate_npy_larger_than_any_disk_is_refused_at_once(graphs, work: Path) -> None:
    # 10^12 samples are ~3 PB: refused from the free space, before a byte is allocated
    args = ["--onnx", graphs["decoder"], "-n", str(10**9), "--npy", "big.npy", "--no-grid"]
    expect_error(run(generate_app, args), 1, "do not fit on the disk")
    assert files_in(work) == set()


def test_generate_npy_streams_every_sample(graphs, work: Path) -> None:
    args = ["--onnx", graphs["decoder20"], "-n", "1000", "--npy", "all.npy", "--batch-size", "96"]
    assert run(generate_app, [*args, "--no-grid"]).exit_code == 0
    assert files_in(work) == {"all.npy"}
    array = np.load(work / "all.npy")
    assert array.shape == (1000, 1, 28, 28)
    assert array.dtype == np.float32
    expected = Decoder.load(graphs["decoder20"]).decode(sample_latents(1000, 20, 0))
    np.testing.assert_allclose(array, expected, atol=1e-6)


def test_generate_images_dir_writes_one_png_each(graphs, work: Path) -> None:
    (work / "each").mkdir()
    args = ["--onnx", graphs["decoder"], "-n", "12", "--images-dir", "each", "--scale", "2"]
    assert run(generate_app, args).exit_code == 0
    names = sorted(files_in(work / "each"))
    assert names == [f"sample_{i:05d}.png" for i in range(12)]
    with Image.open(work / "each" / names[0]) as image:
        assert image.size == (56, 56)
    assert (work / "samples.png").exists()  # the grid of the first 25 (here 12) too


def test_generate_manifold_for_latent_size_2(graphs, work: Path) -> None:
    args = ["--onnx", graphs["decoder"], "--manifold", "--rows", "4", "--cols", "6"]
    assert run(generate_app, args).exit_code == 0
    with Image.open(work / "samples.png") as image:
        assert image.size == (6 * 30 + 2, 4 * 30 + 2)
    result = run(generate_app, ["--onnx", graphs["decoder20"], "--manifold", "-o", "m.png"])
    expect_error(result, 2, "--manifold needs a latent size of 2")
    assert not (work / "m.png").exists()


@pytest.mark.parametrize(
    ("args", "pattern", "code"),
    [
        (["--rows", "0"], "rows must be >= 1, got 0", 2),
        (["--cols", "-3"], "cols must be >= 1, got -3", 2),
        (["--rows", "100000", "--cols", "100000"], "above the cap", 2),
        (["--scale", "0"], r"scale must be in 1\.\.64, got 0", 2),
        (["--temperature", "-1"], r"temperature must be a finite number in 0\.\.1000", 2),
        (["--temperature", "nan"], r"temperature must be a finite number in 0\.\.1000", 2),
        (["--count", "0"], "count must be >= 1", 2),
        (["--count", "26"], "decodes more images than the 5x5 grid shows", 2),
        (["--seed", "-1"], r"seed must be in 0\.\.", 2),
        (["--seed", str(2**64)], r"seed must be in 0\.\.", 2),
        (["--rows", "abc"], "Invalid value for '--rows'", 2),
        (["--no-such-option"], "no-such-option", 2),
        (["--provider", "NopeExecutionProvider"], "available providers: ", 2),
        (["--out", "."], "is not a file name", 2),
        (["--npy", "samples.png"], "are the same file", 2),
        (["--no-grid"], "nothing to write", 2),
        (["--manifold", "-n", "4"], "does not apply to --manifold", 2),
        (["--threads", "0"], r"threads must be in 1\.\.", 2),
        (["--threads", "4096"], r"threads must be in 1\.\.", 2),
        (["--batch-size", "0"], r"batch size must be in 1\.\.65,536", 2),
    ],
)
def test_generate_bad_arguments(
    graphs, work: Path, args: list[str], pattern: str, code: int
) -> None:
    result = run(generate_app, ["--onnx", graphs["decoder"], *args])
    expect_error(result, code, pattern)
    assert files_in(work) == set()


def test_generate_huge_grid_is_refused_before_allocating(graphs, work: Path) -> None:
    # 10^10 cells would need terabytes; refusing from arithmetic alone proves nothing was made.
    result = run(generate_app, ["--onnx", graphs["decoder"], "--rows", "100000", "--cols", "1e5"])
    assert result.exit_code == 2
    result = run(generate_app, ["--onnx", graphs["decoder"], "--rows", "99999", "--cols", "99999"])
    expect_error(result, 2, "pixels, above the cap of 67,108,864")


def test_generate_wrong_and_broken_graphs(graphs, work: Path, tmp_path: Path) -> None:
    expect_error(run(generate_app, ["--onnx", graphs["encoder"]]), 1, "expected a decoder")
    expect_error(run(generate_app, ["--onnx", "none.onnx"]), 1, "no such file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    expect_error(run(generate_app, ["--onnx", junk]), 1, "not a loadable ONNX graph")
    result = run(generate_app, ["--onnx", graphs["nan_decoder"]])
    expect_error(result, 1, "contains NaN or infinite values")
    assert files_in(work) == set()


def test_generate_checksum_mismatch(graphs, work: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(graphs["decoder"].parent, export)
    data = bytearray((export / "decoder.onnx").read_bytes())
    data[-10] ^= 1  # one flipped bit in the graph's tail (metadata or weights)
    (export / "decoder.onnx").write_bytes(bytes(data))
    result = run(generate_app, ["--onnx", export / "decoder.onnx"])
    expect_error(result, 1, "does not match")


def test_generate_into_read_only_folder(
    graphs, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the permission check see the mode bits
        real_access = os.access
        monkeypatch.setattr(
            fileio.os,
            "access",
            lambda p, mode: real_access(p, mode) and Path(p).resolve() != locked.resolve(),
        )
    result = run(generate_app, ["--onnx", graphs["decoder"], "-o", locked / "samples.png"])
    expect_error(result, 1, "is not writable")
    assert files_in(locked) == set()


def test_generate_interrupted_write_leaves_nothing(
    graphs, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vae_runtime import images

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images.Image.Image, "save", explode)
    result = run(generate_app, ["--onnx", graphs["decoder"], "--npy", "a.npy"])
    expect_error(result, 1, "No space left on device")
    assert files_in(work) == set()  # one set: no .npy without its grid, no temporary


def test_help_is_complete_with_defaults() -> None:
    text = run(generate_app, ["--help"]).stdout
    for word in (
        "--rows",
        "--cols",
        "--seed",
        "--temperature",
        "--out",
        "--scale",
        "--npy",
        "--images-dir",
        "--manifold",
        "--count",
        "--provider",
        "--threads",
        "default: 5",
        "samples.png",
        "67,108,864",
    ):
        assert word in text, word
    text = " ".join(run(reconstruct_app, ["--help"]).stdout.split())
    assert "inverted if the border is light" in text
    assert "16 Mpx" in text
    text = " ".join(run(interpolate_app, ["--help"]).stdout.split())
    for word in ("--steps", "slerp", "interpolation.gif", "--encoder", "--from-seed"):
        assert word in text, word


# -- vae-interpolate -----------------------------------------------------------------------------


def test_interpolate_between_seeds_writes_grid_and_gif(graphs, work: Path) -> None:
    result = run(interpolate_app, ["--onnx", graphs["decoder20"], "--steps", "6"])
    assert result.exit_code == 0, result.output
    with Image.open(work / "interpolation.png") as image:
        assert image.size == (6 * 30 + 2, 32)
    with Image.open(work / "interpolation.gif") as gif:
        assert gif.n_frames == 2 * 6 - 2  # there and back, ends once each
        assert gif.size == (112, 112)
        assert gif.info["loop"] == 0
    first = (work / "interpolation.gif").read_bytes()
    run(interpolate_app, ["--onnx", graphs["decoder20"], "--steps", "6"])
    assert (work / "interpolation.gif").read_bytes() == first


def test_interpolate_path_ends_are_the_seeds_samples(graphs, work: Path) -> None:
    args = ["--onnx", graphs["decoder20"], "--from-seed", "3", "--to-seed", "8", "--no-gif"]
    assert run(interpolate_app, [*args, "--method", "lerp", "--npy", "p.npy"]).exit_code == 0
    path = np.load(work / "p.npy")
    decoder = Decoder.load(graphs["decoder20"])
    ends = np.concatenate([sample_latents(1, 20, 3), sample_latents(1, 20, 8)])
    np.testing.assert_allclose(path[[0, -1]], decoder.decode(ends), atol=1e-5)
    assert not (work / "interpolation.gif").exists()


def test_interpolate_between_images(graphs, work: Path, make_digits) -> None:
    images, _ = make_digits(2, 5)
    for i in range(2):
        Image.fromarray(255 - images[i]).save(work / f"d{i}.png")  # black on white: inverted
    args = ["--onnx", graphs["decoder"], "--encoder", graphs["encoder"], "d0.png", "d1.png"]
    assert run(interpolate_app, args).exit_code == 0
    assert {"interpolation.png", "interpolation.gif"} <= files_in(work)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--steps", "1"], r"steps must be in 2\.\.10,000, got 1"),
        (["--method", "cubic"], "'slerp' or 'lerp'"),
        (["--temperature", "nan"], "temperature"),
        (["--steps", "400", "--gif-scale", "40"], "above the cap"),
        (["a.png"], "need --encoder"),
        (["--gif", "."], "is not a file name"),
        (["--frame-ms", "0"], "frame duration"),
    ],
)
def test_interpolate_bad_arguments(graphs, work: Path, extra: list[str], pattern: str) -> None:
    expect_error(run(interpolate_app, ["--onnx", graphs["decoder"], *extra]), 2, pattern)
    assert files_in(work) == set()


def test_interpolate_latent_size_mismatch(graphs, work: Path, make_digits) -> None:
    write_idx(work / "two.idx", make_digits(2, 0)[0])
    args = ["--onnx", graphs["decoder"], "--encoder", graphs["encoder20"], "two.idx"]
    expect_error(run(interpolate_app, args), 1, "latent size 20")
    assert files_in(work) == {"two.idx"}


# -- vae-reconstruct -----------------------------------------------------------------------------


def test_reconstruct_pngs_originals_above_reconstructions(graphs, work: Path, make_digits) -> None:
    images, _ = make_digits(3, 1)
    for i, image in enumerate(images):
        Image.fromarray(image).save(work / f"in{i}.png")
    args = ["--encoder", graphs["encoder"], "--decoder", graphs["decoder"], "--padding", "0"]
    result = run(reconstruct_app, [*args, "in0.png", "in1.png", "in2.png"])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(work / "reconstructions.png"))
    assert grid.shape == (56, 84)
    np.testing.assert_array_equal(grid[:28, 28:56], images[1])  # originals on top, as given
    assert grid[28:].any()
    first = (work / "reconstructions.png").read_bytes()
    run(reconstruct_app, [*args, "in0.png", "in1.png", "in2.png"])
    assert (work / "reconstructions.png").read_bytes() == first


def test_reconstruct_idx_file_with_count_and_cols(graphs, work: Path, make_digits) -> None:
    write_idx(work / "t10k-images-idx3-ubyte.gz", make_digits(50, 2)[0])
    args = ["--encoder", graphs["encoder"], "--decoder", graphs["decoder"], "-n", "7"]
    result = run(
        reconstruct_app, [*args, "--cols", "4", "--npy", "r.npy", "t10k-images-idx3-ubyte.gz"]
    )
    assert result.exit_code == 0, result.output
    with Image.open(work / "reconstructions.png") as image:
        assert image.size == (4 * 30 + 2, 4 * 30 + 2)  # two blocks of (originals, recon)
    assert np.load(work / "r.npy").shape == (7, 1, 28, 28)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda d: d.joinpath("x.txt").write_text("hello"), "not an image"),
        (lambda d: d.joinpath("x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "x.png"),
        (lambda d: None, "no such file"),
    ],
    ids=["text", "corrupt-png", "missing"],
)
def test_reconstruct_bad_inputs(graphs, work: Path, make, pattern: str) -> None:
    make(work)
    name = next(iter(files_in(work)), "x.png")
    before = files_in(work)
    args = ["--encoder", graphs["encoder"], "--decoder", graphs["decoder"], name]
    expect_error(run(reconstruct_app, args), 1, pattern)
    assert files_in(work) == before


def test_reconstruct_refuses_a_decompression_bomb(graphs, work: Path, bomb_png: Path) -> None:
    args = ["--encoder", graphs["encoder"], "--decoder", graphs["decoder"], bomb_png]
    expect_error(run(reconstruct_app, args), 1, "refused without decoding")
    assert files_in(work) == set()


def test_reconstruct_latent_size_mismatch(graphs, work: Path, make_digits) -> None:
    Image.fromarray(make_digits(1, 0)[0][0]).save(work / "a.png")
    args = ["--encoder", graphs["encoder20"], "--decoder", graphs["decoder"], "a.png"]
    expect_error(run(reconstruct_app, args), 1, "latent size 20 but")
    assert files_in(work) == {"a.png"}


def test_reconstruct_needs_inputs(graphs, work: Path) -> None:
    result = run(reconstruct_app, ["--encoder", graphs["encoder"], "--decoder", graphs["decoder"]])
    assert result.exit_code == 2


def test_no_third_party_warning_reaches_the_terminal(graphs, tmp_path: Path) -> None:
    # onnxruntime's import writes a coloured telemetry warning straight to file descriptor 2 when
    # ~/.cache is not writable, on some machines and not others. A module of ours that does the
    # same on every machine, imported quietly like onnxruntime, makes the condition certain.
    (tmp_path / "noisy.py").write_text(
        "import os\nos.write(2, b'NOISE from a native library\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "VAE_DEBUG")}
    env["HOME"] = "/proc"  # no folder can be made there
    env["PYTHONPATH"] = str(tmp_path)
    bare = subprocess.run(
        [sys.executable, "-c", "import noisy"], env=env, capture_output=True, text=True
    )
    assert "NOISE" in bare.stderr  # the condition is real: the test below can fail
    start = (
        "from vae_runtime.entrypoints import run; "
        "run('vae-generate', 'vae_runtime.cli:generate_app', "
        "quiet_imports=('noisy', 'onnxruntime'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", start, "--onnx", graphs["decoder"], "-o", tmp_path / "s.png"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("25 images")
    # The console script itself, with the real onnxruntime under the same unwritable home.
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [bin_dir / "vae-generate", "--onnx", graphs["decoder"], "-o", tmp_path / "t.png"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_an_interrupt_after_a_commit_says_what_was_kept(tmp_path: Path) -> None:
    app = make_app("Commits one file, then is stopped.")

    @app.command(cls=VaeCommand)
    def command() -> None:
        with fileio.Outputs([tmp_path / "a.png"]) as out:
            out.write_bytes(tmp_path / "a.png", b"png")
            out.commit()
        raise Interrupted(signal.SIGTERM)

    result = CliRunner().invoke(app, [], prog_name="prog")
    line = expect_interrupted(result, 143)
    assert line == f"prog: interrupted by SIGTERM; kept the complete {tmp_path / 'a.png'}; " + (
        "nothing else was changed"
    )


def test_a_ctrl_c_a_library_wrapped_in_its_own_error_is_still_a_ctrl_c() -> None:
    try:
        raise Interrupted(signal.SIGINT)
    except Interrupted as stop:
        wrapped = RuntimeError("export failed")
        wrapped.__cause__ = stop
    assert expect_interrupted(CliRunner().invoke(_app_raising(wrapped), []), 130)


def test_interpolation_and_reconstruction_need_their_inputs(
    graphs, work: Path, make_digits
) -> None:
    args = ["--onnx", graphs["decoder"], "--encoder", graphs["encoder"]]
    expect_error(run(interpolate_app, args), 2, "--encoder needs two input images")
    Image.fromarray(make_digits(1, 0)[0][0]).save(work / "one.png")
    expect_error(run(interpolate_app, [*args, "one.png"]), 2, "two input images needed")
    from vae_runtime import tasks

    with pytest.raises(InvalidArgumentError, match="nothing to write"):
        tasks.write_interpolation(graphs["decoder"], None, None)
    with pytest.raises(InvalidArgumentError, match="no input images given"):
        tasks.write_reconstructions(graphs["encoder"], graphs["decoder"], [])
    assert files_in(work) == {"one.png"}


def test_commands_name_a_graph_that_is_not_fp32(graphs, work: Path) -> None:
    int8 = quantize(onnx.load(graphs["decoder"]), work / "decoder.int8.onnx")
    result = run(generate_app, ["--onnx", int8, "-o", "s.png"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("25 images (seed 0, temperature 1; int8 decoder) -> s.png")
    result = run(interpolate_app, ["--onnx", int8, "--no-gif"])
    assert "; int8 decoder) -> interpolation.png" in result.stdout
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(work / "a.png")
    args = ["--encoder", graphs["encoder"], "--decoder", int8, "a.png"]
    result = run(reconstruct_app, args)
    assert "1 images reconstructed (fp32 encoder, int8 decoder) -> " in result.stdout
    result = run(generate_app, ["--onnx", graphs["decoder"], "-o", "t.png"])
    assert result.stdout.startswith("25 images (seed 0, temperature 1) -> t.png")


@pytest.mark.parametrize(("fast_exit", "code"), [(True, 0), (True, 3), (False, 3)])
def test_fast_exit_skips_the_teardown_not_the_output(
    tmp_path: Path, fast_exit: bool, code: int
) -> None:
    """run(..., fast_exit=True) (vae-train, vae-eval, vae-export) ends the process once the
    command has ended: its exit code and every line it printed, even one without a newline,
    arrive, and the interpreter's teardown (an atexit handler here) does not run."""
    (tmp_path / "tiny_app.py").write_text(
        textwrap.dedent(
            f"""
            import atexit, sys
            from pathlib import Path

            def app(prog_name):
                atexit.register(Path({str(tmp_path / "torn-down")!r}).touch)
                print("printed", end="")
                sys.stderr.write("and on stderr")
                sys.exit({code})
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = (
        f"from vae_runtime.entrypoints import run; run('x', 'tiny_app:app', fast_exit={fast_exit})"
    )
    done = subprocess.run(
        [sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (code, "printed", "and on stderr")
    assert (tmp_path / "torn-down").exists() is not fast_exit
