"""The seed model's shape and names, and the loss against a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vae_runtime.errors import InvalidArgumentError
from vae_train.data import MnistImages
from vae_train.model import VAE, OneDnnLinear, VAEConfig, linear_layer, loss_terms, onednn_missing
from vae_train.training import TrainSettings, train


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


# OneDnnLinear: nn.Linear's parameters, oneDNN's matmuls (training on the CPU in float32)


def _pair(batch: int, n_in: int, n_out: int) -> tuple[nn.Linear, OneDnnLinear, torch.Tensor]:
    torch.manual_seed(batch + n_in)
    plain = nn.Linear(n_in, n_out)
    fast = OneDnnLinear(n_in, n_out)
    fast.load_state_dict(plain.state_dict())
    return plain, fast, torch.rand(batch, n_in)


@pytest.mark.parametrize("shape", [(128, 784, 400), (37, 400, 784), (1, 64, 64)])
def test_onednn_linear_is_nn_linear_to_float32_rounding(shape: tuple[int, int, int]) -> None:
    if onednn_missing(torch.device("cpu")):
        pytest.skip(onednn_missing(torch.device("cpu")))
    plain, fast, x = _pair(*shape)
    grad = torch.randn(shape[0], shape[2])
    outs, grads = [], []
    for layer in (plain, fast):
        x_in = x.clone().requires_grad_(True)
        out = layer(x_in)
        out.backward(grad)
        outs.append(out.detach())
        assert x_in.grad is not None and layer.weight.grad is not None
        assert layer.bias is not None and layer.bias.grad is not None
        grads.append((x_in.grad, layer.weight.grad, layer.bias.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for ours, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():  # evaluation goes through the same layer
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def test_onednn_linear_skips_the_input_gradient_it_is_not_asked_for() -> None:
    if onednn_missing(torch.device("cpu")):
        pytest.skip(onednn_missing(torch.device("cpu")))
    _, fast, x = _pair(16, 784, 400)  # x (the images) needs no gradient, as in fc1
    fast(x).sum().backward()
    assert x.grad is None and fast.weight.grad is not None


def test_training_builds_the_large_layers_on_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """linear_layer: fc1 and fc4 on oneDNN, the 20-wide layers next to the latent on
    nn.Linear; the state dict is the plain model's, so checkpoints do not change."""
    monkeypatch.delenv("VAE_ONEDNN", raising=False)
    cpu = torch.device("cpu")
    if onednn_missing(cpu):
        pytest.skip(onednn_missing(cpu))
    model = VAE(VAEConfig(), linear_layer(cpu, "fp32"))
    kinds = {name: type(module) for name, module in model.named_children()}
    assert kinds == {
        "fc1": OneDnnLinear,
        "fc2_mu": nn.Linear,
        "fc2_logvar": nn.Linear,
        "fc3": nn.Linear,
        "fc4": OneDnnLinear,
    }
    plain = VAE(VAEConfig()).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in plain.items()
    }
    VAE(VAEConfig()).load_state_dict(model.state_dict())  # and back


@pytest.mark.parametrize(
    ("device", "dtype", "env", "why"),
    [
        ("cpu", "bf16", "1", "bf16 runs under autocast"),
        ("cpu", "fp32", "0", "VAE_ONEDNN=0"),
        ("meta", "fp32", "1", "not meta"),
    ],
)
def test_where_training_keeps_nn_linear(
    monkeypatch: pytest.MonkeyPatch, device: str, dtype: str, env: str, why: str
) -> None:
    monkeypatch.setenv("VAE_ONEDNN", env)
    assert why in onednn_missing(torch.device(device), dtype)
    model = VAE(VAEConfig(), linear_layer(torch.device(device), dtype))
    assert {type(m) for m in model.children()} == {nn.Linear}


def test_training_on_onednn_agrees_with_nn_linear(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_data: MnistImages
) -> None:
    """Two epochs of vae-train's loop, oneDNN layers against VAE_ONEDNN=0: the same run to
    float32 rounding (the matmuls sum in another order, nothing else differs)."""
    if onednn_missing(torch.device("cpu")):
        pytest.skip(onednn_missing(torch.device("cpu")))
    config = VAEConfig(hidden_dim=64, latent_dim=3)  # 784-64: both large layers on oneDNN
    settings = TrainSettings(epochs=2, batch_size=64, seed=3, device="cpu")
    runs = []
    for env in ("1", "0"):
        monkeypatch.setenv("VAE_ONEDNN", env)
        runs.append(train(settings, config, out_dir=tmp_path / env, data=tiny_data))
    ours, plain = runs
    for a, b in zip(ours.metrics, plain.metrics, strict=True):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    for k, v in ours.state_dict.items():
        torch.testing.assert_close(v, plain.state_dict[k], rtol=1e-4, atol=1e-5)
