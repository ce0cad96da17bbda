"""vae-web: the command (in-process, CliRunner) and the site it writes, in a real Chromium.

The page's pixels and latents are compared with onnxruntime in Python through the functions the
page exposes for tests (`window.vaeTest`); its maths (drawing -> MNIST form, interpolation) with
vae_runtime's own functions on the same inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import expect_error, tree
from runtime_graphs import build_decoder, build_encoder
from typer.testing import CliRunner
from web_support import LATENT, REAL_MODEL, PageWatch, fake_ort, serve

from vae_runtime.contract import BATCH_AXIS, INTERFACES, MANIFEST_FILE
from vae_runtime.idx import read_idx
from vae_runtime.inputs import fit_mnist
from vae_runtime.sampling import interpolate, manifold_latents
from vae_runtime.session import Decoder, Encoder
from vae_web import build as web
from vae_web import cli as web_cli

runner = CliRunner()
TOLERANCE = 1e-5  # the bound on |page - onnxruntime in Python|


def run(args: list[Any]) -> Any:
    return runner.invoke(web_cli.app, [str(a) for a in args])


def page_call(page: Any, function: str, *args: Any) -> Any:
    """`vaeTest[function](...args)` in the page, its arguments and result sent as JSON text
    (exact for floats both ways; Playwright's own serialisation is slow for long arrays)."""
    script = "async ([f, a]) => JSON.stringify(await vaeTest[f](...JSON.parse(a)))"
    return json.loads(page.evaluate(script, [function, json.dumps(args)]))


# -- the command ---------------------------------------------------------------------------------


def test_writes_the_site(web_graphs: dict[str, Path], tmp_path: Path) -> None:
    result = run(["--onnx-dir", web_graphs["pair"], "--out", tmp_path / "site"])
    assert result.exit_code == 0, result.output
    assert "fp32 decoder + encoder of latent size 20" in result.stdout
    names = {p.name for p in (tmp_path / "site").iterdir()}
    assert names == {
        *web.PAGE_FILES,
        *web.ORT_FILES,
        web.CONFIG_FILE,
        "decoder.onnx",
        "encoder.onnx",
        MANIFEST_FILE,
    }
    for name in ("decoder.onnx", "encoder.onnx", MANIFEST_FILE):  # shipped as exported
        assert (tmp_path / "site" / name).read_bytes() == (web_graphs["pair"] / name).read_bytes()
    config = json.loads((tmp_path / "site" / web.CONFIG_FILE).read_text())
    assert config["latent_dim"] == LATENT and config["precision"] == "fp32"
    assert config["encoder"]["file"] == "encoder.onnx" and config["manifold"] is None
    card = dict(config["card"])
    assert card["latent size"] == "20" and card["onnxruntime-web"] == web.ORT_WEB_VERSION
    # Each graph's tensors as the page reads them: the contract's, and the graph's own.
    for role in ("decoder", "encoder"):
        entry, graph = config[role], onnx.load(tmp_path / "site" / f"{role}.onnx").graph
        has = {t.name for t in graph.output}  # an optional output only where the graph has it
        outputs = [t for t in INTERFACES[role].outputs if not t.optional or t.name in has]
        for key, declared, found in (
            ("inputs", INTERFACES[role].inputs, graph.input),
            ("outputs", outputs, graph.output),
        ):
            assert (
                [t["name"] for t in entry[key]]
                == [t.name for t in declared]
                == [t.name for t in found]
            )
            for t, decl in zip(entry[key], declared, strict=True):
                assert t["shape"] == [BATCH_AXIS, *decl.shape(LATENT)]
    assert config["decoder"]["inputs"][0]["shape"] == [BATCH_AXIS, LATENT]
    assert config["encoder"]["inputs"][0]["shape"] == [BATCH_AXIS, 1, 28, 28]
    # Nothing in the page names another host: it loads from its own folder only. Nor does it
    # name a tensor: model.json says what the graphs take and give.
    tensors = {t.name for i in INTERFACES.values() for t in (*i.inputs, *i.outputs)}
    for name in ("index.html", "app.js", "worker.js", "maths.js", "style.css"):
        text = (tmp_path / "site" / name).read_text()
        assert not re.search(r"https?://(?!127\.0\.0\.1:8000/)|//cdn", text), name
        quoted = [t for t in tensors if re.search(rf"""['"`.]{t}['"`]""", text)]
        assert quoted == [], (name, quoted)


def test_card_from_a_real_manifest(web_graphs: dict[str, Path], tmp_path: Path) -> None:
    """What an export's manifest says (training, versions, checkpoint, model) reaches the card."""
    folder = tmp_path / "export"
    shutil.copytree(web_graphs["pair"], folder)
    content = json.loads((folder / MANIFEST_FILE).read_text())
    content.update(
        checkpoint={"name": "model.pt", "sha256": "ab" * 32},
        model={"hidden_dim": 400, "latent_dim": LATENT},
        training={"epochs": 10, "test_loss": 113.48},
        versions={"torch": "2.13.0", "mnist-vae": "0.1.0"},
        exported="2026-05-01 12:00 UTC",
    )
    (folder / MANIFEST_FILE).write_text(json.dumps(content))
    web.build_site(folder, tmp_path / "site")
    card = dict(json.loads((tmp_path / "site" / web.CONFIG_FILE).read_text())["card"])
    assert card["layers"] == "784 - 400 - 20"
    assert card["training epochs"] == "10" and card["test loss"].startswith("113.48 nats")
    assert card["exported"] == "2026-05-01 12:00 UTC"
    assert card["versions"] == "mnist-vae 0.1.0, torch 2.13.0"
    assert card["checkpoint"] == "model.pt (SHA-256 abababababab...)"


def test_decoder_only_and_2d(sites: dict[str, Path]) -> None:
    config = json.loads((sites["decoder_only"] / web.CONFIG_FILE).read_text())
    assert config["encoder"] is None and ["encoder", "none: drawing hidden"] in config["card"]
    config2 = json.loads((sites["pair2"] / web.CONFIG_FILE).read_text())
    lattice = manifold_latents(web.MANIFOLD_SIDE, web.MANIFOLD_SIDE)
    assert np.array_equal(np.float32(config2["manifold"]["z"]), lattice.ravel())


def test_int8_ships_the_int8_graphs(web_graphs: dict[str, Path], sites: dict[str, Path]) -> None:
    names = {p.name for p in sites["int8"].iterdir()}
    assert {"decoder.int8.onnx", "encoder.int8.onnx"} <= names
    assert "decoder.onnx" not in names and "encoder.onnx" not in names
    config = json.loads((sites["int8"] / web.CONFIG_FILE).read_text())
    assert config["precision"] == "int8" and config["decoder"]["file"] == "decoder.int8.onnx"
    assert dict(config["card"])["precision"] == "int8 (vs fp32: pixel_max_abs 0.02)"
    int8, fp32 = (web_graphs["int8"] / n for n in ("decoder.int8.onnx", "decoder.onnx"))
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size


def test_force_writes_into_an_existing_site(web_graphs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "site"
    assert run(["--onnx-dir", web_graphs["pair"], "--out", out]).exit_code == 0
    before = tree(out)
    refused = run(["--onnx-dir", web_graphs["pair"], "--out", out])
    expect_error(refused, 2, r"site/\S+ already exists; pass --force \(-f\) to replace it$")
    assert tree(out) == before
    result = run(["--onnx-dir", web_graphs["decoder_only"], "--out", out, "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / web.CONFIG_FILE).read_text())["encoder"] is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["--onnx-dir", web_graphs["pair"], "--out", empty]).exit_code == 0


def _broken_folders(root: Path, graphs: dict[str, Path]) -> dict[str, Path]:
    pair = graphs["pair"]
    made = {}

    def folder(name: str, files: dict[str, bytes | onnx.ModelProto]) -> None:
        made[name] = root / name
        made[name].mkdir(parents=True)
        for file, content in files.items():
            if isinstance(content, onnx.ModelProto):
                onnx.save(content, made[name] / file)
            else:
                (made[name] / file).write_bytes(content)

    folder("no_decoder", {"encoder.onnx": (pair / "encoder.onnx").read_bytes()})
    folder("encoder_as_decoder", {"decoder.onnx": build_encoder(LATENT, 8)})
    folder(
        "latent_sizes", {"decoder.onnx": build_decoder(2, 8), "encoder.onnx": build_encoder(3, 8)}
    )
    tampered = (pair / "decoder.onnx").read_bytes().replace(b"vae", b"vaf", 1)
    folder(
        "sha_mismatch",
        {"decoder.onnx": tampered, MANIFEST_FILE: (pair / MANIFEST_FILE).read_bytes()},
    )
    return made


@pytest.mark.parametrize(
    ("case", "code", "pattern"),
    [
        ("missing", 1, "no such folder"),
        ("a_file", 1, "is not a folder"),
        ("no_decoder", 1, r"no decoder\.onnx; export it with `vae-export model\.pt`"),
        ("encoder_as_decoder", 1, "is an mnist-vae encoder graph, expected a decoder"),
        ("latent_sizes", 1, "has latent size 3 but .* has 2"),
        ("sha_mismatch", 1, "SHA-256 .* does not match"),
        ("int8_missing", 1, r"no decoder\.int8\.onnx; .*--precision int8"),
        ("bad_precision", 2, "precision must be one of fp32, int8, fp16, got 'int4'"),
        ("out_is_input", 2, "is the input"),
        ("out_is_input_forced", 2, "is the input"),
        ("out_is_a_file", 2, "is not a folder"),
    ],
)
def test_bad_input(
    case: str, code: int, pattern: str, web_graphs: dict[str, Path], tmp_path: Path
) -> None:
    """One line, the promised exit code, and nothing written anywhere."""
    folders = _broken_folders(tmp_path / "in", web_graphs)
    onnx_dir = folders.get(case, web_graphs["pair"])
    out = tmp_path / "out" / "site"
    extra: list[Any] = []
    if case == "missing":
        onnx_dir = tmp_path / "nowhere"
    elif case == "a_file":
        onnx_dir = web_graphs["pair"] / "decoder.onnx"
    elif case == "int8_missing":
        extra = ["--precision", "int8"]
    elif case == "bad_precision":
        extra = ["--precision", "int4"]
    elif case.startswith("out_is_input"):
        onnx_dir = out = tmp_path / "in" / "copy"
        shutil.copytree(web_graphs["pair"], out)
        extra = ["--force"] if case.endswith("forced") else []
    elif case == "out_is_a_file":
        out.parent.mkdir()
        out.write_bytes(b"mine")
    before = tree(tmp_path)
    expect_error(run(["--onnx-dir", onnx_dir, "--out", out, *extra]), code, pattern)
    assert tree(tmp_path) == before


def test_onnxruntime_web_files(
    web_graphs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ort-dir (the npm package or its dist/), $VAE_ORT_DIR, the checkout default; a wrong or
    missing folder and another version are refused before anything is written. (Stand-ins of
    the npm package: the lookup reads the files' names and version banner only.)"""
    monkeypatch.delenv(web.ORT_DIR_ENV)
    dist = fake_ort(tmp_path / "node_modules" / "onnxruntime-web" / "dist")
    monkeypatch.setattr(web, "_CHECKOUT_ORT", dist)
    assert web.find_ort() == dist
    assert web.find_ort(dist.parent) == dist  # the package folder itself
    monkeypatch.setenv(web.ORT_DIR_ENV, str(dist))
    assert web.find_ort() == dist
    monkeypatch.delenv(web.ORT_DIR_ENV)
    other = tmp_path / "ort"
    other.mkdir()
    out = tmp_path / "site"
    args = ["--onnx-dir", web_graphs["pair"], "--out", out, "--ort-dir", other]
    expect_error(run(args), 2, r"no ort\.wasm\.min\.js in .*npm install onnxruntime-web@1\.30\.0")
    fake_ort(other, "1.29.1")
    expect_error(run(args), 2, r"onnxruntime-web 1\.29\.1 in .* tested with 1\.30\.0")
    monkeypatch.setattr(web, "_CHECKOUT_ORT", tmp_path / "none")
    expect_error(run(args[:4]), 1, r"does not ship; get them with `npm install")
    assert not out.exists()


# -- the page in Chromium ------------------------------------------------------------------------


def _latents() -> dict[int, np.ndarray]:
    """Batch 1 and batch 25, from the prior's bulk out to |z| = 10 on either side."""
    rng = np.random.default_rng(7)
    z25 = rng.standard_normal((25, LATENT)).astype(np.float32)
    z25[0], z25[1], z25[2] = 10.0, -10.0, 0.0
    z25[3, ::2] = 10.0
    return {1: np.full((1, LATENT), -10.0, np.float32), 25: z25}


def _digits(make_digits: Callable[..., Any]) -> tuple[np.ndarray, str]:
    """Real MNIST test digits when VAE_DATA_DIR names them, else rendered ones."""
    folder = os.environ.get("VAE_DATA_DIR")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"):
        if folder and (Path(folder) / name).is_file():
            return read_idx(Path(folder) / name, 2051, limit=16), "real MNIST"
    return make_digits(16, 5)[0], "rendered"


@pytest.mark.parametrize("isolate", [False, True], ids=["one-thread", "coop-coep"])
def test_pixels_match_onnxruntime(
    isolate: bool,
    sites: dict[str, Path],
    web_graphs: dict[str, Path],
    open_page: Callable[..., PageWatch],
    make_digits: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Decoded pixels and encoded mu/logvar equal onnxruntime's in Python within 1e-5, on one
    thread (a plain static server) and on several (COOP/COEP: cross-origin isolated)."""
    decoder = Decoder.load(web_graphs["pair"] / "decoder.onnx")
    encoder = Encoder.load(web_graphs["pair"] / "encoder.onnx")
    with serve(sites["pair"], isolate=isolate) as url:
        watch = open_page()
        assert watch.open(url) == "ready", watch.page.inner_text("#error")
        page = watch.page
        threads = int(page.evaluate("document.body.dataset.threads"))
        assert (threads > 1) == isolate
        assert page.evaluate("crossOriginIsolated") is isolate
        worst = {}
        for n, z in _latents().items():
            got = np.float32(page_call(page, "decode", z.ravel().tolist(), n))
            want = decoder.decode(z).ravel()
            worst[f"decode batch {n}"] = float(np.abs(got - want).max())
        digits, kind = _digits(make_digits)
        x = (digits.astype(np.float32) / np.float32(255)).ravel().tolist()
        enc = page_call(page, "encode", x, len(digits))
        mu, logvar = encoder.encode(digits)
        worst["mu"] = float(np.abs(np.float32(enc["mu"]) - mu.ravel()).max())
        worst["logvar"] = float(np.abs(np.float32(enc["logvar"]) - logvar.ravel()).max())
        assert watch.problems == [] and watch.external == []
    with capsys.disabled():
        print(f"\n  page vs onnxruntime ({threads} thread(s), {kind} digits): {worst}")
    assert max(worst.values()) <= TOLERANCE, worst


def test_a_real_export_in_the_page(
    browser: Any,  # first: without one the test skips before it trains a model
    real_export: Path,
    tmp_path: Path,
    open_page: Callable[..., PageWatch],
    make_digits: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The graphs of a real vae-train + vae-export (not hand-built; latent size 6): the page's
    decoded images and its encoder's outputs equal Decoder.decode / Encoder.encode in Python
    within 1e-5, the sizes and names all from model.json."""
    web.build_site(real_export, tmp_path / "site")
    decoder = Decoder.load(real_export / "decoder.onnx")
    encoder = Encoder.load(real_export / "encoder.onnx")
    latent = REAL_MODEL["latent_dim"]
    assert decoder.latent_dim == latent
    rng = np.random.default_rng(11)
    with serve(tmp_path / "site", isolate=False) as url:
        watch = open_page()
        assert watch.open(url) == "ready", watch.page.inner_text("#error")
        page = watch.page
        worst = {}
        for n in (1, 25):
            z = rng.standard_normal((n, latent)).astype(np.float32) * 2
            got = np.float32(page_call(page, "decode", z.ravel().tolist(), n))
            worst[f"decode batch {n}"] = float(np.abs(got - decoder.decode(z).ravel()).max())
        z = np.float32(page_call(page, "priorSamples", 9, 5, 1.0)).reshape(9, latent)
        got = np.float32(page_call(page, "decode", z.ravel().tolist(), 9))
        worst["decode prior samples"] = float(np.abs(got - decoder.decode(z).ravel()).max())
        digits = make_digits(16, 5)[0]
        x = (digits.astype(np.float32) / np.float32(255)).ravel().tolist()
        enc = page_call(page, "encode", x, len(digits))
        assert list(enc) == [t.name for t in INTERFACES["encoder"].outputs]  # mu, logvar
        for name, want in zip(enc, encoder.encode(digits), strict=True):
            worst[name] = float(np.abs(np.float32(enc[name]) - want.ravel()).max())
        assert watch.problems == [] and watch.external == []
    with capsys.disabled():
        print(f"\n  page vs onnxruntime, a real export (latent {latent}): {worst}")
    assert max(worst.values()) <= TOLERANCE, worst


def test_page_maths_match_the_runtime(
    sites: dict[str, Path], open_page: Callable[..., PageWatch]
) -> None:
    """The page's drawing -> MNIST conversion is inputs.fit_mnist's, byte for byte; its
    interpolation is sampling.interpolate's; its prior samples are N(0, t^2 I)."""
    rng = np.random.default_rng(3)
    images = []
    for k in range(12):
        h, w = (int(v) for v in rng.integers(29, 240, 2))
        image = np.zeros((h, w), np.uint8)
        for _ in range(4):
            y, x = int(rng.integers(0, h - 5)), int(rng.integers(0, w - 5))
            image[y : y + int(rng.integers(3, h)), x : x + int(rng.integers(3, w))] = rng.integers(
                0, 256
            )
        images.append(255 - image if k % 4 == 0 else image)  # light backgrounds are inverted
    images += [np.zeros((40, 30), np.uint8), rng.integers(0, 256, (28, 28)).astype(np.uint8)]
    a, b = np.random.default_rng(4).standard_normal((2, LATENT)).astype(np.float32)
    ends = [(a, b), (a, -a), (a, 2 * a), (np.zeros(LATENT, np.float32), b)]
    with serve(sites["pair"], isolate=False) as url:
        watch = open_page()
        assert watch.open(url) == "ready"
        page = watch.page
        for image in images:
            got = page_call(page, "fitMnist", image.ravel().tolist(), *image.shape[::-1])
            assert np.array_equal(np.uint8(got).reshape(28, 28), fit_mnist(image)), image.shape
        for z0, z1 in ends:
            for method in ("slerp", "lerp"):
                got = page.evaluate(
                    "([a, b, m]) => vaeTest.interpolate(a, b, 9, m)",
                    [z0.tolist(), z1.tolist(), method],
                )
                want = interpolate(z0, z1, 9, method)
                assert np.allclose(np.float32(got).reshape(9, LATENT), want, rtol=0, atol=2e-6)
        z = np.float32(page.evaluate("vaeTest.priorSamples(500, 11, 0.5)"))
        assert z.shape == (500 * LATENT,) and abs(z.mean()) < 0.02 and abs(z.std() - 0.5) < 0.02
        assert watch.problems == []


def test_drawing_sliders_and_screenshot(
    sites: dict[str, Path],
    web_graphs: dict[str, Path],
    open_page: Callable[..., PageWatch],
    artefacts: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stroke drawn with the mouse becomes MNIST's form as fit_mnist makes it, is encoded, the
    sliders jump to its mean and its reconstruction looks like a digit; a slider moved by hand
    and a click on a sample move the latent; the whole page is saved as a screenshot."""
    encoder = Encoder.load(web_graphs["pair"] / "encoder.onnx")
    with serve(sites["pair"], isolate=True) as url:
        watch = open_page()
        assert watch.open(url) == "ready"
        page = watch.page
        page.locator("#pad").scroll_into_view_if_needed()
        box = page.locator("#pad").bounding_box()
        assert box is not None
        stroke = [(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)]  # a 7
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            for t in np.linspace(0, 1, 12)[1:]:
                x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
                page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * y)
        page.mouse.up()
        page.wait_for_function(
            "vaeTest.lastRecon() !== null && "
            "JSON.stringify(vaeTest.lastInput()) === JSON.stringify(vaeTest.fitMnist("
            "vaeTest.padGrey().grey, 280, 280))",
            timeout=10_000,
        )
        page.wait_for_timeout(200)  # the last frame's encode and decode
        pad = json.loads(page.evaluate("JSON.stringify(vaeTest.padGrey())"))  # 78,400 numbers
        grey = np.uint8(pad["grey"]).reshape(pad["height"], pad["width"])
        fitted = np.uint8(page.evaluate("vaeTest.lastInput()")).reshape(28, 28)
        assert np.array_equal(fitted, fit_mnist(grey))
        mu, _ = encoder.encode(fitted)
        current = np.float32(page.evaluate("vaeTest.current()"))
        assert np.abs(current - mu[0]).max() <= TOLERANCE
        recon = np.float32(page.evaluate("vaeTest.lastRecon()"))
        ink = float((recon > 0.5).mean())
        assert 0.03 < ink < 0.5, ink
        page.screenshot(path=str(artefacts / "vae-web-page.png"), full_page=True)
        page.locator("#sliders input").first.fill("1.5")
        assert page.evaluate("vaeTest.current()")[0] == 1.5
        page.locator("#grid").click(position={"x": 10, "y": 10})  # the first sample
        first = np.float32(page.evaluate("vaeTest.priorSamples(1, 1, 1)"))
        assert np.array_equal(np.float32(page.evaluate("vaeTest.current()")), first)
        page.locator("#new-samples").click()
        assert "page seed 2" in page.inner_text("#seed")
        assert watch.problems == [] and watch.external == []
    with capsys.disabled():
        print(f"\n  drawn 7: {ink:.1%} ink in the reconstruction; {artefacts / 'vae-web-page.png'}")


def test_int8_decoder_only_and_2d_pages(
    sites: dict[str, Path], web_graphs: dict[str, Path], open_page: Callable[..., PageWatch]
) -> None:
    """An int8 site says so and decodes as the int8 graph does in Python; without an encoder the
    drawing is hidden; a 2-D latent shows the clickable map."""
    with serve(sites["int8"].parent, isolate=False) as url:
        watch = open_page()
        assert watch.open(url + "int8/") == "ready"
        assert watch.page.inner_text("#badge") == "int8"
        z = _latents()[25]
        got = np.float32(page_call(watch.page, "decode", z.ravel().tolist(), 25))
        want = Decoder.load(web_graphs["int8"] / "decoder.int8.onnx").decode(z).ravel()
        assert np.abs(got - want).max() <= TOLERANCE
        assert watch.page.is_visible("#draw-section")

        watch.page.goto(url + "decoder_only/")
        watch.page.wait_for_function("document.body.dataset.state === 'ready'")
        assert not watch.page.is_visible("#draw-section")
        assert not watch.page.is_visible("#manifold-section")

        watch.page.goto(url + "pair2/")
        watch.page.wait_for_function("document.body.dataset.state === 'ready'")
        assert watch.page.is_visible("#manifold-section")
        watch.page.locator("#manifold").click(position={"x": 3, "y": 3})  # top left: the corner
        corner = manifold_latents(web.MANIFOLD_SIDE, web.MANIFOLD_SIDE)[0]
        assert np.allclose(watch.page.evaluate("vaeTest.current()"), corner, atol=1e-6)
        assert watch.problems == [] and watch.external == []


@pytest.mark.parametrize(
    "case", ["tampered", "unloadable", "missing", "renamed", "old-site", "no-wasm"]
)
def test_failures_show_a_message(
    case: str, sites: dict[str, Path], tmp_path: Path, open_page: Callable[..., PageWatch]
) -> None:
    """A graph changed after the build, one onnxruntime-web cannot load, one missing, one whose
    tensors are not the ones model.json declares, a model.json of another version, and a
    browser without WebAssembly: a readable message on the page, never a blank page."""
    site = tmp_path / "site"
    shutil.copytree(sites["decoder_only"], site)
    graph = site / "decoder.onnx"
    init = None
    expected: list[str] = []
    if case == "tampered":
        graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
        message = r"decoder\.onnx: SHA-256 .* does not match .* in model\.json"
    elif case == "unloadable":  # garbage whose checksum model.json agrees with
        graph.write_bytes(b"not an onnx graph")
        config = json.loads((site / web.CONFIG_FILE).read_text())
        config["decoder"].update(bytes=17, sha256=hashlib.sha256(b"not an onnx graph").hexdigest())
        (site / web.CONFIG_FILE).write_text(json.dumps(config))
        message = r"decoder\.onnx: onnxruntime-web cannot load this decoder graph"
    elif case == "missing":
        graph.unlink()
        message = r"decoder\.onnx: HTTP 404 .* write it again with vae-web"
        expected = ["HTTP 404: ", "console error: Failed to load resource"]
    elif case == "renamed":
        config = json.loads((site / web.CONFIG_FILE).read_text())
        config["decoder"]["inputs"][0]["name"] = "latent"
        (site / web.CONFIG_FILE).write_text(json.dumps(config))
        message = r"decoder\.onnx: the graph has z -> image, model\.json declares latent -> image"
    elif case == "old-site":
        config = json.loads((site / web.CONFIG_FILE).read_text())
        config["format_version"] = 1
        (site / web.CONFIG_FILE).write_text(json.dumps(config))
        message = r"model\.json is mnist-vae/site version 1, .* write the site again"
    else:
        init = "delete window.WebAssembly"
        message = "This browser has no WebAssembly"
    with serve(site, isolate=False) as url:
        watch = open_page(init)
        assert watch.open(url) == "failed"
        assert watch.page.is_visible("#error")
        assert re.search(message, watch.page.inner_text("#error")), watch.page.inner_text("#error")
        unexpected = [p for p in watch.problems if not any(p.startswith(e) for e in expected)]
        assert unexpected == [] and watch.external == []


def test_the_page_scores_a_drawing_as_python_does(
    browser: Any,  # first: without one the test skips before it trains a model
    real_export: Path,
    tmp_path: Path,
    open_page: Callable[..., PageWatch],
    make_digits: Callable[..., Any],
    artefacts: Path,
) -> None:
    """model.json carries the export's score reference and the decoder's logits output; the
    page's ELBO and IWAE bound of an image, given the page's own noise, equal the runtime
    Scorer's on that noise within 1e-4 nats; the percentile it shows is ScoreReference's; a
    stroke on the pad shows its percentile in words beside the reconstruction."""
    import dataclasses

    from vae_runtime.contract import SCORE_REFERENCE, Manifest, ScoreReference
    from vae_runtime.scoring import Scorer

    # The export's graphs with a reference of their own scores of a few digits (whatever
    # reference the export wrote: this one is known to straddle the digits scored below).
    export = tmp_path / "export"
    shutil.copytree(real_export, export)
    scorer = Scorer.load(export)
    iwae = scorer.score(make_digits(32, 3)[0], k=16, seed=0).iwae
    reference = ScoreReference.of(iwae, k=16, seed=0, source="32 rendered digits")
    manifest = Manifest.load(export / MANIFEST_FILE)
    details = {**manifest.details, SCORE_REFERENCE: reference.to_json()}
    (export / MANIFEST_FILE).write_bytes(dataclasses.replace(manifest, details=details).to_bytes())
    scorer = Scorer.load(export)
    assert scorer.reference == reference
    site = tmp_path / "site"
    web.build_site(export, site)
    config = json.loads((site / "model.json").read_text())
    assert config["score"] == reference.to_json()
    assert [t["name"] for t in config["decoder"]["outputs"]] == ["image", "logits"]
    latent = REAL_MODEL["latent_dim"]
    with serve(site, isolate=False) as url:
        watch = open_page()
        assert watch.open(url) == "ready", watch.page.inner_text("#error")
        page = watch.page
        eps = np.float32(page_call(page, "scoreNoise")).reshape(1, reference.k, latent)
        worst = 0.0
        for digit in make_digits(4, 13)[0]:
            x = (digit.astype(np.float32) / np.float32(255)).ravel().tolist()
            got = page_call(page, "score", x, None)
            want = scorer.score_with_noise(digit[None], eps)
            worst = max(worst, abs(got["elbo"] - want.elbo[0]), abs(got["iwae"] - want.iwae[0]))
            shown = float(reference.percentile(np.array([got["iwae"]]))[0])
            assert got["percentile"] == pytest.approx(shown, abs=1e-9)
        assert worst <= 1e-4, worst
        page.locator("#pad").scroll_into_view_if_needed()
        box = page.locator("#pad").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.15)
        page.mouse.down()
        for t in np.linspace(0.15, 0.85, 12):  # a vertical bar: a 1
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * t)
        page.mouse.up()
        page.wait_for_function("vaeTest.lastScore() !== null && vaeTest.typical() !== ''")
        page.wait_for_timeout(300)  # the last frame's score
        last = json.loads(page.evaluate("JSON.stringify(vaeTest.lastScore())"))
        drawn = np.uint8(page.evaluate("vaeTest.lastInput()")).reshape(1, 28, 28)
        want = scorer.score_with_noise(drawn, eps)
        assert abs(last["iwae"] - want.iwae[0]) <= 1e-4
        p = float(reference.percentile(want.iwae)[0])
        words = page.evaluate("vaeTest.typical()")
        assert re.fullmatch(r"(typical|unusual): .* of " + re.escape(reference.source), words)
        assert (f"{round(p)}" in words) if p >= 1 else ("0.1%" in words or "percentile" in words)
        page.locator("#draw-section").screenshot(path=str(artefacts / "vae-web-score.png"))
        assert watch.problems == [] and watch.external == []
