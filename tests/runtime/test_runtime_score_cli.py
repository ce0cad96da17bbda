"""vae-score: one CSV row per image as the Scorer computes it, the summary, thresholds in nats and
percentiles of the reference, exit 3 on request, and one-line refusals."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import expect_error, idx_bytes, outcome
from PIL import Image
from runtime_graphs import build_decoder, build_encoder, write_manifest
from typer.testing import CliRunner

from vae_runtime.cli import score_app
from vae_runtime.contract import MANIFEST_FILE, Manifest
from vae_runtime.errors import EXIT_BELOW_THRESHOLD
from vae_runtime.reference import SCORE_REFERENCE, ScoreReference
from vae_runtime.scoring import Scorer

runner = CliRunner()
K = 8


def invoke(*args: Any) -> Any:
    return runner.invoke(score_app, [str(a) for a in args], prog_name="vae-score")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def images(make_digits: Callable[..., tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return make_digits(12, 5)[0]  # uint8 (12, 28, 28)


@pytest.fixture(scope="module")
def scorable(
    tmp_path_factory: pytest.TempPathFactory, templates: np.ndarray, images: np.ndarray
) -> dict[str, Path]:
    """Two export folders of a pair with logits: `ref` with a score reference in its manifest
    (of these very images at k = K), `plain` without one; `inputs`: the images as an IDX file,
    two PNGs and a .npy."""
    root = tmp_path_factory.mktemp("score")
    folders = {}
    for name in ("plain", "ref"):
        folder = root / name
        folder.mkdir()
        onnx.save(build_decoder(2, 16, templates=templates, logits=True), folder / "decoder.onnx")
        onnx.save(build_encoder(2, 16), folder / "encoder.onnx")
        write_manifest(folder, "decoder.onnx", "encoder.onnx")
        folders[name] = folder
    iwae = Scorer.load(folders["ref"]).score(images, k=K, seed=0).iwae
    manifest = Manifest.load(folders["ref"] / MANIFEST_FILE)
    manifest.details[SCORE_REFERENCE] = ScoreReference.of(iwae, k=K, seed=0).to_json()
    (folders["ref"] / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    inputs = root / "inputs"
    (inputs / "pngs").mkdir(parents=True)
    (inputs / "digits.idx").write_bytes(idx_bytes(images[:6]))
    for i in (6, 7):
        Image.fromarray(images[i]).save(inputs / "pngs" / f"d{i}.png")
    np.save(inputs / "rest.npy", images[8:].astype(np.float32) / 255.0)
    return {**folders, "inputs": inputs}


def _args(scorable: dict[str, Path], folder: str = "ref") -> list[Any]:
    inputs = scorable["inputs"]
    return [inputs / "digits.idx", inputs / "pngs", inputs / "rest.npy", "--onnx-dir",
            scorable[folder], "-k", K]  # fmt: skip


def test_one_row_per_image_as_the_scorer_computes_it(
    scorable: dict[str, Path], images: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "s.csv"
    result = invoke(*_args(scorable), "--seed", 3, "-o", out)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert list(rows[0]) == ["source", "index", "elbo", "iwae", "bce", "percentile"]
    inputs = scorable["inputs"]
    assert [r["source"] for r in rows] == [
        *(f"{inputs / 'digits.idx'}:{i}" for i in range(6)),
        str(inputs / "pngs" / "d6.png"),
        str(inputs / "pngs" / "d7.png"),
        *(f"{inputs / 'rest.npy'}:{i}" for i in range(4)),
    ]
    assert [int(r["index"]) for r in rows] == list(range(12))
    scorer = Scorer.load(scorable["ref"])
    expected = scorer.score(images, k=K, seed=3)
    for name in ("elbo", "iwae", "bce"):  # exact: the CSV keeps every bit of the float64
        assert np.array_equal([float(r[name]) for r in rows], getattr(expected, name)), name
    assert np.array_equal([float(r["percentile"]) for r in rows], scorer.percentile(expected.iwae))
    assert all(float(r["iwae"]) >= float(r["elbo"]) - 1e-9 for r in rows)


def test_the_same_seed_gives_the_same_file_and_another_seed_another(
    scorable: dict[str, Path], tmp_path: Path
) -> None:
    files = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        result = invoke(*_args(scorable), "--seed", seed, "-o", tmp_path / f"{name}.csv", "-q")
        assert result.exit_code == 0, result.output
        files.append((tmp_path / f"{name}.csv").read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]


def test_count_scores_the_first_images_with_their_own_draws(
    scorable: dict[str, Path], tmp_path: Path
) -> None:
    assert invoke(*_args(scorable), "-o", tmp_path / "all.csv", "-q").exit_code == 0
    result = invoke(*_args(scorable), "-n", 7, "-o", tmp_path / "some.csv", "-q")
    assert result.exit_code == 0, result.output
    assert read_rows(tmp_path / "some.csv") == read_rows(tmp_path / "all.csv")[:7]


def test_the_summary(scorable: dict[str, Path], tmp_path: Path) -> None:
    result = invoke(*_args(scorable), "-o", tmp_path / "s.csv", "--threshold", "p50")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"12 images scored (k {K}, seed 0) -> {tmp_path / 's.csv'}"
    assert lines[1].startswith("mean: iwae ")
    assert lines[2].startswith("reference: MNIST test set, 12 images, mean iwae ")
    assert lines[3] == "lowest iwae:"
    rows = read_rows(tmp_path / "s.csv")
    lowest = sorted(rows, key=lambda r: float(r["iwae"]))[:5]
    assert len(lines[4:9]) == 5
    for line, row in zip(lines[4:9], lowest, strict=True):
        assert line.endswith(f"#{row['index']}  {row['source']}"), line
    assert lines[9].startswith("under the threshold (iwae < p50 = ")
    assert lines[9].endswith(": 6 of 12")  # the reference is of these images, seed 0
    assert len(lines) == 10


def test_quiet_prints_nothing(scorable: dict[str, Path], tmp_path: Path) -> None:
    result = invoke(*_args(scorable), "-o", tmp_path / "s.csv", "-q", "--threshold", "p90")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


@pytest.mark.parametrize("how", ["nats", "percentile"])
def test_exit_3_when_asked_and_any_image_is_under(
    how: str, scorable: dict[str, Path], tmp_path: Path
) -> None:
    plain = tmp_path / "plain.csv"
    assert invoke(*_args(scorable), "-o", plain, "-q").exit_code == 0
    iwae = sorted(float(r["iwae"]) for r in read_rows(plain))
    between = (iwae[1] + iwae[2]) / 2  # two images under it
    threshold = f"{between!r}" if how == "nats" else "p15"  # 15% of 12 reference images: 2
    out = tmp_path / "gate.csv"
    gate = [*_args(scorable), "-o", out, f"--threshold={threshold}"]
    result = invoke(*gate, "--below-threshold-exit", 3)
    code, stdout, stderr = outcome(result)
    assert code == EXIT_BELOW_THRESHOLD == 3
    assert stderr == (
        "vae-score: 2 of 12 images scored under the threshold (exit 3, as "
        "--below-threshold-exit asks)\n"
    )
    assert stdout.splitlines()[-1].endswith(": 2 of 12")
    assert read_rows(out) == read_rows(plain)  # written all the same
    # Without the option the same run is a success; with a low threshold too.
    assert invoke(*gate, "-f", "-q").exit_code == 0
    low = [*_args(scorable), "-o", out, "-f", "-q", f"--threshold={iwae[0] - 1!r}"]
    assert invoke(*low, "--below-threshold-exit", 3).exit_code == 0
    assert invoke(*gate, "-f", "-q", "--below-threshold-exit", 7).exit_code == 7


def test_a_percentile_threshold_without_a_reference_is_refused(
    scorable: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "s.csv"
    result = invoke(*_args(scorable, "plain"), "-o", out, "--threshold", "p0.1")
    expect_error(result, 2, r"--threshold p0.1 is a percentile .* the manifest has none")
    assert not out.exists()
    result = invoke(*_args(scorable, "plain"), "-o", out, "--threshold=-1e9", "-q")
    assert result.exit_code == 0, result.output
    assert {r["percentile"] for r in read_rows(out)} == {""}  # no reference: empty


def test_graphs_without_logits_are_refused(graphs: dict[str, Path], tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    result = invoke(png, "--onnx-dir", graphs["decoder"].parent, "-o", tmp_path / "s.csv")
    expect_error(result, 1, r"decoder.onnx: has no logits output .*re-export")
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["-k", "0"], 2, r"k \(importance samples\) must be in 1\.\.100,000, got 0"),
        (["-k", "100001"], 2, r"must be in 1\.\.100,000"),
        (["--seed", "-1"], 2, r"seed must be in 0\.\."),
        (["--threshold", "low"], 2, r"threshold must be a bound in nats .* got 'low'"),
        (["--threshold", "p101"], 2, r"threshold percentile must be a finite number in 0\.\.100"),
        (["--threshold", "nan"], 2, r"threshold must be a finite number"),
        (["--below-threshold-exit", "3"], 2, r"needs a --threshold"),
        (["--threshold", "p1", "--below-threshold-exit", "2"], 2, r"must be in 3\.\.125, got 2"),
        (["--precision", "int4"], 2, r"precision must be one of fp32, int8, fp16"),
        (["-n", "0"], 2, r"count must be in 1\.\."),
        (["--batch-size", "0"], 2, r"batch size must be in 1\.\."),
    ],
)
def test_bad_values_are_refused_in_one_line(
    args: list[str], code: int, words: str, scorable: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "s.csv"
    expect_error(invoke(*_args(scorable), "-o", out, *args), code, words)
    assert not out.exists()


def test_bad_inputs_are_refused_in_one_line(scorable: dict[str, Path], tmp_path: Path) -> None:
    onnx_dir = ["--onnx-dir", scorable["ref"], "-o", tmp_path / "s.csv"]
    expect_error(invoke(tmp_path / "missing.png", *onnx_dir), 1, r"missing.png: no such file")
    (tmp_path / "empty").mkdir()
    expect_error(invoke(tmp_path / "empty", *onnx_dir), 1, r"empty: no image .* in this folder")
    np.save(tmp_path / "wide.npy", np.zeros((2, 28, 30), np.uint8))
    expect_error(invoke(tmp_path / "wide.npy", *onnx_dir), 1, r"wide.npy: .npy of shape")
    np.save(tmp_path / "hot.npy", np.full((2, 28, 28), 2.0, np.float32))
    expect_error(invoke(tmp_path / "hot.npy", *onnx_dir), 2, r"pixels must be in \[0, 1\]")
    png = scorable["inputs"] / "pngs" / "d6.png"
    expect_error(invoke(png, "--onnx-dir", tmp_path / "nope"), 1, r"nope: no such folder")
    assert not (tmp_path / "s.csv").exists()


def test_an_existing_output_is_replaced_only_with_force(
    scorable: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "s.csv"
    out.write_bytes(b"precious\n")
    result = invoke(*_args(scorable), "-o", out)
    expect_error(result, 2, r"s.csv already exists; pass --force \(-f\) to replace it$")
    assert out.read_bytes() == b"precious\n"
    assert invoke(*_args(scorable), "-o", out, "-f", "-q").exit_code == 0
    assert len(read_rows(out)) == 12
    npy = scorable["inputs"] / "rest.npy"
    before = npy.read_bytes()
    expect_error(invoke(*_args(scorable), "-o", npy, "-f"), 2, r"rest.npy")  # an input, never
    assert npy.read_bytes() == before
