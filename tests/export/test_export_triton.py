"""`vae-export --triton-repo DIR`: a Triton model repository, parsed by the ModelConfig protobuf
that tritonclient ships (Triton's own schema, loaded by file path: no grpcio needed), then checked
for what the parser does not check: names, datatypes and dims against the ONNX graphs and the
contract, a positive max_batch_size, the metadata as parameters. Plus the export's rules: the
repository is part of the same set of files (refused before any work, gone after a failure)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from google.protobuf import json_format, text_format
from helpers import expect_error
from triton_schema import PB2
from typer.testing import CliRunner

from vae_export import cli, triton
from vae_runtime import contract as C
from vae_runtime.errors import OutputError
from vae_runtime.session import Decoder, Encoder

PRECISIONS = ("fp32", "int8")
NAMES = ["decoder", "decoder_int8", "encoder", "encoder_int8"]


def parse(path: Path) -> Any:
    """config.pbtxt as Triton reads it (text_format.ParseError on anything it would refuse)."""
    return text_format.Parse(path.read_text("utf-8"), PB2.ModelConfig())


@pytest.fixture(scope="module")
def exported(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vae-export tiny/model.pt -o out --precision fp32,int8 --triton-repo repo` (the folder
    holding out/ and repo/)."""
    root = tmp_path_factory.mktemp("triton")
    args = [checkpoints["tiny"], "-o", root / "out", "-p", ",".join(PRECISIONS), "-q"]
    result = CliRunner().invoke(cli.app, [*map(str, args), "--triton-repo", str(root / "repo")])
    assert result.exit_code == 0, result.output
    return root


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_the_repository_has_one_model_per_graph(exported: Path) -> None:
    repo = exported / "repo"
    assert sorted(p.name for p in repo.iterdir()) == NAMES
    for name in NAMES:
        files = sorted(str(p.relative_to(repo / name)) for p in (repo / name).rglob("*"))
        assert files == ["1", "1/model.onnx", "config.pbtxt"], files  # no staging left over


@pytest.mark.parametrize("name", NAMES)
def test_config_matches_graph_and_contract(exported: Path, name: str) -> None:
    repo, out = exported / "repo", exported / "out"
    manifest = C.Manifest.load(out / C.MANIFEST_FILE)
    role, _, precision = name.partition("_")
    precision = precision or "fp32"
    graph_path = out / C.graph_file(role, precision)
    model_path = repo / name / triton.VERSION / triton.MODEL_FILE
    assert model_path.read_bytes() == graph_path.read_bytes()  # the graph the export verified
    config = parse(repo / name / triton.CONFIG_FILE)

    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0
    assert config.HasField("dynamic_batching")
    assert [(g.kind, g.count > 0) for g in config.instance_group] == [
        (PB2.ModelInstanceGroup.KIND_CPU, True)
    ]
    # Names, datatypes and dims after the batch axis: the ONNX graph's own, and the contract's.
    graph = onnx.load(model_path).graph
    interface = C.INTERFACES[role]
    for config_side, actual, contract in (
        (config.input, graph.input, interface.inputs),
        (config.output, graph.output, interface.outputs),
    ):
        assert (
            [t.name for t in config_side] == [t.name for t in actual] == [t.name for t in contract]
        )
        for tensor, value_info, decl in zip(config_side, actual, contract, strict=True):
            assert tensor.data_type == PB2.DataType.TYPE_FP32
            assert value_info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            assert interface.dtype == "float32"
            batch, *rest = _dims(value_info)
            assert batch == C.BATCH_AXIS  # dynamic: what max_batch_size stands for
            assert list(tensor.dims) == rest == list(decl.shape(manifest.latent_dim))
    # The graph's metadata, each key a parameter, and its SHA-256 as the manifest lists it.
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    metadata = {p.key: p.value for p in onnx.load(model_path).metadata_props}
    assert parameters == {**metadata, "sha256": manifest.files[graph_path.name].sha256}
    assert parameters[C.META_PRECISION] == precision
    assert json.loads(parameters[C.META_SOURCE])["checkpoint"] == "model.pt"
    # And the runtime loads the repository's file as the graph it is.
    kind = Decoder if role == "decoder" else Encoder
    assert kind.load(model_path).precision == precision


def test_parameters_survive_any_text() -> None:
    odd = 'quotes " and \\ backslash, a\nnewline, a\ttab, ünïcödé, {braces} # not a comment'
    blob = b"not a graph: only hashed here"
    text = triton.config_text("decoder", "fp16", 7, blob, {"vae.training": odd})
    config = text_format.Parse(text, PB2.ModelConfig())
    assert config.name == "decoder_fp16"
    assert config.parameters["vae.training"].string_value == odd
    assert config.parameters["sha256"].string_value == hashlib.sha256(blob).hexdigest()
    assert list(config.input[0].dims) == [7]


@pytest.mark.parametrize("role", C.ROLES)
def test_the_config_dict_and_the_pbtxt_agree(role: str) -> None:
    """model_config (the JSON form, as GET /v2/models/{name}/config answers) and config.pbtxt
    are one configuration: Triton's parser reads the text into the message the dict describes,
    and the tensors are the role's declared interface."""
    blob, metadata = b"graph bytes", {"vae.role": role, "odd": 'a "quoted"\nline'}
    config = triton.model_config(role, "int8", 5, blob, metadata)
    json.dumps(config)  # plain JSON types only
    from_text = text_format.Parse(
        triton.config_text(role, "int8", 5, blob, metadata), PB2.ModelConfig()
    )
    # ParseDict refuses a key that is no ModelConfig field: the dict is Triton's JSON form.
    assert from_text == json_format.ParseDict(config, PB2.ModelConfig())
    assert from_text.parameters["odd"].string_value == metadata["odd"]
    interface = C.INTERFACES[role]
    for key, declared in (("input", interface.inputs), ("output", interface.outputs)):
        assert [(t["name"], t["data_type"], t["dims"]) for t in config[key]] == [
            (d.name, triton.DATA_TYPES[interface.dtype], list(d.shape(5))) for d in declared
        ]
    assert config["name"] == C.served_name(role, "int8") == f"{role}_int8"


def test_unknown_role_or_precision() -> None:
    with pytest.raises(ValueError, match="no graph file"):
        triton.model_config("decoder", "int4", 5, b"", {})
    with pytest.raises(ValueError, match="no graph file"):
        triton.model_config("critic", "fp32", 5, b"", {})


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "out", tmp_path / "repo"


def _export(checkpoint: Path, out: Path, repo: Path, *extra: str) -> Any:
    args = [str(checkpoint), "-o", str(out), "--triton-repo", str(repo), "-q", *extra]
    return CliRunner().invoke(cli.app, args)


def test_a_repository_that_is_a_file_is_refused_first(
    checkpoints: dict[str, Path], folders: tuple[Path, Path]
) -> None:
    out, repo = folders
    repo.write_text("a file")
    result = _export(checkpoints["tiny"], out, repo)
    expect_error(result, 2, f"cannot create output folder {repo}/.*: {repo} is not a folder")
    assert not out.exists() and repo.read_text() == "a file"


def test_an_existing_repository_needs_force(
    checkpoints: dict[str, Path], folders: tuple[Path, Path]
) -> None:
    out, repo = folders
    config = repo / "decoder" / triton.CONFIG_FILE
    config.parent.mkdir(parents=True)
    config.write_text("someone's config")
    result = _export(checkpoints["tiny"], out, repo)
    expect_error(result, 2, f"{config} already exists; pass --force")
    assert not out.exists() and config.read_text() == "someone's config"
    assert sorted(p.name for p in repo.rglob("*")) == ["config.pbtxt", "decoder"]


def test_a_failure_while_writing_the_repository_writes_nothing(
    checkpoints: dict[str, Path], folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, repo = folders

    def full_disk(*args: Any) -> str:
        raise OutputError(f"{repo}/encoder/config.pbtxt: cannot write it: No space left on device")

    monkeypatch.setattr(triton, "config_text", full_disk)
    result = _export(checkpoints["tiny"], out, repo)
    expect_error(result, 1, "No space left on device")
    assert not out.exists() and not repo.exists()  # the folders it made went with the staging


def test_vae_serve_answers_the_repository_s_config(exported: Path) -> None:
    """`GET /v2/models/{name}/config` of vae-serve on the export folder (tritonclient.http) is,
    model for model, the config.pbtxt that the same export wrote into the repository."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
    from serve_support import client, thread_server

    from vae_serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(onnx_dir=exported / "out"))  # default --max-batch: 1024
    with thread_server(app) as running:
        for name in NAMES:
            served = client(running).get_model_config(name)
            from_text = parse(exported / "repo" / name / triton.CONFIG_FILE)
            assert json_format.ParseDict(served, PB2.ModelConfig()) == from_text, name
            last = "logits" if name.startswith("decoder") else "logvar"
            assert served["output"][-1]["name"] == last  # every declared output, as Triton's
