"""A non-editable install (a wheel, as on a cluster node) carries the search spaces."""
from __future__ import annotations

import os
import subprocess
import sys
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
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(REPO).parts)
               for top in ("kdsearch", "analysis") for init in (REPO / top).rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"kdsearch.search_spaces"}
    assert setuptools["package-dir"] == {"kdsearch.search_spaces": "search_spaces"}
    assert not (REPO / "kdsearch" / "search_spaces").exists()
    assert sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml")) == ["adps", "dmdd", "dskd", "mrkd", "rd4ad"]
