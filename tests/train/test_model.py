"""The seed model's shape and names, and the loss against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vae_runtime.errors import InvalidArgumentError
from vae_train.model import VAE, VAEConfig, loss_terms


def test_seed_layer_names_and_sizes() -> None:
    shapes = {k: tuple(v.shape) for k, v in VAE().state_dict().items()}
    assert shapes == {
        "fc1.weight": (400, 784),
        "fc1.bias": (400,),
        "fc2_mu.weight": (20, 400),
        "fc2_mu.bias": (20,),
        "fc2_logvar.weight": (20, 400),
        "fc2_logvar.bias": (20,),
        "fc3.weight": (400, 20),
        "fc3.bias": (400,),
        "fc4.weight": (784, 400),
        "fc4.bias": (784,),
    }


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_config_refuses_nonsense(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="latent_dim"):
        VAEConfig(latent_dim=bad)  # type: ignore[arg-type]


def test_config_round_trip_and_unknown_keys() -> None:
    config = VAEConfig(hidden_dim=16, latent_dim=3)
    assert VAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidArgumentError, match="unknown"):
        VAEConfig.from_dict({"hidden_dim": 16, "latent_dim": 3, "dropout": 0.1})


def test_forward_is_the_reparameterisation() -> None:
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_dim=8, latent_dim=2))
    x = torch.rand(5, 784)
    eps = torch.randn(5, 2)
    logits, mu, logvar = model(x, eps)
    assert logits.shape == (5, 784)
    expected = model.decode_logits(mu + eps * torch.exp(0.5 * logvar))
    torch.testing.assert_close(logits, expected)
    # eps = 0 decodes the posterior mean; decode() is the sigmoid of the logits
    zero_logits, _, _ = model(x, torch.zeros(5, 2))
    torch.testing.assert_close(torch.sigmoid(zero_logits), model.decode(mu))


def test_loss_against_hand_computation() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, size=(3, 784))
    x = rng.uniform(0, 1, size=(3, 784))
    mu = rng.normal(size=(3, 4))
    logvar = rng.normal(size=(3, 4))
    p = 1 / (1 + np.exp(-logits))
    bce_hand = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
    kl_hand = sum(
        0.5 * (math.exp(lv) + m * m - 1 - lv)
        for m, lv in zip(mu.ravel(), logvar.ravel(), strict=True)
    )
    bce, kl = loss_terms(*(torch.tensor(a) for a in (logits, x, mu, logvar)))
    assert bce.item() == pytest.approx(bce_hand, rel=1e-9)
    assert kl.item() == pytest.approx(kl_hand, rel=1e-9)


def test_loss_is_stable_for_saturated_logits() -> None:
    # log(sigmoid(-200)) underflows naively; from logits the loss is exactly 200 per pixel
    logits = torch.full((1, 784), -200.0)
    x = torch.ones(1, 784)
    bce, kl = loss_terms(logits, x, torch.zeros(1, 2), torch.zeros(1, 2))
    assert bce.item() == pytest.approx(200.0 * 784)
    assert kl.item() == 0.0
