"""A non-editable install (a wheel, as on a cluster node) carries the search spaces."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_installed_wheel_lists_papers_and_trains_outside_the_checkout(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("kdsearch-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}
        assert tops == {"kdsearch"}, tops  # nothing named like another project's package (e.g. analysis)
        assert "kdsearch/analysis/reference/adps.yaml" in archive.namelist()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "KDSEARCH_CACHE": str(tmp_path / "cache")}
    env.pop("KDSEARCH_SEARCH_SPACES", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run("-c", "import kdsearch; print(kdsearch.__file__)")
    assert where.stdout.strip().startswith(str(target)), where
    listing = run("-m", "kdsearch.ablate", "--list")
    assert listing.returncode == 0 and "adps (method adps)" in listing.stdout and "mrkd" in listing.stdout
    train = run("-m", "kdsearch.train", "--method", "rd4ad", "--profile", "smoke", "--json")
    assert train.returncode == 0, train.stderr
    assert '"status": "ok"' in train.stdout.strip().splitlines()[-1]


def test_the_wheels_package_list_is_every_package_on_disk_and_maps_the_search_spaces() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package itself supports 3.10

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "kdsearch").rglob("__init__.py")}
    on_disk |= {".".join(("kdsearch", *init.parent.relative_to(REPO).parts))
                for init in (REPO / "analysis").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"kdsearch.search_spaces"}
    assert setuptools["package-dir"] == {"kdsearch.search_spaces": "search_spaces", "kdsearch.analysis": "analysis"}
    assert not (REPO / "kdsearch" / "search_spaces").exists()
    from kdsearch.methods import list_methods
    from kdsearch.spaces import load_search_space

    # Every registered method ships the search space named after it, and every one shipped runs a registered method.
    shipped = {p.stem for p in (REPO / "search_spaces").glob("*.yaml")}
    assert set(list_methods()) <= shipped
    assert {load_search_space(paper).method for paper in shipped} <= set(list_methods())


#: Standard-library names newer than Python 3.10, by the version that added them.
_NEWER_STDLIB = {
    (3, 11): {"enum": {"StrEnum", "ReprEnum", "verify", "member", "nonmember", "global_enum", "EnumCheck"},
              "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type",
                         "Required", "NotRequired", "dataclass_transform", "TypeVarTuple", "Unpack"},
              "datetime": {"UTC"}, "hashlib": {"file_digest"}, "asyncio": {"timeout", "TaskGroup", "Runner"},
              "contextlib": {"chdir"}, "operator": {"call"}, "tomllib": {"*"}, "wsgiref.types": {"*"}},
    (3, 12): {"typing": {"override", "TypeAliasType"}, "itertools": {"batched"}},
}
_NEWER_BUILTINS = {(3, 11): {"ExceptionGroup", "BaseExceptionGroup"}}


def _floor_version() -> tuple[int, int]:
    """The oldest Python pyproject.toml promises; ruff's target must say the same."""
    import re

    text = (REPO / "pyproject.toml").read_text()
    major, minor = map(int, re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"', text).groups())
    assert re.search(r'target-version\s*=\s*"py(\d+)"', text).group(1) == f"{major}{minor}"
    return major, minor


def test_the_code_runs_on_the_oldest_python_pyproject_promises() -> None:
    """No standard-library name, builtin or syntax newer than ``requires-python`` in the package
    or its tests (a 3.10 user would get an ImportError); tests may use such modules only through
    ``pytest.importorskip``."""
    import ast

    from kdsearch.vocabulary import Status

    floor = _floor_version()
    banned = {(module, name) for version, modules in _NEWER_STDLIB.items() if version > floor
              for module, names in modules.items() for name in names}
    builtins = {name for version, names in _NEWER_BUILTINS.items() if version > floor for name in names}
    found = []
    for path in sorted(p for top in ("kdsearch", "analysis", "tests") for p in (REPO / top).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module:
                found += [f"{where} from {node.module} import {a.name}" for a in node.names
                          if (node.module, a.name) in banned or (node.module, "*") in banned]
            elif isinstance(node, ast.Import):
                found += [f"{where} import {a.name}" for a in node.names if (a.name, "*") in banned]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in banned:
                    found.append(f"{where} {node.value.id}.{node.attr}")
            elif isinstance(node, ast.Name) and node.id in builtins:
                found.append(f"{where} {node.id}")
            elif type(node).__name__ == "TryStar":
                found.append(f"{where} except*")
    assert found == []
    # The statuses still read as their bare values wherever they are written.
    assert isinstance(Status.OK, str) and Status.OK == "ok"
    assert (str(Status.PRUNED), f"{Status.FAILED}", f"{Status.OK:>4}") == ("pruned", "failed", "  ok")
