"""scripts/gpu_check.sh: what a GPU must tell the project, in one call, without Ray, Optuna or W&B."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

# Installed as sitecustomize: any import of Ray, Optuna or W&B fails, as on a GPU machine without them.
BLOCKER = textwrap.dedent("""
    import importlib.abc
    import sys


    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ray", "optuna", "wandb"):
                raise ImportError(f"blocked for this test: {name}")
            return None


    sys.meta_path.insert(0, _Block())
""")


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "blocked_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "KDSEARCH_CACHE": str(tmp_path / "cache")}
    env.pop("OUT", None)
    return env


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _commands(name: str) -> list[list[str]]:
    """The script's lines that run ``python -m name`` (or a script), continuation lines joined."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if f'"$PYTHON" {name}' in line and not line.lstrip().startswith("#") and "--help" not in line:
            found.append(shlex.split(line.split(f'"$PYTHON" {name}', 1)[1]))
    return found


def _substitute(args: list[str]) -> list[str]:
    values = {"$DEVICE": "cuda", "$method": "mrkd", "$OUT/results": "results",
              "${METHODS// /,}": "rd4ad,adps,dskd,dmdd,mrkd"}
    out = []
    for arg in args:
        if arg == "$BENCH_ARGS":
            out += ["--profile", "paper", "--seconds", "4"]
        else:
            out.append(values.get(arg, arg))
    return out


@pytest.mark.parametrize("module, main", [
    ("-m kdsearch.train", "kdsearch.train:main"), ("-m kdsearch.bench", "kdsearch.bench:main"),
    ("-m kdsearch.ablate", "kdsearch.ablate:main"), ("scripts/check_map_precision.py", None),
])
def test_every_python_command_of_the_script_parses_its_arguments(module, main, capsys):
    """Each command line the script runs, with --help last: argparse checks every option before
    it, then exits 0: an option the command does not offer fails here, not on the lent GPU."""
    import importlib

    commands = _commands(module)
    assert commands, f"the script runs no {module}"
    if main is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            entry = importlib.import_module("check_map_precision").main
        finally:
            sys.path.pop(0)
    else:
        name, attr = main.split(":")
        entry = getattr(importlib.import_module(name), attr)
    for command in commands:
        args = _substitute(command)
        with pytest.raises(SystemExit) as exited:
            entry([*args, "--help"])
        assert exited.value.code == 0, args
    capsys.readouterr()


def test_train_bench_and_a_dry_run_work_with_ray_optuna_and_wandb_blocked(tmp_path):
    code = ("import kdsearch.train, kdsearch.bench, sys; from kdsearch import ablate; "
            "sys.exit(ablate.main(['--paper', 'adps', '--axis', 'k', '--dry-run', '--results', sys.argv[1]]))")
    env = _blocked_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "blocked for this test" in probe.stderr
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "results")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cost of what remains: 20 training(s)" in proc.stdout


@pytest.mark.slow
def test_the_script_runs_its_steps_on_a_cpu_reports_each_and_fails_when_one_fails(tmp_path):
    """The cheap version of every step on the CPU in bf16, with Ray, Optuna and W&B blocked: one
    method trained, its maps checked, a smoke benchmark saved and the reproduction priced. A
    method that does not exist fails its steps; the others still run, and the exit code is 1."""
    env = {**_blocked_env(tmp_path), "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_METHODS": "rd4ad nosuch", "GPU_CHECK_COMPILE": "",
           "GPU_CHECK_BENCH_ARGS": "--profile smoke --methods rd4ad --steps 2 --repeats 1 --no-synthesis"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    for passed in ("train_rd4ad", "bench", "reproduction_dry_run"):
        assert f"\nPASS {passed} (" in out, out
    assert "\nFAIL train_nosuch (" in out and "\nFAIL maps_fp32 (" in out
    assert "PASS maps in fp32 under bf16: rd4ad on cpu" in out
    assert "gpu_check: some steps FAILED" in out
    logs = tmp_path / "out"
    assert (logs / "train_rd4ad.log").read_text().strip().splitlines()[-1].startswith("{")
    # The benchmark saved its figures into the run's own cost file, and the dry run priced from it.
    assert (logs / "cost_cache" / "throughput.json").is_file()
    assert "all    (total)             1185       805" in (logs / "reproduction_dry_run.log").read_text()
