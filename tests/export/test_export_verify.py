"""The parity check itself: it fails when the graphs disagree, and then nothing is written."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from vae_export import onnx_export
from vae_export.verify import (
    ATOL,
    BATCH_SIZES,
    OUTPUT_RTOL,
    Comparison,
    Report,
    VerificationError,
    compare_graph,
    decoder_inputs,
    encoder_inputs,
    verify_graphs,
)
from vae_runtime.contract import DECODER_LOGITS, DECODER_OUTPUT
from vae_runtime.errors import ModelFileError
from vae_runtime.session import Decoder

if TYPE_CHECKING:  # the fixture's type, defined in tests/export/conftest.py
    from conftest import Exported


def _onnx_decoder(ex: Exported, shift: float = 0.0, nan: bool = False):
    """A reference that is the ONNX decoder itself, optionally shifted or poisoned. The logits
    also move by 4 x their rtol of each sample's largest |logit|, beyond their tolerance."""

    def run(z: np.ndarray) -> Mapping[str, np.ndarray]:
        out = ex.decoder.decode(z, batch_size=len(z)) + np.float32(shift)
        logits = ex.decoder.decode_logits(z, batch_size=len(z))
        if shift:
            scale = np.abs(logits).reshape(len(z), -1).max(axis=1).reshape(-1, 1, 1, 1)
            logits = logits + np.float32(shift) + 4 * OUTPUT_RTOL[DECODER_LOGITS] * scale
        if nan:
            out[0, 0, 0, 0] = logits[0, 0, 0, 0] = np.nan
        return {DECODER_OUTPUT: out, DECODER_LOGITS: logits}

    return run


def test_identical_outputs_pass_with_zero_difference(exported: Exported) -> None:
    cases = decoder_inputs(exported.model.config.latent_dim)
    rows = compare_graph(exported.decoder, _onnx_decoder(exported), cases)
    # one row per (input case, output), the image and then its logits
    assert [(r.inputs, r.output) for r in rows] == [
        (case, output) for case in cases for output in (DECODER_OUTPUT, DECODER_LOGITS)
    ]
    assert all(r.passed and r.max_abs == 0.0 and r.batch_sizes == BATCH_SIZES for r in rows)


@pytest.mark.parametrize(("shift", "nan"), [(3 * ATOL, False), (0.0, True)])
def test_a_difference_beyond_atol_or_a_nan_fails(
    exported: Exported, shift: float, nan: bool
) -> None:
    cases = decoder_inputs(exported.model.config.latent_dim)
    rows = compare_graph(
        exported.decoder, _onnx_decoder(exported, shift, nan), cases, batch_sizes=(1, 5)
    )
    report = Report(tuple(rows))
    assert not report.passed
    assert all(not r.passed for r in rows)
    message = report.failure_message()
    assert f"decoder output '{DECODER_OUTPUT}'" in message
    assert f"decoder output '{DECODER_LOGITS}'" in message
    assert f"atol {ATOL:g}" in message
    assert ("inf" if nan else f"{3 * ATOL:.3g}") in message
    assert " NO" in report.table()


def _nudged_logits(ex: Exported, size: Callable[[np.ndarray], np.ndarray]):
    """A reference that is the ONNX decoder with, in every sample, the logit nearest 0 moved by
    size(the samples' largest |logits|, one per sample)."""

    def run(z: np.ndarray) -> Mapping[str, np.ndarray]:
        logits = ex.decoder.decode_logits(z, batch_size=len(z)).reshape(len(z), -1)
        nearest_zero = np.abs(logits).argmin(axis=1)
        moved = logits.copy()
        moved[np.arange(len(z)), nearest_zero] += size(np.abs(logits).max(axis=1))
        return {
            DECODER_OUTPUT: ex.decoder.decode(z, batch_size=len(z)),
            DECODER_LOGITS: moved.reshape(len(z), 1, 28, 28),
        }

    return run


def _logits_row(rows: list[Comparison]) -> Comparison:
    (row,) = [r for r in rows if r.output == DECODER_LOGITS]
    return row


def test_a_logit_near_zero_is_held_to_its_samples_scale(exported: Exported) -> None:
    """Rounding in a float32 sum scales with its terms: a logit near 0 that cancels a sum of
    large products differs between two correct backends by far more than 1e-5 x |itself|
    (the 10-epoch real-data model: 1.1e-5 at a logit of 0.069 whose terms total 121). Such a
    difference, within atol + rtol x the sample's largest |logit|, passes; one sample's scale
    does not loosen another's tolerance."""
    rtol = OUTPUT_RTOL[DECODER_LOGITS]
    extreme = {
        k: v for k, v in decoder_inputs(exported.model.config.latent_dim).items() if "|z|" in k
    }
    (z,) = extreme.values()
    logits = np.abs(exported.decoder.decode_logits(z[:64], batch_size=64)).reshape(64, -1)
    largest, nearest_zero = logits.max(axis=1), logits.min(axis=1)
    # an elementwise rtol (atol + rtol x |the logit itself|) would refuse every nudge below
    assert (0.9 * (ATOL + rtol * largest) > ATOL + rtol * nearest_zero).all()
    assert largest.max() > 1.5 * largest.min()  # and the samples' scales differ

    within = compare_graph(
        exported.decoder,
        _nudged_logits(exported, lambda s: 0.9 * (ATOL + rtol * s)),
        extreme,
        batch_sizes=(1, 64),
    )
    assert all(r.passed for r in within)
    assert _logits_row(within).max_abs > ATOL

    beyond = compare_graph(  # every sample nudged within the largest sample's tolerance
        exported.decoder,
        _nudged_logits(exported, lambda s: np.full_like(s, 0.9 * (ATOL + rtol * s.max()))),
        extreme,
        batch_sizes=(64,),
    )
    assert not _logits_row(beyond).passed
    assert [r.passed for r in beyond if r.output == DECODER_OUTPUT] == [True]


def test_verification_inputs_are_fixed_and_in_range(digits: np.ndarray) -> None:
    a, b = encoder_inputs(digits, "digits"), encoder_inputs(digits, "digits")
    for kind, data in a.items():
        np.testing.assert_array_equal(data, b[kind])
        assert data.shape == (max(BATCH_SIZES), 1, 28, 28)
        assert data.dtype == np.float32
        assert data.min() >= 0.0
        assert data.max() <= 1.0
    latents = list(decoder_inputs(8).values())
    assert np.abs(latents[1]).max() == pytest.approx(10.0)
    assert 5.0 < np.abs(latents[0]).max() < 30.0  # N(0, I) * 3 over 8000 draws


def test_graphs_are_loaded_through_the_runtime(exported: Exported, tmp_path: Path) -> None:
    bad = tmp_path / "encoder.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ModelFileError, match="not a loadable ONNX graph"):
        verify_graphs(bad, exported.result.decoder, dict, dict, np.zeros((1, 28, 28)), "x", 8)
    assert isinstance(exported.decoder, Decoder)


def test_failed_verification_replaces_nothing(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {name: f"old {name}".encode() for name in ("encoder.onnx", "decoder.onnx")}
    old["manifest.json"] = b"{}"
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    real = onnx_export._torch_references

    def off_by_1e3(model):  # the torch side now disagrees with the graphs
        return {
            role: lambda batch, ref=ref: {k: v + 1e-3 for k, v in ref(batch).items()}
            for role, ref in real(model).items()
        }

    monkeypatch.setattr(onnx_export, "_torch_references", off_by_1e3)
    with pytest.raises(VerificationError) as info:
        onnx_export.export_checkpoint(checkpoints["tiny"], tmp_path, force=True)
    message = str(info.value)
    for output in ("'mu'", "'logvar'", "'image'", "'logits'"):
        assert output in message
    assert "0.001" in message
    assert f"atol {ATOL:g}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(old)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
