"""The runtime Scorer against vae-eval's torch arithmetic, on one fixed noise tensor, and the
score reference an export writes into its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from vae_export.onnx_export import REFERENCE_K, export_checkpoint
from vae_export.verify import BATCH_SIZES
from vae_runtime import Scorer, ScoreReference
from vae_runtime.contract import Manifest
from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_train.data import TEST_IMAGES, find_images
from vae_train.evaluate import bound_terms, scores_with_noise

if TYPE_CHECKING:  # the fixture's type, defined in tests/export/conftest.py
    from conftest import Exported

PARITY_NATS = 1e-4  # per image, for each of elbo, iwae and bce (fp32 graphs)


@pytest.mark.parametrize("k", [1, 16])
def test_scorer_matches_torch_on_the_same_noise(
    exported: Exported, digits: np.ndarray, k: int
) -> None:
    images = digits[:64]  # float32 (64, 1, 28, 28) in [0, 1]
    d = exported.model.config.latent_dim
    eps = np.random.default_rng(11).standard_normal((len(images), k, d)).astype(np.float32)
    scorer = Scorer(exported.encoder, exported.decoder)
    got = scorer.score_with_noise(images, eps)
    want = scores_with_noise(
        exported.model, torch.from_numpy(images.reshape(len(images), -1)), torch.from_numpy(eps)
    )
    for name in ("elbo", "iwae", "bce"):
        diff = np.abs(getattr(got, name) - want[name].numpy())
        assert diff.max() <= PARITY_NATS, (name, float(diff.max()))
    if k == 1:
        np.testing.assert_array_equal(got.iwae, got.elbo)


def test_the_torch_helper_is_vae_evals_computation(exported: Exported, digits: np.ndarray) -> None:
    """scores_with_noise on the draws bound_terms makes gives bound_terms' IWAE bound, and
    its ELBO is bound_terms' likelihood term minus the Monte-Carlo KL of those draws (vae-eval
    reports the analytic KL instead: the same expectation, less variance)."""
    x = torch.from_numpy(digits[:8].reshape(8, -1))
    k, d = 12, exported.model.config.latent_dim
    with torch.inference_mode():
        terms = bound_terms(exported.model, x, k, torch.Generator().manual_seed(5))
    eps = torch.randn(k, 8, d, generator=torch.Generator().manual_seed(5))  # the same draws
    helper = scores_with_noise(exported.model, x, eps.transpose(0, 1))
    # bound_terms sums the 784 likelihood terms in float32 (fast; ~1e-4 per image), the helper
    # in float64: the same bound within that rounding
    np.testing.assert_allclose(helper["iwae"].numpy(), terms["iwae"].numpy(), atol=1e-3)
    mu, logvar = terms["mu"].double(), terms["logvar"].double()
    z = mu + torch.exp(0.5 * logvar) * eps.double()  # (k, 8, d)
    mc_kl = (0.5 * (z * z - eps.double() ** 2 - logvar)).sum(-1).mean(0)  # log q - log p
    np.testing.assert_allclose(helper["elbo"].numpy(), (terms["rec"] - mc_kl).numpy(), atol=1e-3)


def test_an_export_without_data_scores_its_decoded_samples(exported: Exported) -> None:
    reference = Manifest.load(exported.result.manifest_path).score_reference
    assert reference is not None
    assert (reference.statistic, reference.k, reference.seed) == ("iwae", REFERENCE_K, 0)
    assert reference.count == max(BATCH_SIZES)  # the verification's decoded samples
    assert "decoded samples" in reference.source


def test_the_reference_is_the_test_sets_scores_and_reads_uniform_percentiles(
    checkpoints: dict[str, Path], mnist_dir: Path, tmp_path: Path
) -> None:
    """Exported with a data folder: the reference is the runtime Scorer's IWAE bound of every
    test image at k = 64, seed 0, so the test images' own percentiles spread evenly."""
    result = export_checkpoint(checkpoints["tiny"], tmp_path, data_dir=mnist_dir)
    reference = result.manifest.score_reference
    assert reference is not None
    assert Manifest.load(result.manifest_path).score_reference == reference
    test_file = find_images(mnist_dir, TEST_IMAGES)
    assert test_file is not None
    test = read_idx(test_file, IMAGES_MAGIC)  # uint8 (128, 28, 28), as vae-score reads IDX
    assert (reference.count, reference.source) == (len(test), "MNIST test set")
    scorer = Scorer.load(tmp_path)
    assert scorer.reference == reference
    scores = scorer.score(test, k=reference.k, seed=reference.seed)
    assert reference == ScoreReference.of(
        scores.iwae, k=reference.k, seed=reference.seed, source=reference.source
    )
    pct = np.sort(scorer.percentile(scores.iwae))
    np.testing.assert_allclose(pct, np.linspace(0, 100, len(test)), atol=0.5)
