"""Scorer: per-image ELBO, IWAE bound and BCE from hand-built graphs with logits (no torch)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from runtime_graphs import build_decoder, build_encoder, write_manifest

from vae_runtime import (
    Decoder,
    Encoder,
    InvalidArgumentError,
    Manifest,
    ModelFileError,
    Scorer,
    ScoreReference,
    Scores,
)
from vae_runtime.contract import MANIFEST_FILE, SCORE_REFERENCE
from vae_runtime.scoring import DEFAULT_K, MAX_K

LATENT = 3


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, templates: np.ndarray) -> Path:
    """encoder.onnx + decoder.onnx (with logits) + manifest.json, latent size 3."""
    folder = tmp_path_factory.mktemp("scoring")
    decoder = build_decoder(LATENT, 16, templates=templates, logits=True)
    onnx.save(decoder, folder / "decoder.onnx")
    onnx.save(build_encoder(LATENT, 16), folder / "encoder.onnx")
    write_manifest(folder, "decoder.onnx", "encoder.onnx", latent_dim=LATENT)
    return folder


@pytest.fixture(scope="module")
def scorer(export_dir: Path) -> Scorer:
    return Scorer.load(export_dir)


@pytest.fixture(scope="module")
def images(make_digits: Callable[..., tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    digits, _ = make_digits(12, 5)
    return digits  # uint8 (12, 28, 28)


def _equal(a: Scores, b: Scores) -> None:
    for name in ("elbo", "iwae", "bce"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_scores_are_float64_per_image_and_bounded_as_the_theory_says(
    scorer: Scorer, images: np.ndarray
) -> None:
    scores = scorer.score(images, k=32, seed=1)
    assert len(scores) == 12
    for values in (scores.elbo, scores.iwae, scores.bce):
        assert values.dtype == np.float64
        assert values.shape == (12,)
        assert np.isfinite(values).all()
    assert np.all(scores.iwae >= scores.elbo)  # Jensen: log of a mean >= mean of the logs
    assert np.all(scores.elbo < 0)  # a log-likelihood bound of 784 Bernoulli pixels
    assert np.all(scores.bce > 0)


def test_one_draw_makes_the_iwae_bound_the_elbo(scorer: Scorer, images: np.ndarray) -> None:
    scores = scorer.score(images, k=1, seed=3)
    np.testing.assert_array_equal(scores.iwae, scores.elbo)


def test_scores_do_not_depend_on_the_batch_size(scorer: Scorer, images: np.ndarray) -> None:
    whole = scorer.score(images, k=20, seed=2)
    for batch_size in (1, 7, 20, 41, 1 << 16):
        _equal(scorer.score(images, k=20, seed=2, batch_size=batch_size), whole)


def test_an_image_scores_the_same_alone_or_among_others(scorer: Scorer, images: np.ndarray) -> None:
    """Image j draws from default_rng([seed, j]): `start` keeps the index of a shard."""
    whole = scorer.score(images, k=16, seed=4)
    tail = scorer.score(images[5:], k=16, seed=4, start=5)
    _equal(tail, Scores(whole.elbo[5:], whole.iwae[5:], whole.bce[5:]))
    alone = scorer.score(images[5:6], k=16, seed=4)  # index 0 now: other draws
    assert alone.iwae[0] != whole.iwae[5]
    assert alone.bce[0] == whole.bce[5]  # the posterior mean: no draws


def test_the_noise_is_default_rng_of_seed_and_index(scorer: Scorer, images: np.ndarray) -> None:
    k = 8
    eps = np.stack(
        [np.random.default_rng([7, j]).standard_normal((k, LATENT)) for j in range(len(images))]
    ).astype(np.float32)
    _equal(scorer.score_with_noise(images, eps), scorer.score(images, k=k, seed=7))
    other = scorer.score(images, k=k, seed=8)
    assert not np.array_equal(other.iwae, scorer.score(images, k=k, seed=7).iwae)


def test_the_bounds_match_a_direct_float64_computation(
    export_dir: Path, scorer: Scorer, images: np.ndarray
) -> None:
    """elbo, iwae and bce from the graphs' outputs, written out in float64 in the simplest way."""
    k = 6
    eps = np.random.default_rng(0).standard_normal((len(images), k, LATENT)).astype(np.float32)
    got = scorer.score_with_noise(images, eps)
    encoder, decoder = Encoder.load(export_dir / "encoder.onnx"), scorer.decoder
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    mu, logvar = encoder.encode(images)
    z = mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps  # (N, k, d) float32
    logits = decoder.decode_logits(z.reshape(-1, LATENT)).reshape(len(images), k, -1)
    l64 = logits.astype(np.float64)
    log_px = (x[:, None] * l64 - np.logaddexp(0.0, l64)).sum(-1)
    log_pz = -0.5 * (z.astype(np.float64) ** 2 + math.log(2 * math.pi)).sum(-1)
    log_qz = -0.5 * (eps.astype(np.float64) ** 2 + math.log(2 * math.pi) + logvar[:, None]).sum(-1)
    log_w = log_px + log_pz - log_qz
    # the Scorer's log1p(exp(-|l|)) is float32 (~4e-9 per pixel): far below the 1e-4 of parity
    atol = 1e-5
    np.testing.assert_allclose(got.elbo, log_w.mean(1), rtol=0, atol=atol)
    iwae = np.log(np.mean(np.exp(log_w - log_w.max(1, keepdims=True)), 1)) + log_w.max(1)
    np.testing.assert_allclose(got.iwae, iwae, rtol=0, atol=atol)
    l_mu = decoder.decode_logits(mu).reshape(len(images), -1).astype(np.float64)
    np.testing.assert_allclose(got.bce, (np.logaddexp(0.0, l_mu) - x * l_mu).sum(-1), atol=atol)


def test_large_logits_keep_the_likelihood_finite(export_dir: Path, images: np.ndarray) -> None:
    """Where the float32 sigmoid saturates at 1.0, log(1 - p) from the image would be -inf;
    from the logits it is exact."""
    scorer = Scorer.load(export_dir)
    ink = np.zeros((1, 28, 28), np.uint8)  # all black: the saturated pixels' 1 - p matters
    eps = np.full((1, 4, LATENT), 40.0, np.float32)  # far out: huge logits
    scores = scorer.score_with_noise(ink, eps)
    assert np.isfinite(scores.elbo).all()
    assert np.isfinite(scores.iwae).all()


def test_memory_is_bounded_by_the_batch_size(scorer: Scorer, images: np.ndarray) -> None:
    runs: list[int] = []
    real = scorer.decoder._logits_batch

    def spy(z: np.ndarray) -> np.ndarray:
        runs.append(len(z))
        return real(z)

    scorer.decoder._logits_batch = spy  # type: ignore[method-assign]
    try:
        for k, batch_size in ((50, 16), (3, 16), (1, 1), (200, 64)):
            runs.clear()
            scorer.score(images, k=k, batch_size=batch_size)
            assert max(runs) <= batch_size, (k, batch_size)
            assert sum(runs) == len(images) * (k + 1)  # k draws and the posterior mean each
    finally:
        del scorer.decoder._logits_batch


def test_no_images_no_scores(scorer: Scorer) -> None:
    scores = scorer.score(np.zeros((0, 28, 28), np.uint8))
    assert len(scores) == 0


def test_a_decoder_without_logits_is_refused_in_one_line(
    tmp_path: Path, export_dir: Path, graphs: dict[str, Path]
) -> None:
    onnx.save(build_decoder(LATENT, 16), tmp_path / "decoder.onnx")
    (tmp_path / "encoder.onnx").write_bytes((export_dir / "encoder.onnx").read_bytes())
    for attempt in (
        lambda: Scorer.load(tmp_path),
        lambda: Scorer(Encoder.load(tmp_path / "encoder.onnx"), Decoder.load(graphs["decoder"])),
    ):
        with pytest.raises(ModelFileError, match="has no logits output") as info:
            attempt()
        assert "re-export it with this mnist-vae to score" in str(info.value)
        assert "\n" not in str(info.value)


def test_a_pair_of_different_latent_sizes_is_refused(
    export_dir: Path, graphs: dict[str, Path]
) -> None:
    with pytest.raises(ModelFileError, match="latent size"):
        Scorer(Encoder.load(graphs["encoder20"]), Decoder.load(export_dir / "decoder.onnx"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k"),
        ({"k": MAX_K + 1}, "k"),
        ({"k": 2.5}, "k"),
        ({"seed": -1}, "seed"),
        ({"start": -1}, "start"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_arguments_are_refused(
    scorer: Scorer, images: np.ndarray, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        scorer.score(images, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "eps", "message"),
    [
        (np.zeros((2, 5, 5), np.uint8), np.zeros((2, 1, LATENT)), "images must have shape"),
        (np.full((2, 28, 28), 2.0), np.zeros((2, 1, LATENT)), r"\[0, 1\]"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((3, 1, LATENT)), r"\(N, k, latent_dim\)"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1, 5)), r"\(N, k, latent_dim\)"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 0, LATENT)), "k"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1, LATENT), int), "floats"),
        (np.zeros((2, 28, 28), np.uint8), np.full((2, 1, LATENT), np.nan), "NaN"),
    ],
)
def test_bad_images_and_noise_are_refused(
    scorer: Scorer, data: np.ndarray, eps: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        scorer.score_with_noise(data, eps)


def test_percentiles_come_from_the_manifests_reference(
    tmp_path: Path, export_dir: Path, scorer: Scorer, images: np.ndarray
) -> None:
    with pytest.raises(InvalidArgumentError, match="no score reference"):
        scorer.percentile(np.zeros(3))
    assert scorer.reference is None
    for name in ("encoder.onnx", "decoder.onnx"):
        (tmp_path / name).write_bytes((export_dir / name).read_bytes())
    scores = scorer.score(images, k=DEFAULT_K)
    reference = ScoreReference.of(scores.iwae, k=DEFAULT_K, seed=0)
    manifest = Manifest.load(export_dir / MANIFEST_FILE)
    details = {**manifest.details, SCORE_REFERENCE: reference.to_json()}
    (tmp_path / MANIFEST_FILE).write_bytes(
        Manifest(manifest.files, manifest.latent_dim, details=details).to_bytes()
    )
    with_reference = Scorer.load(tmp_path)
    assert with_reference.reference == reference
    pct = with_reference.percentile(scores.iwae)
    # the lowest and highest reference scores (quantiles stored to 1e-4 nats)
    assert pct.min() == pytest.approx(0.0, abs=0.01)
    assert pct.max() == pytest.approx(100.0, abs=0.01)
    assert np.all(np.diff(pct[np.argsort(scores.iwae)]) >= 0)


def test_load_refuses_unknown_precision_and_missing_graphs(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="precision must be one of"):
        Scorer.load(tmp_path, precision="int4")
    with pytest.raises(ModelFileError, match="no such file"):
        Scorer.load(tmp_path)


def test_threads_split_the_arithmetic_without_changing_a_bit(
    scorer: Scorer, images: np.ndarray
) -> None:
    one = Scorer(scorer.encoder, scorer.decoder, threads=1)
    three = Scorer(scorer.encoder, scorer.decoder, threads=3)
    for k, batch_size in ((64, None), (300, 300)):  # split by images, then by draws
        _equal(three.score(images, k=k, batch_size=batch_size), one.score(images, k=k))
    with pytest.raises(InvalidArgumentError, match="threads"):
        Scorer(scorer.encoder, scorer.decoder, threads=0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((3, 5, 5), np.uint8), r"got \(3, 5, 5\)"),
        (np.zeros((3, 2, 28, 28), np.uint8), r"got \(3, 2, 28, 28\)"),
        (np.full((2, 28, 28), 1.5), r"\[0, 1\], got 1.5\.\.1.5"),
        (np.full((2, 28, 28), np.inf), "NaN or infinite"),
        (np.zeros((2, 28, 28), np.int32), "uint8"),
        ("digits", "images must"),
    ],
)
def test_score_checks_all_images_before_any_work(
    scorer: Scorer, data: object, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        scorer.score(data)


def test_one_image_of_28_by_28_is_a_batch_of_one(scorer: Scorer, images: np.ndarray) -> None:
    one = scorer.score(images[3], k=4, seed=1, start=3)
    _equal(one, scorer.score(images[3:4], k=4, seed=1, start=3))
    float_images = images.astype(np.float64).reshape(-1, 1, 28, 28) / 255.0
    _equal(scorer.score(float_images, k=4), scorer.score(images, k=4))


def test_loaded_sessions_do_not_spin_between_runs(scorer: Scorer) -> None:
    """The likelihood arithmetic runs between the decoder's runs: spinning threads would take
    its cores."""
    for graph in (scorer.encoder, scorer.decoder):
        options = graph._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
