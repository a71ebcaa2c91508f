"""What a finished sweep tells its user to do next: the table, the report, the W&B runs,
and, for numbers that cannot test a paper, why not and which run would."""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdsearch.plan import DEFAULT_RESULTS, Job
from kdsearch.tracking import wandb_root


def next_steps(job: Job, results_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines to print after a sweep's summary table; none when the axis has no row yet (a
    sweep interrupted before its first row): no table to read, no numbers to qualify."""
    if not rows:
        return []
    paper, axis = job.space.paper, job.axis.name
    where = "" if Path(results_dir) == Path(DEFAULT_RESULTS) else f" --results {shlex.quote(str(results_dir))}"
    lines = ["Next:",
             f"  python analysis/tables.py --paper {paper} --axis {axis}{where}"
             "    the table, with the paper's numbers beside ours",
             f"  python analysis/tables.py --paper {paper} --axis {axis}{where} --report report.html"
             "    the same as a page with the sweep's plots"]
    offline = sorted(wandb_root(results_dir).glob("wandb/offline-run-*"))
    if offline:
        lines.append(f"  wandb sync {shlex.quote(str(offline[0].parent))}/offline-run-*"
                     f"    uploads the {len(offline)} offline W&B run(s) kept under {offline[0].parent}")
    datasets = {str(r.get("dataset")) for r in rows}
    seeds = {r.get("seed") for r in rows}
    if job.profile != "paper" or datasets == {"synthetic"}:
        lines.append(f"These are `{job.profile}` numbers on {', '.join(sorted(datasets)) or 'no'} data: they check the "
                     f"pipeline and show that the method learns, they do not test the paper; "
                     f"--profile paper --data-root <the paper's dataset> does.")
    elif len(seeds) == 1:
        lines.append("One seed: the claims are indicative only; --seeds 3 gives them a noise estimate.")
    return lines
