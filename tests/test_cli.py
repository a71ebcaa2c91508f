"""The ``kdsearch`` command and the smaller consistencies of the subcommands."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from kdsearch import ablate, cli
from kdsearch.errors import run_cli
from kdsearch.job_text import list_text

REPO = Path(__file__).resolve().parent.parent


def test_the_console_script_is_declared_and_dispatches_to_each_modules_main(capsys, monkeypatch):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package itself supports 3.10
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["kdsearch"]
    module, _, function = target.partition(":")
    assert getattr(importlib.import_module(module), function) is cli.console
    assert run_cli(cli.main, ["ablate", "--list"]) == 0
    assert capsys.readouterr().out == list_text() + "\n"
    seen = {}
    for name, (path, _) in cli.COMMANDS.items():
        monkeypatch.setattr(importlib.import_module(path), "main", lambda argv, name=name: seen.setdefault(name, argv) and 0)
        assert cli.main([name, "--x", "y"]) == 0
    assert seen == {name: ["--x", "y"] for name in ("ablate", "train", "tables", "bench", "describe")}
    assert run_cli(cli.main, ["--help"]) == 0 and "describe" in capsys.readouterr().out


def test_an_unknown_command_or_option_names_the_kdsearch_command(capsys):
    assert run_cli(cli.main, ["ablat"]) == 2
    assert "unknown command 'ablat'; did you mean 'ablate'?" in capsys.readouterr().err
    assert run_cli(cli.main, ["ablate", "--axsi", "k"]) == 2
    assert "see `kdsearch ablate --help`" in capsys.readouterr().err
    # Run on its own, the module keeps its own name.
    assert run_cli(ablate.main, ["--axsi", "k"]) == 2
    assert "see `python -m kdsearch.ablate --help`" in capsys.readouterr().err


def test_python_dash_m_kdsearch_lists_without_torch():
    probe = ("import runpy, sys\nsys.argv = ['kdsearch', 'ablate', '--list']\n"
             "try:\n    runpy.run_module('kdsearch', run_name='__main__')\nexcept SystemExit as exc:\n    code = exc.code\n"
             "print('HEAVY', [m for m in ('torch', 'pandas', 'ray') if m in sys.modules], code)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "adps (method adps)" in done.stdout and done.stdout.splitlines()[-1] == "HEAVY [] 0", done.stderr[-500:]


def test_every_command_runs_outside_the_checkout(tmp_path):
    # From another folder only the installed package is importable (no top-level analysis/).
    for name in cli.COMMANDS:
        done = subprocess.run([sys.executable, "-m", "kdsearch", name, "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and f"kdsearch {name}" in done.stdout, (name, done.stderr[-500:])


def test_describe_defaults_to_the_quick_profile_as_every_command():
    from kdsearch import describe

    assert describe.build_parser().parse_args(["--method", "dskd"]).profile == "quick"
    assert ablate.build_parser().parse_args([]).profile == "quick"


def test_bench_says_what_device_means(capsys):
    from kdsearch import bench

    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--device {auto,cpu,cuda} where to time: auto = the GPU when there is one" in out


def test_resume_into_an_empty_results_folder_says_so(capsys, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(ablate, "_run", lambda args, job: ran.append(job) or 0)
    argv = ["--paper", "rd4ad", "--axis", "backbone", "--profile", "smoke", "--results", str(tmp_path), "--resume"]
    assert run_cli(ablate.main, argv) == 0
    out = capsys.readouterr().out
    assert f"--resume: nothing of rd4ad/backbone is recorded in {tmp_path} yet; running all of it" in out
    assert len(ran) == 1
    assert run_cli(ablate.main, argv[:-1]) == 0  # without --resume: no such line
    assert "--resume" not in capsys.readouterr().out
