"""vae-serve's `scorer` model over real HTTP (tritonclient): image, seed and k in; elbo, iwae and
percentile out, bit for bit (as float32) what the runtime's Scorer gives for the same seed, k and
index (image j of a request is index j); the k x batch cap refused with a 400; served only where
the pair has an encoder and a decoder with logits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from serve_support import Running, client, good_request, start_server, stop_server, thread_server
from tritonclient.utils import InferenceServerException

from vae_runtime.contract import Manifest
from vae_runtime.errors import InvalidArgumentError
from vae_runtime.scoring import DEFAULT_K, Scorer
from vae_serve.app import ServeConfig
from vae_serve.models import load_models

MAX_SCORE_ROWS = 512  # the servers' --max-score-rows: small, so the cap is cheap to pass


@pytest.fixture(scope="module", params=["process", "thread"])
def scoring(request: pytest.FixtureRequest, score_dir: Path) -> Iterator[Running]:
    """vae-serve on the scoring export, as a subprocess and in a thread of this process."""
    if request.param == "process":
        running = start_server("--onnx-dir", score_dir, "--max-score-rows", MAX_SCORE_ROWS)
        yield running
        code, _, err = stop_server(running)
        assert code == 0, err
        return
    from vae_serve.app import create_app

    config = ServeConfig(onnx_dir=score_dir, max_score_rows=MAX_SCORE_ROWS)
    with thread_server(create_app(config)) as running:
        yield running


@pytest.fixture(scope="module")
def scorer(score_dir: Path) -> Scorer:
    return Scorer.load(score_dir)


@pytest.fixture(scope="module")
def images(make_digits: Callable[..., tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Five digits as the service takes them: float32 (5, 1, 28, 28) in [0, 1]."""
    digits, _ = make_digits(5, 9)
    return (digits.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)


def score_request(
    server: Running, images: np.ndarray, seed: int, k: int | None, binary: bool = True
) -> dict[str, np.ndarray]:
    inputs = [triton.InferInput("image", list(images.shape), "FP32")]
    inputs[0].set_data_from_numpy(images, binary_data=binary)
    for name, value in (("seed", seed), ("k", k)):
        if value is not None:
            tensor = triton.InferInput(name, [1], "INT64")
            tensor.set_data_from_numpy(np.array([value], np.int64), binary_data=binary)
            inputs.append(tensor)
    result = client(server).infer("scorer", inputs)
    return {name: result.as_numpy(name) for name in ("elbo", "iwae", "percentile")}


@pytest.mark.parametrize(("k", "binary"), [(16, True), (3, False), (None, True)])
def test_scores_are_the_scorers_bit_for_bit(
    scoring: Running, scorer: Scorer, images: np.ndarray, k: int | None, binary: bool
) -> None:
    got = score_request(scoring, images, 11, k, binary)
    expected = scorer.score(images, k=DEFAULT_K if k is None else k, seed=11)
    assert all(v.dtype == np.float32 and v.shape == (5,) for v in got.values())
    assert got["elbo"].tobytes() == expected.elbo.astype(np.float32).tobytes()
    assert got["iwae"].tobytes() == expected.iwae.astype(np.float32).tobytes()
    percentile = scorer.percentile(expected.iwae).astype(np.float32)
    assert got["percentile"].tobytes() == percentile.tobytes()
    assert ((got["percentile"] >= 0) & (got["percentile"] <= 100)).all()
    # image j of a request is index j: the last image alone (index 0) draws other noise
    alone = score_request(scoring, images[4:], 11, k, binary)["iwae"]
    first = scorer.score(images[4:], k=DEFAULT_K if k is None else k, seed=11).iwae
    assert alone.tobytes() == first.astype(np.float32).tobytes()
    assert alone[0] != got["iwae"][4]


def test_the_cap_on_k_times_batch_is_a_400(scoring: Running, images: np.ndarray) -> None:
    k = MAX_SCORE_ROWS // len(images) + 1  # one row above the cap
    with pytest.raises(InferenceServerException) as caught:
        score_request(scoring, images, 0, k)
    assert caught.value.status() == "400"
    assert "max-score-rows" in str(caught.value) or "k x batch" in str(caught.value)
    for bad_k, words in ((0, "k must be"), (-3, "k must be")):
        with pytest.raises(InferenceServerException, match=words) as caught:
            score_request(scoring, images, 0, bad_k)
        assert caught.value.status() == "400"
    with pytest.raises(InferenceServerException, match="seed") as caught:
        score_request(scoring, images, -1, 2)
    assert caught.value.status() == "400"
    assert len(score_request(scoring, images, 0, MAX_SCORE_ROWS // len(images))["iwae"]) == 5
    good_request(scoring)


def test_metadata_names_the_reference(scoring: Running, score_dir: Path) -> None:
    meta = client(scoring).get_model_metadata("scorer")
    assert [t["name"] for t in meta["inputs"]] == ["image", "seed", "k"]
    assert [t["name"] for t in meta["outputs"]] == ["elbo", "iwae", "percentile"]
    reference = Manifest.load(score_dir / "manifest.json").score_reference
    assert reference is not None
    assert meta["parameters"]["reference_k"] == reference.k == 8  # conftest's SCORE_K
    assert meta["parameters"]["max_score_rows"] == MAX_SCORE_ROWS


def test_only_a_pair_with_logits_is_scored(export_dir: Path, score_dir: Path) -> None:
    assert "scorer" not in load_models(ServeConfig(onnx_dir=export_dir)).models
    lone = ServeConfig(decoder=score_dir / "decoder.onnx")
    assert "scorer" not in load_models(lone).models
    pair = ServeConfig(decoder=score_dir / "decoder.onnx", encoder=score_dir / "encoder.onnx")
    model = load_models(pair).models["scorer"]
    out = model.run({"image": np.zeros((2, 1, 28, 28), np.float32), "seed": np.array([1])})
    assert out["iwae"].shape == (2,)  # the manifest beside the graphs gives the reference
    assert np.isfinite(out["percentile"]).all()


def test_the_setting_is_checked_and_read(score_dir: Path) -> None:
    read = ServeConfig.from_dict({"onnx_dir": str(score_dir), "max_score_rows": "4096"})
    assert read.max_score_rows == 4096
    assert ServeConfig.from_json(read.to_json()) == read
    with pytest.raises(InvalidArgumentError, match="max score rows"):
        ServeConfig(onnx_dir=score_dir, max_score_rows=0).check()
