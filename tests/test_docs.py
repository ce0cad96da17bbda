"""README.md and docs/ cannot drift: every shell command they show (```sh, ```bash, ```console
blocks) and every Python block runs, in order, as shown, in a temporary folder on tiny data. A
command matching NOT_RUN (with its reason) and a Python block that starts with `# not run:` are
checked instead: shell syntax (`bash -n`), Python syntax, and every option given to a `vae-*`
command or a `bench/` script must be one its `--help` lists. Every page is in mkdocs.yml's nav."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import write_mnist_dir

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
BIN = Path(sys.executable).parent
SHELLS = ("sh", "bash", "console")
NOT_RUN = {  # regex on a command: why a test cannot run it
    r"make ": "installs into .venv and runs the whole suite or the demo; CI runs `make test`",
    r"python3 -m venv": "creates a virtualenv; the suite runs inside one already",
    r"(\.venv/bin/)?pip install": "installs packages: no network in tests",
    r"\.venv/bin/pytest": "the suite itself",
    r"npm install": "downloads from npm: no network in tests",
    r"vae-serve --(onnx-dir|decoder)": "starts a server that runs until stopped",
    r"vae-web .*--ort-dir node_modules": "needs the npm install shown before it",
    r"vae-eval (?!.*--samples)": "k = 5000 draws per test image: minutes",
    r"python -m http\.server": "a server that runs until stopped",
    r"curl ": "needs a running vae-serve",
    r"serve (run|deploy) ": "Ray Serve: starts or joins a cluster",
    r"docker ": "no container engine here",
    r"kubectl ": "no Kubernetes cluster here",
    r"aws ": "no object store here",
    r"(VAE_DATA_DIR=\S+ )?python bench/": "benchmarks take minutes: `make bench` runs them",
    r"(\w+=\S+ )*bash bench/gpu_(kit|check)\.sh": "pip downloads, and a GPU session's minutes; "
    "test_bench_measure.py runs the check's dry run",
}


def blocks(path: Path, languages: tuple[str, ...]) -> list[str]:
    """The contents of the page's fenced blocks in `languages`, in order."""
    names = "|".join(languages)
    return re.findall(rf"^```(?:{names})\n(.*?)^```$", path.read_text(), flags=re.S | re.M)


def shell_commands(path: Path) -> list[str]:
    """Every command of the page's shell blocks: comments (`  # ...`) dropped, `\\` lines joined,
    a line with an open quote joined to the next; in ```console blocks only `$ ` lines count."""
    commands = []
    for language in SHELLS:
        for block in blocks(path, (language,)):
            pending = ""
            for line in block.replace("\\\n", " ").splitlines():
                if language == "console":
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                line = re.sub(r"(^|\s)#.*$", "", line) if not pending else line
                pending = f"{pending}\n{line}" if pending else line.strip()
                try:
                    shlex.split(pending)
                except ValueError:  # a quote spans lines
                    continue
                if pending:
                    commands.append(pending)
                pending = ""
            assert not pending, f"{path.name}: unclosed quote in {pending!r}"
    return commands


def all_commands() -> list[str]:
    return [c for page in [README, *PAGES] for c in shell_commands(page)]


def not_run(command: str) -> str | None:
    """Why `command` is only checked, or None when it runs."""
    return next((why for rule, why in NOT_RUN.items() if re.match(rule, command)), None)


@functools.cache
def options_of(program: str) -> frozenset[str]:
    """The options `program --help` lists (`program`: a vae-* command or a bench/ script)."""
    argv = [str(BIN / program)] if program.startswith("vae-") else [sys.executable, program]
    done = subprocess.run(
        [*argv, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, f"{program} --help\n{done.stderr}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", done.stdout))


def unknown_options(command: str) -> list[str]:
    """Options that `command` gives a vae-* command or a bench/ script and its --help lacks."""
    unknown = []
    for part in re.split(r"&&|\|\||[|;]", command):
        words = shlex.split(part)
        while words and re.match(r"\w+=", words[0]):  # VAR=value before the program
            words.pop(0)
        if words[:1] == ["python"] and len(words) > 1 and words[1].startswith("bench/"):
            program, args = words[1], words[2:]
        elif words and words[0].startswith("vae-"):
            program, args = words[0], words[1:]
        else:
            continue
        for arg in args:
            option = arg.split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", option) and option not in options_of(program):
                unknown.append(f"{program} {option}")
    return unknown


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny MNIST folder that stands for /path/to/mnist, the HOME holding ~/data/mnist)."""
    root = tmp_path_factory.mktemp("data")
    mnist = write_mnist_dir(root / "mnist", 512, 128)
    write_mnist_dir(root / "home" / "data" / "mnist", 256, 64)
    return mnist, root / "home"


def environment(data: tuple[Path, Path], home: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k not in ("VAE_DATA_DIR", "VAE_DEBUG")},
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def run_page(path: Path, work: Path, env: dict[str, str], mnist: Path) -> int:
    """Runs the page's commands and Python blocks in `work`, in order; checks the rest. Returns
    how many ran."""
    ran = 0
    checked = []
    for command in shell_commands(path):
        command = command.replace("/path/to/mnist", str(mnist))
        if not_run(command):
            checked.append(command)
            continue
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            env[name] = value
            continue
        done = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{path.name}: {command}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{path.name}: {command}\n{done.stderr}"
        ran += 1
    if checked:
        done = subprocess.run(
            ["bash", "-n"], input="\n".join(checked), capture_output=True, text=True
        )
        assert done.returncode == 0, f"{path.name}: shell syntax\n{done.stderr}"
    for block in blocks(path, ("python",)):
        code = block.replace("/path/to/mnist", str(mnist))
        if code.startswith("# not run:"):
            compile(code, f"{path.name} block", "exec")
            continue
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{path.name}:\n{code}\n{done.stderr}"
        ran += 1
    return ran


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, data: tuple[Path, Path]) -> Path:
    """A folder where the README's session ran into out/: what every docs page starts from."""
    work = tmp_path_factory.mktemp("session")
    env = {**environment(data, data[1]), "VAE_DATA_DIR": str(data[0])}
    for command in ("vae-train --out out --quiet", "vae-export out/model.pt --quiet"):
        done = subprocess.run(command.split(), cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    return work


def test_the_docs_show_commands_to_run() -> None:  # the tests below cannot pass empty
    readme = shell_commands(README)
    assert [c for c in readme if re.match(r"vae-(train|export|generate)\b", c)] == [
        "vae-train",
        "vae-export model.pt",
        "vae-generate --onnx decoder.onnx -o generated.png",
    ]
    assert len(all_commands()) >= 60
    assert sum(len(blocks(p, ("python",))) for p in PAGES) >= 4
    assert len(README.read_text().splitlines()) <= 300


def test_the_readme_runs_as_shown(tmp_path: Path, data: tuple[Path, Path]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert run_page(README, work, environment(data, data[1]), data[0]) >= 4
    for name in ("model.pt", "samples.png", "decoder.onnx", "generated.png", "grid.png"):
        assert (work / name).is_file(), name


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_docs_page_runs_as_shown(
    page: Path, tmp_path: Path, data: tuple[Path, Path], session: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(session, work)
    env = {**environment(data, data[1]), "VAE_DATA_DIR": str(data[0])}
    run_page(page, work, env, data[0])


def test_every_option_shown_exists() -> None:
    unknown = sorted({o for c in all_commands() for o in unknown_options(c)})
    assert not unknown, f"options that --help does not list: {unknown}"


@pytest.mark.parametrize("rule", sorted(NOT_RUN))
def test_every_not_run_rule_is_still_needed(rule: str) -> None:
    assert any(re.match(rule, c) for c in all_commands()), f"{rule!r}: drop it from NOT_RUN"


def test_every_page_is_in_the_nav_and_every_entry_exists() -> None:
    def entries(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [e for item in nav for e in entries(item)]
        if isinstance(nav, dict):
            return [e for value in nav.values() for e in entries(value)]
        return []

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = entries(config["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice"
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert set(nav) - pages == set(), "nav entries without a page"
    assert pages - set(nav) == set(), "pages missing from mkdocs.yml's nav"
