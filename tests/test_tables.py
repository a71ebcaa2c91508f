"""analysis/tables.py: result trees with known values in, the papers' tables out."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kdsearch.analysis import tables  # noqa: E402
from kdsearch.analysis.reference import METRICS, Reference, load_reference, load_reference_sets  # noqa: E402
from kdsearch.errors import UserError, run_cli  # noqa: E402
from kdsearch.catalog import CATALOG  # noqa: E402
from kdsearch.results import write_trial_result  # noqa: E402

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def _write(root: Path, paper: str, axis: str, value: str, category: str, seed: int, profile: str = "quick",
           dataset: str = "synthetic", status: str = "ok", config: dict | None = None, **metrics: float) -> None:
    write_trial_result(dict(paper=paper, axis=axis, value=value, method=paper, dataset=dataset, category=category,
                            seed=seed, profile=profile, status=status, config_json=config or {}, **metrics), root)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A results tree whose every cell is known by construction."""
    root = tmp_path_factory.mktemp("results")
    # ADPS k: 3 seeds, carpet = base + 0.01 seed, bottle = base + 0.02 + 0.01 seed -> mean base + 2 points, std 1.
    for value, base in (("1", 0.80), ("4", 0.90), ("8", 0.92)):
        for seed in range(3):
            for cat, off in (("carpet", 0.0), ("bottle", 0.02)):
                x = base + off + 0.01 * seed
                _write(root, "adps", "k", value, cat, seed, image_auroc=x, pixel_auroc=x, au_pro=x - 0.1,
                       au_pro_rd4ad=x - 0.2, pixel_ap=x - 0.3)
    _write(root, "adps", "k", "16", "carpet", 0, status="failed")
    # ADPS structure: one seed, W/O S beats ADPS on P-AP (so the paper's claim fails on ours).
    for value, ap, auroc in (("W/O PW", 0.50, 0.90), ("W/O T", 0.60, 0.91), ("W/O S", 0.80, 0.92), ("ADPS", 0.772, 0.95)):
        _write(root, "adps", "structure", value, "carpet", 0, pixel_ap=ap, image_auroc=auroc, pixel_auroc=auroc)
    # ADPS stage: one texture and one object category.
    for value, tex, obj in (("0", 0.98, 0.90), ("1", 0.99, 0.88)):
        _write(root, "adps", "stage", value, "carpet", 0, image_auroc=tex, pixel_auroc=tex, au_pro=tex, pixel_ap=tex)
        _write(root, "adps", "stage", value, "bottle", 0, image_auroc=obj, pixel_auroc=obj, au_pro=obj, pixel_ap=obj)
    # MRKD alpha on "mvtec"/"paper": AU-PRO is compared through au_pro_rd4ad; "0.20" must match the paper's "0.2".
    for value, rd4ad in (("0.20", 0.95), ("0.3", 0.96)):
        _write(root, "mrkd", "alpha", value, "bottle", 0, dataset="mvtec", profile="paper",
               image_auroc=0.99, pixel_auroc=0.98, au_pro=0.5, au_pro_rd4ad=rd4ad)
    # Two writes of the same cell (different configs -> different keys): the later one wins.
    write_trial_result(dict(paper="mrkd", axis="alpha", value="0", method="mrkd", dataset="mvtec", category="bottle",
                            seed=0, profile="paper", status="ok", config_json={"run": 1}, image_auroc=0.10,
                            pixel_auroc=0.1, au_pro_rd4ad=0.1, created_at=T0), root)
    write_trial_result(dict(paper="mrkd", axis="alpha", value="0", method="mrkd", dataset="mvtec", category="bottle",
                            seed=0, profile="paper", status="ok", config_json={"run": 2}, image_auroc=0.989,
                            pixel_auroc=0.98, au_pro_rd4ad=0.944, created_at=T0 + dt.timedelta(hours=1)), root)
    # A distribution axis the paper has no table for.
    for i, lr in enumerate(("0.001", "0.0001", "0.00001")):
        _write(root, "dskd", "lr", lr, "grid", 0, image_auroc=0.9 - 0.1 * i, pixel_auroc=0.8, au_pro_rd4ad=0.7)
    return root


def run(capsys, *argv: str) -> str:
    assert tables.main(list(argv)) == 0
    return capsys.readouterr().out


def md_table(text: str, title_part: str) -> list[dict[str, str]]:
    """Parse the first Markdown table under a ### heading containing title_part."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### ") and title_part in line)
    body = []
    for line in lines[start + 1:]:
        if line.startswith("### ") or line.startswith("## "):
            break
        if line.startswith("|"):
            body.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    header, rows = body[0], body[2:]
    return [dict(zip(header, row)) for row in rows]


def by_first(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {next(iter(r.values())): r for r in rows}


def test_axis_table_means_stds_n_and_missing_cells(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "k")
    rows = md_table(out, "adps / k")
    assert [r["k"] for r in rows] == ["1", "2", "4", "8", "16"]  # numeric order, partial sweep rendered
    k = by_first(rows)
    assert k["1"]["I-AUROC ours"] == "82.00 ± 1.00 (n=3)"
    assert k["4"]["P-AUROC ours"] == "92.00 ± 1.00 (n=3)"
    assert k["8"]["AU-PRO ours"] == "84.00 ± 1.00 (n=3)"  # MVTec definition for ADPS: column au_pro
    assert k["8"]["P-AP ours"] == "64.00 ± 1.00 (n=3)"
    assert k["1"]["cat."] == "2"
    for missing in ("2", "16"):
        assert k[missing]["I-AUROC ours"] == "—" and k[missing]["cat."] == "—"
    assert k["1"]["I-AUROC paper"] == "?"  # Fig. 6 is unreadable
    assert k["1"]["I-AUROC Δ"] == "—"
    assert "16: 1 failed" in out
    assert "ours is column `au_pro`" in out


def test_reference_values_and_differences(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "structure")
    rows = by_first(md_table(out, "adps / structure"))
    adps = rows["ADPS"]
    assert (adps["P-AP ours"], adps["P-AP paper"], adps["P-AP Δ"]) == ("77.20", "77.2", "+0.00")
    assert (adps["I-AUROC ours"], adps["I-AUROC paper"], adps["I-AUROC Δ"]) == ("95.00", "97.7", "-2.70")
    assert (rows["W/O. T"]["P-AUROC paper"], rows["W/O. T"]["P-AUROC Δ"]) == ("94.9", "-3.90")
    assert rows["W/O. PW"]["P-AP Δ"] == "-7.90"
    assert "AU-PRO ours" not in adps  # Table IV reports AP, AUROC_cla, AUROC_seg only


def test_texture_object_mean_rows(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "stage")
    rows = {(r["stage"], r["group"]): r for r in md_table(out, "adps / stage")}
    assert rows[("Stage 0", "Texture")]["I-AUROC ours"] == "98.00"
    assert rows[("Stage 0", "Object")]["I-AUROC ours"] == "90.00"
    assert rows[("Stage 0", "Mean")]["I-AUROC ours"] == "94.00"
    assert rows[("Stage 0-1", "Texture")]["I-AUROC paper"] == "99.3"
    assert rows[("Stage 0-1", "Texture")]["I-AUROC Δ"] == "-0.30"
    assert rows[("Stage 0-2", "Mean")]["P-AP paper"] == "75.9"
    assert rows[("Stage 0-2", "Mean")]["P-AP ours"] == "—"


def test_numeric_rows_protocol_and_latest_trial(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "mrkd", "--axis", "alpha")
    rows = md_table(out, "mrkd / alpha")
    assert [r["alpha"] for r in rows] == ["α = 0", "α = 0.2", "0.3", "α = 0.4", "α = 0.6", "α = 0.8", "α = 1"]
    alpha = by_first(rows)
    assert (alpha["α = 0.2"]["AU-PRO ours"], alpha["α = 0.2"]["AU-PRO paper"], alpha["α = 0.2"]["AU-PRO Δ"]) == (
        "95.00", "95.0", "+0.00")  # au_pro_rd4ad, not au_pro (0.5)
    assert alpha["0.3"]["AU-PRO paper"] == "—" and alpha["0.3"]["AU-PRO ours"] == "96.00"
    assert alpha["α = 0"]["I-AUROC ours"] == "98.90"  # the later of two trials of the same cell
    assert "1 older trial(s)" in out
    assert "ours is column `au_pro_rd4ad`" in out


def test_distribution_axis_without_paper_table(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "dskd", "--axis", "lr")
    rows = md_table(out, "dskd / lr")
    assert [r["lr"] for r in rows] == ["0.00001", "0.0001", "0.001"]
    assert rows[0]["I-AUROC ours"] == "70.00" and rows[0]["I-AUROC paper"] == "—"
    assert "P-AP ours" not in rows[0]  # never measured


def test_per_category_tables(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "k", "--per-category")
    rows = by_first(md_table(out, "adps / k per category: I-AUROC"))
    assert rows["carpet"]["1 ours"] == "81.00 ± 1.00 (n=3)"
    assert rows["bottle"]["1 ours"] == "83.00 ± 1.00 (n=3)"
    assert rows["carpet"]["kind"] == "texture" and rows["bottle"]["kind"] == "object"
    assert rows["mean"]["8 ours"] == "94.00 ± 1.00 (n=3)"
    structure = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "structure", "--per-category")
    ap = by_first(md_table(structure, "adps / structure per category: P-AP"))
    assert (ap["carpet"]["ADPS ours"], ap["carpet"]["ADPS paper"], ap["carpet"]["ADPS Δ"]) == ("77.20", "83.7", "-6.50")
    assert ap["screw"]["ADPS paper"] == "59.2" and ap["screw"]["ADPS ours"] == "—"
    assert len(ap) == 16  # 15 categories + mean


def test_claims_verdicts(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps")
    claims = {r["claim"]: r for r in md_table(out, "adps claims")}
    assert claims["k = 4-8 beats k = 1"]["ours"] == "holds"
    assert "P-AP ✓: 4 62.00±1.00, 8 64.00±1.00 > 1 52.00±1.00" in claims["k = 4-8 beats k = 1"]["our numbers"]
    assert claims["the best k is 4 or 8"]["ours"] == "not enough data"
    assert claims["k = 4-8 beats k = 1"]["margin"].startswith("I-AUROC +10.00 ± 0.00 (3 seeds)")
    assert claims["full ADPS beats W/O PW, W/O T and W/O S"]["ours"] == "indicative (1 seed): does not hold"
    assert "P-AP -2.80 (1 seed)" in claims["full ADPS beats W/O PW, W/O T and W/O S"]["margin"]
    assert "P-AP ✗" in claims["full ADPS beats W/O PW, W/O T and W/O S"]["our numbers"]
    assert claims["full ADPS beats W/O PW, W/O T and W/O S"]["paper's own numbers"].startswith("holds")
    assert claims["WMB beats |T-S| and concat"]["ours"] == "not enough data"


def test_csv_output(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--format", "csv")
    blocks = [b for b in out.split("\n\n") if b.strip()]
    cells = list(csv.DictReader(io.StringIO(blocks[0])))
    one = next(r for r in cells if r["axis"] == "k" and r["value"] == "1" and r["metric"] == "image_auroc")
    assert float(one["ours_mean"]) == pytest.approx(82.0) and float(one["ours_std"]) == pytest.approx(1.0)
    assert one["n_seeds"] == "3" and one["n_categories"] == "2" and one["paper_unreadable"] == "True"
    ap = next(r for r in cells if r["axis"] == "structure" and r["value"] == "ADPS" and r["metric"] == "pixel_ap")
    assert float(ap["paper_value"]) == 77.2 and float(ap["delta"]) == pytest.approx(0.0, abs=1e-6)
    assert ap["source"] == "Table IV, columns ADPS"
    missing = next(r for r in cells if r["axis"] == "k" and r["value"] == "2" and r["metric"] == "pixel_ap")
    assert missing["ours_mean"] == "" and missing["n_seeds"] == "0"
    claims = list(csv.DictReader(io.StringIO(blocks[1])))
    assert {c["verdict"] for c in claims} == {"holds", "indicative (1 seed): holds",
                                               "indicative (1 seed): does not hold", "not enough data"}


def test_latex_output(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "k", "--format", "latex")
    assert "\\begin{tabular}" in out and "\\toprule" in out and "\\end{table}" in out
    assert "82.00 $\\pm$ 1.00 (n=3)" in out
    assert "I-AUROC $\\Delta$" in out
    assert " & --- & " in out
    fusion = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "fusion", "--format", "latex")
    assert "Method (1) \\textbar{}T-S\\textbar{}" in fusion
    lines = fusion.splitlines()
    header = lines[lines.index("\\midrule") - 1]
    body = [line for line in lines if line.startswith(("Method", "WMB"))]
    assert len(body) == 9  # 3 rows x texture / object / mean
    assert all(line.count("&") == header.count("&") and line.endswith("\\\\") for line in body)


def test_html_output(tree, capsys):
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "k", "--format", "html")
    assert "<table>" in out and '<th><span style="white-space: nowrap">I-AUROC</span> ours</th>' in out
    assert "<td>82.00 ± 1.00 (n=3)</td>" in out
    structure = run(capsys, "--results", str(tree), "--paper", "adps", "--axis", "structure", "--format", "html")
    assert "<td>W/O. PW</td>" in structure


def test_out_dir_and_plots(tree, tmp_path, capsys):
    out_dir = tmp_path / "out"
    run(capsys, "--results", str(tree), "--paper", "adps", "--out", str(out_dir), "--plots", "--per-category")
    assert (out_dir / "all.md").read_text().count("### ") > 5
    assert (out_dir / "adps_k_synthetic_quick.md").is_file()
    assert (out_dir / "adps_k_synthetic_quick_pixel_ap_per_category.md").is_file()
    assert (out_dir / "adps_synthetic_quick_claims.md").is_file()
    run(capsys, "--results", str(tree), "--axis", "lr", "--out", str(out_dir), "--plots", "--format", "csv")
    assert (out_dir / "dskd_lr_synthetic_quick.csv").is_file()
    plots = out_dir / "plots"
    expected = [
        "adps_k_synthetic_quick_sweep.png", "adps_k_synthetic_quick_heatmap.png",
        "adps_structure_synthetic_quick_heatmap.png", "dskd_lr_synthetic_quick_sweep.png",
    ]
    for name in expected:
        data = (plots / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (plots / "adps_structure_synthetic_quick_sweep.png").exists()  # not a numeric axis
    assert not (plots / "adps_loss_synthetic_quick_heatmap.png").exists()  # nothing measured


def _run_script(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["analysis/tables.py", *argv])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "analysis" / "tables.py"), run_name="__main__")
    return stop.value.code


def test_script_entry_point_in_process(tree, tmp_path, monkeypatch, capsys):
    """The `python analysis/tables.py` wiring (script-path imports, exit codes) in this interpreter."""
    assert _run_script(monkeypatch, "--results", str(tree), "--paper", "mrkd", "--axis", "alpha", "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out.split("\n\n")[0])))
    row = next(r for r in rows if r["value"] == "0.2" and r["metric"] == "au_pro")
    assert row["column"] == "au_pro_rd4ad" and float(row["ours_mean"]) == pytest.approx(95.0)
    assert _run_script(monkeypatch, "--results", str(tmp_path / "nope")) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: results directory") and captured.out == ""


def test_script_as_a_subprocess(tree, tmp_path):
    proc = subprocess.run([sys.executable, "analysis/tables.py", "--results", str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: results directory") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("argv,message", [
    (["--results", "{missing}"], "does not exist"),
    (["--paper", "nope"], "unknown paper"),
    (["--paper", "adps", "--axis", "nope"], "unknown axis"),
    (["--axis", "nope"], "unknown axis"),
    # Papers and axes kdsearch runs but the folder holds no rows of: say which command makes them.
    (["--paper", "rd4ad"], "no rd4ad rows in .* yet .* python -m kdsearch.ablate --paper rd4ad --axis backbone"),
    (["--axis", "msn_lr"], "no rows of axis 'msn_lr' in .* yet; make them with: python -m kdsearch.ablate --paper dmdd"),
    (["--format", "pdf"], "unknown format"),
    (["--plots"], "needs --out"),
    (["--out", "{file}/sub"], "cannot write"),
    (["--reference", "{missing}"], "reference directory"),
    (["--no-such-flag"], "unrecognized"),
])
def test_user_errors(tree, tmp_path, capsys, argv, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = [a.format(missing=tmp_path / "missing", file=blocker) for a in argv]
    if "--results" not in argv:
        argv = ["--results", str(tree), *argv]
    with pytest.raises(UserError, match=message):
        tables.main(argv)
    assert run_cli(tables.main, argv) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_empty_results_dir(tmp_path, capsys):
    with pytest.raises(UserError, match="no results"):
        tables.main(["--results", str(tmp_path)])
    out = run(capsys, "--results", str(tmp_path), "--paper", "dskd", "--axis", "structure")
    rows = by_first(md_table(out, "dskd / structure"))
    assert rows["DS"]["I-AUROC paper"] == "98.5" and rows["DS"]["I-AUROC ours"] == "—"


def test_main_results_axis(tmp_path, capsys):
    for cat, x in (("carpet", 0.97), ("bottle", 0.99)):
        _write(tmp_path, "dmdd", "main", "default", cat, 0, dataset="mvtec", profile="paper",
               image_auroc=x, pixel_auroc=x, au_pro=x - 0.02)
    out = run(capsys, "--results", str(tmp_path))
    rows = {r["group"]: r for r in md_table(out, "dmdd / main")}
    assert (rows["Texture"]["I-AUROC ours"], rows["Texture"]["I-AUROC paper"], rows["Texture"]["I-AUROC Δ"]) == (
        "97.00", "99.94", "-2.94")
    assert rows["Mean"]["AU-PRO ours"] == "96.00" and rows["Mean"]["cat."] == "2"
    assert rows["Mean"]["main"] == "DMDD"


def test_row_aliases_and_loose_labels(tmp_path, capsys):
    for value, x in (("✗", 0.75), ("✓", 0.97)):
        _write(tmp_path, "dskd", "dfe", value, "grid", 0, dataset="mvtec", profile="paper", image_auroc=x)
    for value in ("NGM+Inner", "DMD"):
        _write(tmp_path, "dmdd", "pmn", value, "grid", 0, dataset="mvtec", profile="paper", image_auroc=0.99)
    out = run(capsys, "--results", str(tmp_path))
    dfe = by_first(md_table(out, "dskd / dfe"))
    assert list(dfe) == ["w/o DFE", "w/ DFE"]
    assert dfe["w/o DFE"]["I-AUROC ours"] == "75.00" and dfe["w/o DFE"]["I-AUROC Δ"] == "-0.60"
    pmn = by_first(md_table(out, "dmdd / pmn"))
    assert len(pmn) == 7
    assert pmn["Normality branch (NGM), inner path"]["I-AUROC ours"] == "99.00"
    assert pmn["Decoupled S-T network (DMD), inner + outer"]["I-AUROC Δ"] == "-0.18"


# --- the reference files themselves -------------------------------------------------



def load_references(directory: Path) -> dict[str, Reference]:
    """Each paper's main reference (the file named after the paper), keyed by paper name."""
    refs = {}
    for path in sorted(directory.glob("*.yaml")):
        ref = load_reference(path)
        if path.stem == ref.paper:
            refs[ref.paper] = ref
    return refs


REFS = load_references(REPO / "analysis" / "reference")
MVTEC_TEXTURES, MVTEC_OBJECTS = CATALOG["mvtec"].texture_categories, CATALOG["mvtec"].object_categories


def test_reference_files_cover_the_papers_axes():
    assert {p: list(r.axes) for p, r in REFS.items()} == {
        "adps": ["k", "stage", "structure", "fusion", "loss", "main"],
        "dskd": ["structure", "dfe", "maps", "lambda", "main"],
        "dmdd": ["pmn", "msn", "main"],
        "mrkd": ["modules", "alpha", "mask_ratio", "score_maps", "backbone", "main"],
    }
    rows = {(p, a): list(ax.rows) for p, r in REFS.items() for a, ax in r.axes.items()}
    assert rows[("adps", "structure")] == ["W/O PW", "W/O T", "W/O S", "ADPS"]
    assert rows[("adps", "fusion")] == ["|T-S|", "concat", "WMB"]
    assert rows[("dskd", "structure")] == ["DS", "T-E", "T-D", "E-D"]
    assert rows[("mrkd", "score_maps")] == ["SM1", "SM2", "SM3", "SM1&2", "SM2&3", "SM1&2&3"]
    assert rows[("mrkd", "backbone")] == ["resnet18", "resnet50", "wide_resnet50_2"]
    assert {p: r.au_pro_protocol for p, r in REFS.items()} == {
        "adps": "mvtec", "dskd": "rd4ad", "dmdd": "mvtec", "mrkd": "rd4ad"}


@pytest.mark.parametrize("paper,axis,row,metric,value", [
    ("adps", "structure", "W/O S", "pixel_ap", 71.9),
    ("dskd", "structure", "T-D", "au_pro", 93.1),
    ("dskd", "dfe", "w/o DFE", "image_auroc", 75.6),
    ("dmdd", "pmn", "AIM+inner+outer", "image_auroc", 99.24),
    ("dmdd", "msn", "-PU", "au_pro", 95.39),
    ("mrkd", "modules", "ILM", "au_pro", 95.0),
    ("mrkd", "score_maps", "SM3", "au_pro", 84.3),
    ("mrkd", "main", "default", "au_pro", 95.3),
])
def test_reference_spot_values(paper, axis, row, metric, value):
    assert REFS[paper].axes[axis].rows[row].lookup(metric) == (value, False)


def test_unreadable_entries_are_marked():
    assert all(r.unreadable for r in REFS["adps"].axes["k"].rows.values())
    assert all(r.unreadable for r in REFS["adps"].axes["loss"].rows.values())
    assert all(r.unreadable for r in REFS["mrkd"].axes["mask_ratio"].rows.values())
    assert REFS["adps"].axes["fusion"].reconstructed


# Printed means that do not equal the means of the printed categories (the papers' own slips).
KNOWN_OFF = {("dskd", "pixel_auroc", "mean"), ("dskd", "au_pro", "mean"), ("dmdd", "image_auroc", "object"),
             ("dmdd", "pixel_auroc", "object"), ("dmdd", "au_pro", "object")}


@pytest.mark.parametrize("paper", sorted(REFS))
def test_reference_category_means_match_printed_means(paper):
    """A transcription check: each printed mean equals the mean of its printed categories within rounding."""
    tol = 0.051 if REFS[paper].decimals == 1 else 0.0051
    for axis in REFS[paper].axes.values():
        for row in axis.rows.values():
            if not row.categories:
                continue
            for metric in METRICS:
                for group, cats in (("texture", MVTEC_TEXTURES), ("object", MVTEC_OBJECTS),
                                    ("mean", MVTEC_TEXTURES + MVTEC_OBJECTS)):
                    printed = row.values.get(group, {}).get(metric)
                    if printed is None or metric not in row.categories.get("carpet", {}):
                        continue
                    mean = sum(row.categories[c][metric] for c in cats) / len(cats)
                    if (paper, metric, group) in KNOWN_OFF:
                        assert abs(mean - printed) > tol
                    else:
                        assert mean == pytest.approx(printed, abs=tol), (axis.name, row.key, metric, group)


@pytest.mark.parametrize("paper", sorted(REFS))
def test_claims_hold_on_the_papers_own_numbers(paper, tmp_path, capsys):
    out = run(capsys, "--results", str(tmp_path), "--paper", paper)
    for claim in md_table(out, f"{paper} claims"):
        assert claim["ours"] == "not enough data"
        assert claim["paper's own numbers"].split(":")[0] in ("holds", "not enough data"), claim
        if "?" not in claim["paper's own numbers"]:
            assert claim["paper's own numbers"].startswith("holds"), claim


SETS = load_reference_sets(REPO / "analysis" / "reference")
OTHER_DATASETS = [(paper, dataset) for paper, refs in sorted(SETS.items()) for dataset in refs if dataset != "mvtec"]


@pytest.mark.parametrize("paper, dataset", OTHER_DATASETS)
def test_each_other_dataset_table_renders_the_papers_numbers_beside_ours(paper, dataset, tmp_path, capsys):
    ref = SETS[paper][dataset]
    main = ref.axes["main"].rows["default"]
    categories = main.categories or {dataset: main.values["mean"]}
    for category, values in categories.items():
        metrics = {m: v / 100.0 for m, v in values.items() if v is not None}
        if "au_pro" in metrics and ref.au_pro_protocol == "rd4ad":
            metrics["au_pro_rd4ad"] = metrics["au_pro"]
        _write(tmp_path, paper, "main", "default", category, 0, dataset=dataset, profile="paper", **metrics)
    out = run(capsys, "--results", str(tmp_path), "--paper", paper, "--per-category")
    assert f"dataset {dataset}, profile paper" in out
    rows = md_table(out, f"{paper} / main")
    mean = {r.get("group", "Mean"): r for r in rows}["Mean"]
    for metric, value in main.values["mean"].items():
        if value is None:
            continue
        label = {"image_auroc": "I-AUROC", "pixel_auroc": "P-AUROC", "au_pro": "AU-PRO", "pixel_ap": "P-AP"}[metric]
        paper_cell = float(mean[f"{label} paper"])
        assert paper_cell == pytest.approx(value), (metric, mean)
        # Ours is the mean of the printed categories; a printed mean may differ by rounding (noted in the file).
        assert abs(float(mean[f"{label} ours"]) - value) <= 0.15, (metric, mean)


def test_without_results_a_paper_shows_every_dataset_it_reports(tmp_path, capsys):
    out = run(capsys, "--results", str(tmp_path), "--paper", "dmdd")
    for dataset in ("mvtec", "btad", "mpdd"):
        assert f"dataset {dataset}, profile —" in out


def _report(tree: Path, tmp_path: Path, capsys, *extra: str) -> str:
    path = tmp_path / "deep" / "adps.html"
    out = run(capsys, "--results", str(tree), "--paper", "adps", "--report", str(path), *extra)
    assert f"wrote {path}" in out
    return path.read_text(encoding="utf-8")


def test_report_is_one_page_with_header_tables_claims_and_embedded_plots(tree, tmp_path, capsys):
    page = _report(tree, tmp_path, capsys)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<style>" in page and "<link" not in page and "<script" not in page  # nothing to fetch
    for name, value in (("paper", "ADPS"), ("dataset", "synthetic"), ("profile", "quick"), ("seeds", "3 (0, 1, 2)")):
        assert f"<dt>{name}</dt><dd>{value}</dd>" in page
    for name in ("git sha", "device", "results written", "report written"):
        assert f"<dt>{name}</dt>" in page
    assert "<td>82.00 ± 1.00 (n=3)</td>" in page  # the k table, ours beside the paper's
    assert "claims" in page.lower() and "indicative (1 seed)" in page
    assert "Pipeline check, not a reproduction" in page  # quick, synthetic
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # k: a sweep plot and a heat map; structure and stage: heat maps (not numeric axes)
    assert len(images) == 4
    import base64

    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)


def test_report_of_a_paper_without_results_shows_its_numbers(tmp_path, capsys):
    empty = tmp_path / "results"
    empty.mkdir()
    page = _report(empty, tmp_path, capsys)
    assert "<dt>seeds</dt><dd>— (no results yet" in page and "<img" not in page
    assert "<table>" in page


def test_report_into_an_unwritable_place_is_a_user_error(tree, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write --report"):
        tables.main(["--results", str(tree), "--paper", "adps", "--report", str(blocker / "r.html")])


def test_quick_synthetic_results_are_marked_a_pipeline_check(tree):
    from kdsearch.analysis.report import build_report, header_facts, pipeline_check

    frame = tables._read(tree)
    adps = pipeline_check(frame, ["adps"])  # profile quick on the synthetic data
    assert adps[0].startswith("Profile quick") and adps[1].startswith("Dataset synthetic")
    assert "--paper adps --axis all --profile paper" in adps[-1]
    assert pipeline_check(frame, ["mrkd"]) == []  # profile paper on mvtec
    page = build_report([], [], header_facts(frame, ["adps"]), adps)
    assert re.search(r'<div class="banner"[^>]*><strong>Pipeline check, not a reproduction</strong>', page)
    assert 'class="banner"' not in build_report([], [], header_facts(frame, ["mrkd"]), [])


def _contexts(results: Path, *argv: str):
    args = tables._parser().parse_args(["--results", str(results), *argv])
    return tables._sections(args, load_reference_sets(tables.REFERENCE_DIR), tables._read(results))[1]


def test_heat_maps_use_fixed_colour_scales_even_with_one_category(tmp_path):
    """AUROC 50-100, other percentages 0-100, whatever the measured spread (here 49-65 on one category)."""
    from kdsearch.analysis import plots

    for i, value in enumerate(("W/O PW", "W/O T", "W/O S", "ADPS")):
        x = 0.49 + 0.16 * i / 3
        _write(tmp_path, "adps", "structure", value, "carpet", 0, image_auroc=x, pixel_auroc=x, pixel_ap=x - 0.3)
    [ctx] = _contexts(tmp_path, "--paper", "adps", "--axis", "structure")
    fig = plots.heatmap_figure(ctx)
    panels = {ax.get_title().split(" (")[0]: ax.images[0].norm for ax in fig.axes if ax.images}
    assert {name: (norm.vmin, norm.vmax) for name, norm in panels.items()} == {
        "P-AP": (0.0, 100.0), "I-AUROC": (50.0, 100.0), "P-AUROC": (50.0, 100.0)}


def test_sweep_legend_sits_beside_the_axes(tree):
    """The legend never covers a point: it is drawn right of the axes, inside the figure."""
    from kdsearch.analysis import plots

    [ctx] = [c for c in _contexts(tree, "--paper", "mrkd", "--axis", "alpha")]
    fig = plots.sweep_figure(ctx)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    [ax] = fig.axes
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1 and legend.x1 <= fig.bbox.x1


_PROBE = """<script>
window.addEventListener("error", e => { (window.kdErrors = window.kdErrors || []).push(String(e.message)); }, true);
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "kdsearch-probe";
  probe.textContent = JSON.stringify({errors: window.kdErrors || [],
    images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight])});
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser, or a skip before anything is built (session scope: requested
    before ``tree``, it is set up first)."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    return browser


def _browser_flags(browser: str, tmp_path: Path) -> list[str]:
    """Headless, offline and with a fresh profile: nothing but the page is loaded."""
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_report_renders_in_headless_chromium(chromium, tree, tmp_path, capsys):
    """The page in a real browser: it loads with no console error, every image decodes and
    is laid out at a non-zero size, and a screenshot is written (Debian: apt-get install chromium)."""
    import json

    page = _report(tree, tmp_path, capsys)
    report = tmp_path / "deep" / "adps.html"
    probed = tmp_path / "probe.html"
    probed.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    flags = _browser_flags(chromium, tmp_path)
    dom = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
    found = re.search(r'<pre id="kdsearch-probe">([^<]*)</pre>', dom.stdout)
    assert found, dom.stdout[-2000:]
    probe = json.loads(html_unescape(found.group(1)))
    assert probe["errors"] == []
    assert len(probe["images"]) == 4
    for complete, natural_w, natural_h, shown_w, shown_h in probe["images"]:
        assert complete and natural_w > 0 and natural_h > 0 and shown_w > 0 and shown_h > 0
    shot = tmp_path / "report.png"
    taken = subprocess.run([*flags, "--window-size=1280,1800", f"--screenshot={shot}", report.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


_OVERFLOW_PROBE = """<script>
window.addEventListener("load", () => {
  const tables = Array.from(document.querySelectorAll("table")).map(t => {
    const box = t.parentElement;
    const before = Array.from(document.querySelectorAll("h3")).filter(
      h => h.compareDocumentPosition(t) & Node.DOCUMENT_POSITION_FOLLOWING);
    return {title: before.length ? before[before.length - 1].textContent : "?",
            table: t.scrollWidth, box: box.clientWidth, box_scroll: box.scrollWidth};
  });
  const probe = document.createElement("pre");
  probe.id = "kdsearch-overflow";
  probe.textContent = JSON.stringify({window: window.innerWidth, page: document.documentElement.scrollWidth, tables});
  document.body.appendChild(probe);
});
</script>"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_report_tables_fit_a_1400px_window(chromium, tree, tmp_path, capsys):
    """At 1,400 px every table (the claims table and ADPS k's P-AP columns included) fits its
    container: cells wrap, nothing scrolls sideways or is cut off."""
    import json

    page = _report(tree, tmp_path, capsys)
    probed = tmp_path / "overflow.html"
    probed.write_text(page.replace("</body>", _OVERFLOW_PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([*_browser_flags(chromium, tmp_path), "--window-size=1400,1000", "--virtual-time-budget=5000",
                          "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="kdsearch-overflow">([^<]*)</pre>', dom.stdout)
    assert found, dom.stdout[-2000:]
    probe = json.loads(html_unescape(found.group(1)))
    assert probe["window"] == 1400 and probe["page"] <= 1400, probe
    titles = [t["title"] for t in probe["tables"]]
    assert any(t.startswith("adps claims") for t in titles) and any(t.startswith("adps / k") for t in titles)
    cut = [t for t in probe["tables"] if t["table"] > t["box"] or t["box_scroll"] > t["box"]]
    assert cut == [], cut


def _table_chunks(page: str) -> list[tuple[str, list[str], str]]:
    """Each table of a report page: its title, its column headers, and all the page's text from
    its title to the next table's (captions, cells, figure captions), tags stripped."""
    import html

    chunks = []
    for chunk in page.split("<h3>")[1:]:
        title = html.unescape(chunk.split("</h3>", 1)[0])
        headers = [html.unescape(re.sub(r"<[^>]+>", "", h)) for h in re.findall(r"<th>(.*?)</th>", chunk)]
        chunks.append((title, headers, html.unescape(re.sub(r"<[^>]+>", " ", chunk))))
    return chunks


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_report_prints_every_column(chromium, tree, tmp_path, capsys):
    """Printed (landscape A4, Chromium's --print-to-pdf), every column of every table is on the
    paper: each header word appears in the PDF text between the table's title and the next
    table's at least as often as the page holds it there (a cut column loses its header and cells)."""
    import shutil
    from collections import Counter

    if shutil.which("pdftotext") is None:
        pytest.skip("no pdftotext here (Debian: apt-get install poppler-utils)")
    page = _report(tree, tmp_path, capsys)
    report = tmp_path / "deep" / "adps.html"
    pdf = tmp_path / "report.pdf"
    printed = subprocess.run([*_browser_flags(chromium, tmp_path), "--no-pdf-header-footer", f"--print-to-pdf={pdf}",
                              report.as_uri()], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and pdf.is_file(), printed.stderr[-2000:]
    layout = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=60,
                            check=True).stdout
    text = " ".join(layout.split())  # a title wrapped over two lines reads as one
    chunks = _table_chunks(page)
    assert any(title.startswith("adps claims") for title, _, _ in chunks)
    starts = []
    for title, _, _ in chunks:
        at = text.find(" ".join(title.split()), starts[-1] if starts else 0)
        assert at >= 0, f"table {title!r} is not in the printed text"
        starts.append(at)
    missing = []
    for (title, headers, html_text), start, end in zip(chunks, starts, [*starts[1:], len(text)]):
        printed_words, page_words = Counter(text[start:end].split()), Counter(html_text.split())
        missing += [(title, h, w) for h in headers for w in h.split() if printed_words[w] < page_words[w]]
    assert missing == [], missing
