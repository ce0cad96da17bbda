"""Proof that the runtime never needs torch: its sources never import it, and its commands work
in a process where `import torch` fails."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

import vae_runtime

PACKAGE = Path(vae_runtime.__file__).parent
FORBIDDEN = ("torch", "vae_train", "vae_export")

# Runs a console entry point with a meta-path finder that refuses torch (and anything below it),
# then checks no torch module was loaded after all.
BLOCKER = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, NoTorch())
what = sys.argv[1]
sys.argv = [what] + sys.argv[2:]
if what == "probe":
    import torch
import vae_runtime.entrypoints as entry
try:
    getattr(entry, what.replace("-", "_"))()
finally:
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch loaded"
"""


def imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            modules.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return modules


# The two modules that import by name, and what they may name: the package's lazy exports name
# its own modules; the console entry points name their apps (the other packages' entry points
# pass their own names, from their own packages).
DYNAMIC = {"__init__.py", "entrypoints.py"}
# Apps of other packages the console scripts may start by name: `vae-score --ray` runs Ray Data
# code that lives in vae_serve (the runtime may not use Ray).
OTHER_APPS = ("vae_serve.ray_score",)


def test_no_runtime_module_imports_torch_or_the_other_packages() -> None:
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) >= 10
    for path in sources:
        for module in imported_modules(path.read_text()):
            top = module.split(".")[0]
            assert top not in FORBIDDEN, f"{path.name} imports {module}"
            if top == "importlib":
                assert path.name in DYNAMIC, f"{path.name}: dynamic imports hide from this scan"
    for module in vae_runtime._EXPORTS.values():
        assert (PACKAGE / f"{module}.py").is_file(), module
    text = (PACKAGE / "entrypoints.py").read_text()
    names = re.findall(r'run\(\s*"[\w-]+",\s*"([\w.]+):\w+"', text)
    own = [name for name in names if name not in OTHER_APPS]
    assert own == ["vae_runtime.cli"] * 4
    for name in own:
        assert (PACKAGE / f"{name.removeprefix('vae_runtime.')}.py").is_file(), name
    # The one app of another package, named as a string (never imported here): vae-score --ray.
    assert sorted(set(names) - set(own)) == sorted(OTHER_APPS)
    assert all(f"import {name}" not in text and f"from {name}" not in text for name in OTHER_APPS)


def test_the_scan_sees_imports() -> None:  # the test above cannot pass by seeing nothing
    assert imported_modules("import torch.nn\nfrom torch import nn\n") == {"torch.nn", "torch"}


def run_blocked(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_blocker_blocks_torch(tmp_path: Path) -> None:
    result = run_blocked(["probe"], tmp_path)
    assert result.returncode != 0
    assert "torch is blocked" in result.stderr


def test_commands_work_without_torch(graphs, tmp_path: Path, make_digits) -> None:
    result = run_blocked(
        ["vae-generate", "--onnx", graphs["decoder20"], "-n", "30", "--npy", "s.npy"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "s.npy").shape == (30, 1, 28, 28)
    with Image.open(tmp_path / "samples.png") as image:
        assert image.size == (152, 152)
    Image.fromarray(make_digits(1, 0)[0][0]).save(tmp_path / "a.png")
    Image.fromarray(make_digits(2, 0)[0][1]).save(tmp_path / "b.png")
    pair = ["--encoder", graphs["encoder"], "--decoder", graphs["decoder"]]
    result = run_blocked(["vae-reconstruct", *pair, "a.png", "b.png"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reconstructions.png").exists()
    result = run_blocked(["vae-interpolate", *pair, "a.png", "b.png", "--steps", "4"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "interpolation.gif").exists()
    result = run_blocked(["vae-generate", "--onnx", graphs["encoder"], "--force"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("vae-generate: error: ")


def test_vae_score_works_without_torch(tmp_path: Path, make_digits) -> None:
    from runtime_graphs import build_decoder, build_encoder, write_manifest

    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save(build_decoder(2, 16, logits=True), folder / "decoder.onnx")
    onnx.save(build_encoder(2, 16), folder / "encoder.onnx")
    write_manifest(folder, "decoder.onnx", "encoder.onnx")
    Image.fromarray(make_digits(1, 0)[0][0]).save(tmp_path / "a.png")
    args = ["vae-score", "a.png", "--onnx-dir", folder, "-k", "4", "--threshold=1e9"]
    result = run_blocked([*args, "--below-threshold-exit", "3"], tmp_path)
    assert result.returncode == 3, result.stderr  # every image is under a bound of 1e9 nats
    assert result.stderr == (
        "vae-score: 1 of 1 images scored under the threshold (exit 3, as "
        "--below-threshold-exit asks)\n"
    )
    assert (tmp_path / "scores.csv").read_text().startswith("source,index,elbo,iwae,bce,")
