"""``--paper all --axis all``: the whole reproduction, each training counted and run once."""
from __future__ import annotations

import re

from kdsearch import ablate
from kdsearch.errors import run_cli


def test_the_whole_reproduction_dry_run_counts_each_training_once(capsys, tmp_path) -> None:
    argv = ["--paper", "all", "--axis", "all", "--profile", "paper", "--dry-run", "--results", str(tmp_path),
            "--set", "pretrained=none"]
    assert ablate.main(argv) == 0
    out = capsys.readouterr().out
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines() if line.strip()}
    # DSKD Table 9 and MRKD Table 7 train nothing of their own: main trains their model.
    assert lines[("dskd", "maps")][:2] == ["60", "0"] and lines[("mrkd", "score_maps")][:2] == ["90", "0"]
    assert lines[("adps", "k")][:2] == ["75", "60"]  # k = 8 is the main row
    total = lines[("all", "(total)")]
    assert total[0] == "1185" and int(total[1]) == 805
    hours, cached = float(total[-2]), float(total[-1])
    assert hours > cached > 0
    # ADPS's teacher sees the synthesised images only: nothing cached; the others save after epoch 1.
    adps, mrkd = lines[("adps", "(paper")], lines[("mrkd", "(paper")]
    assert adps[-1] == adps[-2] and float(mrkd[-1]) < float(mrkd[-2])
    assert re.search(r"device-hours of training only \(", out)
    # Which figures are measured and which modelled, per method.
    basis = dict(re.findall(r"^  (adps|dmdd|dskd|mrkd|rd4ad) +[\d.,]+ images/s, (.*)$", out, re.M))
    assert set(basis) == {"adps", "dmdd", "dskd", "mrkd", "rd4ad"}
    assert basis["mrkd"].startswith("modelled: the slower of the GPU's bare compute")
    assert all("measured" in basis[m] and "modelled" not in basis[m] for m in ("adps", "dmdd", "dskd", "rd4ad"))
    assert "cached: the same with the teacher cache" in out and "modelled from FLOPs" in out


def test_all_needs_all_and_rows_need_one_axis(capsys) -> None:
    assert run_cli(ablate.main, ["--paper", "all", "--axis", "k", "--dry-run"]) == 2
    assert "--paper all goes with --axis all" in capsys.readouterr().err
    assert run_cli(ablate.main, ["--paper", "adps", "--axis", "all", "--values", "4", "--dry-run"]) == 2
    assert "--values selects rows of one axis" in capsys.readouterr().err
