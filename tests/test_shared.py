"""The shared pieces all three packages rely on: graph metadata, crash-safe output, CLI errors."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vae_runtime import contract
from vae_runtime._cli import VaeCommand, make_app
from vae_runtime.errors import DataError, ModelFileError, OutputError
from vae_runtime.fileio import atomic_output, check_output_file, sha256_file


def _meta(**overrides: str) -> dict[str, str]:
    props = contract.build_metadata(
        "decoder",
        12,
        producer_version="9.9.9",
        source={"checkpoint": "model.pt", "sha256": "ab" * 32},
        training={"epochs": 3, "test_loss": 101.5},
    )
    props.update(overrides)
    return props


def test_metadata_round_trips() -> None:
    info = contract.parse_metadata(_meta(), "d.onnx")
    assert info.role == "decoder"
    assert info.latent_dim == 12
    assert info.format_version == contract.FORMAT_VERSION
    assert info.producer == contract.PRODUCER
    assert info.producer_version == "9.9.9"
    assert info.source == {"checkpoint": "model.pt", "sha256": "ab" * 32}
    assert info.training == {"epochs": 3, "test_loss": 101.5}
    assert all(isinstance(v, str) for v in _meta().values())


def test_unknown_role_is_refused_when_building() -> None:
    with pytest.raises(ValueError, match="role"):
        contract.build_metadata("generator", 2, producer_version="x", source={}, training={})


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({}, "not an mnist-vae graph"),
        (_meta(**{contract.META_FORMAT: str(contract.FORMAT_VERSION + 1)}), "newer"),
        (_meta(**{contract.META_ROLE: "generator"}), "unknown role"),
        (_meta(**{contract.META_LATENT_DIM: "0"}), "not positive"),
        (_meta(**{contract.META_LATENT_DIM: "twenty"}), "malformed"),
        (_meta(**{contract.META_IMAGE_SHAPE: json.dumps([3, 32, 32])}), "image shape"),
        (_meta(**{contract.META_TRAINING: "{not json"}), "malformed"),
    ],
)
def test_bad_metadata_names_the_file_and_problem(props: dict[str, str], message: str) -> None:
    with pytest.raises(ModelFileError, match=message) as info:
        contract.parse_metadata(props, "weird.onnx")
    assert str(info.value).startswith("weird.onnx: ")
    assert "\n" not in str(info.value)


def test_atomic_output_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def interrupted_write() -> None:
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temp file left
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_output_into_missing_folder_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"), atomic_output(tmp_path / "no" / "f"):
        pass


def test_check_output_file(tmp_path: Path) -> None:
    existing = tmp_path / "a.png"
    existing.write_bytes(b"x")
    check_output_file(existing)  # force defaults to True
    with pytest.raises(OutputError, match="--force"):
        check_output_file(existing, force=False)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "a.png")


def test_sha256_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _app_raising(exc: BaseException) -> typer.Typer:
    app = make_app("Raises.")

    @app.command(cls=VaeCommand)
    def run(count: int = typer.Option(1, min=1)) -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "args", "code", "line"),
    [
        (DataError("x.idx: truncated"), [], 1, "prog: error: x.idx: truncated"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/full/model.pt"),
            [],
            1,
            "prog: error: /full/model.pt: No space left on device",
        ),
        (DataError("unused"), ["--count", "0"], 2, "prog: error: Invalid value for '--count'"),
        (DataError("unused"), ["--bogus"], 2, "prog: error: No such option: --bogus"),
    ],
)
def test_cli_failures_are_one_line(
    exc: BaseException, args: list[str], code: int, line: str
) -> None:
    result = CliRunner().invoke(_app_raising(exc), args, prog_name="prog")
    assert result.exit_code == code
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(line)
    assert "Traceback" not in result.output
