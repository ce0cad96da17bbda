"""vae-serve on what `vae-export --precision fp32,int8,fp16` really writes: every graph served
under its name, the manifest's quality figures in the model metadata, `--precision` choosing the
default names, and /samples.png equal to vae-generate's file for the chosen graph."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tritonclient.http as triton
from serve_support import BIN, request, thread_server

from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder
from vae_serve.app import ServeConfig, create_app
from vae_serve.models import load_models

pytestmark = pytest.mark.slow  # one real export of three precisions (~10 s)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-weight model.pt exported in all three precisions by vae-export."""
    import torch  # the full install has it (make install); a missing torch is a failure here

    from vae_train.checkpoint import Checkpoint, save_checkpoint
    from vae_train.model import VAE, VAEConfig

    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    config = VAEConfig(hidden_dim=64, latent_dim=8)
    metrics = [{"epoch": 1, "train_loss": 200.0, "test_loss": 210.0}]
    model = VAE(config).state_dict()
    save_checkpoint(Checkpoint(config, model, epoch=1, metrics=metrics), folder / "model.pt")
    command = [BIN / "vae-export", folder / "model.pt", "--precision", "fp32,int8,fp16", "-q"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder


def test_every_precision_served(exported: Path) -> None:
    models = load_models(ServeConfig(onnx_dir=exported)).models
    assert list(models) == [
        "decoder",
        "decoder_int8",
        "decoder_fp16",
        "encoder",
        "encoder_int8",
        "encoder_fp16",
        "sampler",
        "scorer",  # a real export's decoder has the logits output
    ]
    for name, model in models.items():
        precision = name.partition("_")[2] or "fp32"
        if name not in ("sampler", "scorer"):
            assert model.parameters["precision"] == precision, name
            assert ("quality" in model.parameters) == (precision != "fp32"), name
    with thread_server(create_app(ServeConfig(onnx_dir=exported))) as running:
        z = sample_latents(6, 8, 3)
        given = triton.InferInput("z", list(z.shape), "FP32")
        given.set_data_from_numpy(z)
        client = triton.InferenceServerClient(running.address)
        for precision in ("int8", "fp16"):
            images = client.infer(f"decoder_{precision}", [given]).as_numpy("image")
            expected = Decoder.load(exported / f"decoder.{precision}.onnx").decode(z)
            assert images.tobytes() == expected.tobytes()
        meta = client.get_model_metadata("decoder_fp16")["parameters"]
        assert meta["precision"] == "fp16" and meta["quality"]


def test_precision_picks_the_default_names(exported: Path, tmp_path: Path) -> None:
    config = ServeConfig(onnx_dir=exported, precision="fp16")
    subprocess.run(
        [
            *(str(BIN / "vae-generate"), "--onnx", str(exported / "decoder.fp16.onnx")),
            *("--seed", "5", "--out", str(tmp_path / "grid.png")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with thread_server(create_app(config)) as running:
        status, _, body = request(running, "GET", "/samples.png?seed=5")
        assert status == 200 and body == (tmp_path / "grid.png").read_bytes()
        client = triton.InferenceServerClient(running.address)
        assert client.get_model_metadata("decoder")["parameters"]["precision"] == "fp16"
        assert client.get_model_metadata("decoder_fp32")["parameters"]["precision"] == "fp32"
        assert client.get_model_metadata("sampler")["parameters"]["precision"] == "fp16"
        fp32 = client.get_model_metadata("decoder_fp32")["parameters"]["file"]
        assert fp32 == "decoder.onnx"
