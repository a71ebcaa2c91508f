"""The vocabulary leaf, and the layer rule it serves: the analysis and the results tree read
Parquet, the vocabulary and the catalog, never the resolver, the loop, the methods or torch."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: What any module of ``analysis/`` or ``kdsearch/results/`` may bring in from kdsearch: the
#: package itself, the vocabulary, the catalog (with the ``UserError`` it raises), the result
#: record (itself on the vocabulary only) and the results package.
_ALLOWED = ("kdsearch", "kdsearch._torchvision_compat", "kdsearch.vocabulary", "kdsearch.catalog", "kdsearch.errors",
            "kdsearch.trial_result", "kdsearch.results")
#: The tables command line also reads the search-space files, to know each paper's axes.
_ALSO_ALLOWED = {"kdsearch.analysis.tables": ("kdsearch.spaces", "kdsearch.config")}

# One interpreter, each module imported as if first: every analysis and kdsearch module but the
# package itself is dropped from sys.modules before the next import (third-party ones stay).
_PROBE = """
import importlib, json, sys
import kdsearch
seen = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.startswith("kdsearch.")
                   and m != "kdsearch._torchvision_compat"]:
        del sys.modules[loaded]
    importlib.import_module(name)
    seen[name] = sorted(m for m in sys.modules if m.split(".")[0] == "kdsearch")
print(json.dumps({"seen": seen, "torch": "torch" in sys.modules}))
"""


def _readers() -> list[str]:
    paths = [*sorted((REPO / "analysis").glob("*.py")), *sorted((REPO / "kdsearch" / "results").glob("*.py"))]
    names = [".".join(("kdsearch", *p.relative_to(REPO).with_suffix("").parts) if p.parent.name == "analysis"
                      else p.relative_to(REPO).with_suffix("").parts) for p in paths]
    return [n.removesuffix(".__init__") for n in names] + ["kdsearch.trial_result", "kdsearch.vocabulary"]


def test_analysis_and_results_import_only_the_vocabulary_the_catalog_and_parquet() -> None:
    readers = _readers()
    assert "kdsearch.analysis.tables" in readers and "kdsearch.results.schema" in readers
    run = subprocess.run([sys.executable, "-c", _PROBE, *readers], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    assert probe["torch"] is False
    strays = {}
    for name, loaded in probe["seen"].items():
        allowed = _ALLOWED + _ALSO_ALLOWED.get(name, ())
        stray = [m for m in loaded if not m.startswith("kdsearch.analysis") and m not in allowed
                 and not m.startswith("kdsearch.results.")]
        if stray:
            strays[name] = stray
    assert strays == {}
    assert probe["seen"]["kdsearch.vocabulary"] == ["kdsearch", "kdsearch._torchvision_compat", "kdsearch.vocabulary"]


def test_the_vocabulary_imports_the_standard_library_only() -> None:
    tree = ast.parse((REPO / "kdsearch" / "vocabulary.py").read_text(encoding="utf-8"))
    modules = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}


def test_a_status_is_its_string() -> None:
    from kdsearch.vocabulary import DONE_STATUSES, STATUSES, Status

    assert Status.OK == "ok" and str(Status.PRUNED) == "pruned" and f"{Status.FAILED}" == "failed"
    assert STATUSES == ("ok", "failed", "diverged", "pruned")
    assert set(DONE_STATUSES) == set(STATUSES) - {"failed"}
