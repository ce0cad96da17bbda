"""Each package draws only on the extras that install it: what its modules import (at the top or
inside a function) is the standard library, our own packages it may use, or a distribution that
the base dependencies or its own extras declare. `deptry .` checks the declarations as a whole;
this checks them package by package, so that `pip install mnist-vae[serve]` is enough for
vae-serve and the base install for the runtime."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[1]
OURS = {"vae_runtime", "vae_train", "vae_export", "vae_serve", "vae_web"}
# package -> (its folder, the extras it may draw on, our packages it may import)
PACKAGES = {
    "vae_runtime": ("runtime", (), set()),
    "vae_train": ("train", ("train",), {"vae_runtime"}),
    "vae_export": ("export", ("train",), {"vae_runtime", "vae_train"}),
    "vae_serve": ("serve", ("serve", "ray"), {"vae_runtime"}),
    "vae_web": ("web", (), {"vae_runtime"}),
}
# Modules that only one file of a package imports, with the extra that file needs on top.
OWN_EXTRA = {"vae_serve/ray_serve.py": "ray", "vae_serve/ray_score.py": "ray"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {"": {_name(r) for r in project["dependencies"]}}
    for extra, requirements in project["optional-dependencies"].items():
        names = {_name(r) for r in requirements}
        extras[extra] = {n for n in names if n != "mnist-vae"}
        if "mnist-vae" in names:  # an extra that includes another, e.g. ray = mnist-vae[serve]
            included = re.findall(r"mnist-vae\[([\w,]+)\]", " ".join(requirements))
            for group in ",".join(included).split(","):
                extras[extra] |= {_name(r) for r in project["optional-dependencies"][group]}
    return extras


def imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in `path`, wherever it stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_package_imports_what_its_extras_install(package: str) -> None:
    folder, extras, ours = PACKAGES[package]
    declared = _declared()
    distributions = packages_distributions()
    files = sorted((ROOT / folder / package).glob("*.py"))
    assert files, f"no modules in {folder}/{package}"
    for path in files:
        allowed = set(declared[""]).union(*(declared[e] for e in extras))
        extra = OWN_EXTRA.get(f"{package}/{path.name}")
        if extra:
            allowed |= declared[extra]
        for module in imports(path) - {package}:
            if module in sys.stdlib_module_names or module == "__future__":
                continue
            if module in OURS:
                assert module in ours, f"{path.name} imports {module}"
                continue
            if module == "typing_extensions":  # under TYPE_CHECKING only (typing.Self, 3.10)
                continue
            names = {_name(d) for d in distributions.get(module, [module])}
            assert names & allowed, (
                f"{package}/{path.name} imports {module} ({', '.join(sorted(names))}), which "
                f"neither the base install nor the extras {extras or '()'} declare"
            )


def test_the_check_sees_a_missing_extra() -> None:  # the test above cannot pass by seeing nothing
    declared = _declared()
    assert "torch" in declared["train"] and "torch" not in declared[""]
    assert "starlette" in declared["ray"]  # through mnist-vae[serve]
    assert imports(ROOT / "serve/vae_serve/endpoints.py") >= {"starlette", "orjson"}
