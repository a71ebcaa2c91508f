"""One name for each row: the same label in --list, --values, the tables, their CSV and the Parquet rows."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kdsearch.analysis import tables  # noqa: E402
from kdsearch import recording, results  # noqa: E402
from kdsearch.errors import UserError  # noqa: E402
from kdsearch.job_text import list_text  # noqa: E402
from kdsearch.plan import plan  # noqa: E402
from kdsearch.spaces import load_search_space  # noqa: E402
from kdsearch.trial_result import TrialResult  # noqa: E402

GOLDEN = json.loads((REPO / "tests" / "golden" / "smoke_trials" / "dskd.json").read_text())


def test_dskd_dfe_rows_have_one_name_everywhere(tmp_path, capsys):
    axis = load_search_space("dskd").axis("dfe")
    assert list(axis.rows) == ["w/o DFE", "w/ DFE"]
    assert "grid of 2: w/o DFE, w/ DFE" in list_text()
    # --values takes a row's name or its former mark; both plan the same trials under the one name.
    by_name = plan("dskd", "dfe", profile="smoke", values="w/o DFE,w/ DFE", results_dir=tmp_path)
    by_mark = plan("dskd", "dfe", profile="smoke", values="✗,✓", results_dir=tmp_path)
    assert [t.value for t in by_name.trainings] == [t.value for t in by_mark.trainings] == ["w/o DFE", "w/ DFE"]
    # The trial keys are those the rows had under their former labels (tests/golden), so
    # results recorded before are still found.
    assert [t.trial_key for t in by_name.trainings] == [t.trial_key for t in by_mark.trainings] == GOLDEN["keys"]["dskd/dfe"]
    with pytest.raises(UserError, match=r"rows: w/o DFE \(or ✗\), w/ DFE \(or ✓\)"):
        plan("dskd", "dfe", profile="smoke", values="DFE", results_dir=tmp_path)
    with pytest.raises(UserError, match="more than once"):
        plan("dskd", "dfe", profile="smoke", values="✗,w/o DFE", results_dir=tmp_path)

    # Parquet: a new row stores the name; a row written under the former mark reads as the name.
    root = tmp_path / "results"
    for spec, x in zip(by_name.trainings, (0.75, 0.97)):
        written = results.write_trial_result(
            recording.result_fields(spec, TrialResult("ok", metrics={"image_auroc": x})), root)
        assert pq.read_table(written).column("value").to_pylist() == [spec.value]
    results.write_trial_result(dict(paper="dskd", axis="dfe", value="✗", method="dskd", dataset="synthetic",
                                    category="grid", seed=0, profile="smoke", status="ok", image_auroc=0.7), root)
    frame = results.read_results(root, "dskd", "dfe")
    assert sorted(frame["value"]) == ["w/ DFE", "w/o DFE", "w/o DFE"]
    assert plan("dskd", "dfe", profile="smoke", results_dir=root).done == 2  # --resume finds them

    # Tables (Markdown and CSV) print the same names, so the CSV joins with the Parquet on value.
    assert tables.main(["--results", str(root), "--paper", "dskd", "--axis", "dfe", "--format", "csv"]) == 0
    cells = list(csv.DictReader(io.StringIO(capsys.readouterr().out.split("\n\n")[0])))
    assert {c["value"] for c in cells} == {"w/o DFE", "w/ DFE"}
    measured = {c["value"] for c in cells if c["ours_mean"]}
    assert measured == set(frame["value"])
    assert tables.main(["--results", str(root), "--paper", "dskd", "--axis", "dfe"]) == 0
    out = capsys.readouterr().out
    assert "| w/o DFE" in out and "| ✗" not in out


def test_a_former_label_must_name_a_row_and_differ_from_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("KDSEARCH_SEARCH_SPACES", str(tmp_path))
    base = ("method: rd4ad\nprofiles: {smoke: {}, quick: {}, paper: {}}\naxes:\n"
            "  a: {param: lr, values: [0.1, 0.2], former: %s}\n")
    (tmp_path / "p.yaml").write_text(base % "{'0.1': x, '0.2': y}")
    axis = load_search_space("p").axis("a")
    assert axis.row_label("x") == "0.1" and axis.key_label("0.1") == "x" and axis.row_label("z") is None
    for bad in ("{'0.3': x}", "{'0.1': '0.2'}", "{'0.1': x, '0.2': x}"):
        (tmp_path / "q.yaml").write_text(base % bad)
        with pytest.raises(UserError, match="'former' of axis 'a'"):
            load_search_space("q")
