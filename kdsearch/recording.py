"""Record finished trials: result rows and epoch curves into the results tree, one line each.

The Ray driver (:mod:`kdsearch.distributed`) hands every finished trial to a
:class:`ResultWriter`; the row's fields come from :func:`result_fields` and
:func:`epoch_fields`, the schema from :mod:`kdsearch.results`. Nothing here touches Ray.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdsearch import results as results_lib
from kdsearch.plan import Job, TrialSpec
from kdsearch.progress import SweepProgress
from kdsearch.trial_result import TrialResult
from kdsearch.vocabulary import METRIC_LABELS, VAL_METRIC, Status

SUMMARY_METRICS = tuple((name, METRIC_LABELS[name]) for name in ("image_auroc", "pixel_auroc", "au_pro", "pixel_ap"))


def result_fields(spec: TrialSpec, result: TrialResult, *, git_sha: str | None = None,
                  reused_from: str | None = None) -> dict[str, Any]:
    """The result row of a trial.

    ``reused_from`` names the row whose training this row's metrics come from, when the
    row did not train a model of its own.
    """
    row: dict[str, Any] = {
        "trial_key": spec.trial_key, "paper": spec.paper, "axis": spec.axis, "value": spec.value,
        "value_numeric": spec.value_numeric, "method": spec.method, "dataset": spec.dataset,
        "category": spec.category, "category_kind": spec.category_kind, "seed": spec.seed,
        "profile": spec.profile, "config_json": spec.identity, "git_sha": git_sha,
        "training_key": spec.training_key, "reused_from": reused_from,
        "status": str(result.status),
        # The tail of a long text says what broke.
        "error": str(result.error)[-4000:] if result.error is not None else None,
        "epochs": result.epochs, "restarts": result.restarts, "device": result.device,
        **{name: getattr(result, name) for name in results_lib.NUMERICS_COLUMNS},
        **{name: result.metrics.get(name, math.nan) for name in results_lib.METRIC_COLUMNS},
        **{name: getattr(result, name) for name in results_lib.TIMING_COLUMNS},
    }
    return row


def epoch_fields(spec: TrialSpec, records: Sequence[Mapping[str, Any]], node: str | None = None) -> list[dict[str, Any]]:
    """Rows of the epoch-curve table for a trial's epoch records."""
    rows = []
    skip = {"epoch", "loss", "seconds", VAL_METRIC}
    for record in records:
        extra = {k: v for k, v in record.items() if k not in skip and _json_number(v)}
        extra.update({"dataset": spec.dataset, "profile": spec.profile})
        if node:
            extra["node"] = node
        loss = record.get("loss")
        rows.append({
            "trial_key": spec.trial_key, "paper": spec.paper, "axis": spec.axis, "value": spec.value,
            "category": spec.category, "seed": spec.seed, "epoch": int(record["epoch"]),
            "loss": float(loss) if isinstance(loss, (int, float)) else math.nan,
            "val_metric": _float_or_none(record.get(VAL_METRIC)), "val_metric_name": VAL_METRIC,
            "seconds": _float_or_none(record.get("seconds")), "extra_json": extra,
        })
    return rows


def _json_number(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and not (isinstance(value, float) and not math.isfinite(value))


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def git_sha() -> str | None:
    """The commit of the source tree, when it is a git checkout (else ``None``)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


class ResultWriter:
    """Writes rows and curves to the results tree and prints one line per finished trial.

    The runner calls :meth:`finished` once per trial; nothing here touches Ray.
    """

    def __init__(self, results_dir: str | os.PathLike[str], *, quiet: bool = False,
                 progress: SweepProgress | None = None) -> None:
        self.results_dir = Path(results_dir)
        self.rows: list[dict[str, Any]] = []
        self.sha = git_sha()
        self.quiet = quiet
        #: The sweep's progress line, kept below the trial lines (none: plain prints).
        self.progress = progress

    def finished(self, spec: TrialSpec, result: TrialResult, records: Sequence[Mapping[str, Any]],
                 *, node: str | None = None, reused_from: str | None = None) -> dict[str, Any]:
        """Record one trial (ok, diverged, failed or pruned): its row, its curves, its line.

        A row that reuses another row's training (``reused_from``) gets no curves of its
        own: they are the training's, stored with the row that trained. A curve left under its
        key (the row trained once, was deleted, and is now written from another row's
        training) is removed: it would be a second curve of a training the row does not report.
        """
        row = results_lib.result_row(**result_fields(spec, result, git_sha=self.sha, reused_from=reused_from))
        if records and reused_from is None:
            results_lib.write_epoch_curves(epoch_fields(spec, records, node), self.results_dir)
        elif reused_from is not None:
            (self.results_dir / spec.paper / spec.axis / results_lib.EPOCHS_DIRNAME
             / f"{spec.trial_key}.parquet").unlink(missing_ok=True)
        results_lib.write_trial_result(row, self.results_dir)
        self.rows.append(row)
        self._line(spec, row)
        return row

    def reused(self, spec: TrialSpec, source: Mapping[str, Any],
               scored: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Record a row from a training already in the results tree (``source``, its row):
        its metrics, or ``scored`` (metrics and evaluation time of this row's own scoring of
        the training's kept weights)."""
        from kdsearch.reuse import trainer_key

        result = TrialResult.from_summary({**source, **(scored or {})})
        # The row that trained, also when ``source`` is another row scored from that training.
        return self.finished(spec, result, [], reused_from=trainer_key(source))

    def pruned(self, spec: TrialSpec, records: Sequence[Mapping[str, Any]], node: str | None = None) -> None:
        """An early-stopped search trial: a ``pruned`` row without test metrics, and its curve.

        Its row and curve let a resumed search count it and TPE learn from it.
        """
        last = records[-1].get(VAL_METRIC) if records else None
        reason = f"stopped early by ASHA after {len(records)} epoch(s)" + (
            f", {VAL_METRIC} {last:.3f}" if isinstance(last, float) else "")
        self.finished(spec, TrialResult(Status.PRUNED, epochs=len(records), error=reason), records, node=node)

    def _line(self, spec: TrialSpec, row: Mapping[str, Any]) -> None:
        metrics = "  ".join(f"{short} {_pct(row[name])}" for name, short in SUMMARY_METRICS)
        seconds = _seconds(row)
        text = f"{row['status']:<8} {spec.label}  {metrics}  {seconds:.1f} s"
        if row.get("reused_from"):
            text += f"  (the training of {row['reused_from']})"
        if row["status"] != Status.OK and row.get("error"):
            text += f"\n         {str(row['error']).strip().splitlines()[-1][:200]}"
        self._say(text)

    def _say(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.write(text, sys.stdout)
        else:
            print(text, flush=True)


def _pct(value: float) -> str:
    return "   —  " if value is None or math.isnan(value) else f"{100 * value:5.1f}%"


def _seconds(row: Mapping[str, Any]) -> float:
    total = 0.0
    for name in ("train_seconds", "eval_seconds"):
        value = row.get(name)
        if value is not None and not math.isnan(value):
            total += value
    return total


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table: value, category, seed, the four metrics, seconds, status."""
    header = ["value", "category", "seed", *(short for _, short in SUMMARY_METRICS), "seconds", "status"]
    body = [[str(r["value"]), str(r["category"]), str(r["seed"]), *(_pct(r[n]).strip() for n, _ in SUMMARY_METRICS),
             f"{_seconds(r):.1f}", str(r["status"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def resume_text(job: Job, results_dir: str | os.PathLike[str]) -> str:
    """What ``--resume`` says of an axis none of whose planned rows counts as done: that
    nothing is recorded, or why the rows that are do not count (they run again)."""
    where = f"{job.space.paper}/{job.axis.name}"
    rows = _recorded_rows(job, results_dir)
    if not rows:
        return f"--resume: nothing of {where} is recorded in {results_dir} yet; running all of it"
    from kdsearch.reuse import trained

    failed = sum(r["status"] == Status.FAILED for r in rows)
    lost = sum(r["status"] != Status.FAILED and not trained(r) for r in rows)
    why = [f"{failed} failed (run again)"] if failed else []
    if lost:
        why.append(f"{lost} named a training whose row was deleted (trained again, or re-pointed at a row that "
                   f"trained it)")
    other = len(rows) - failed - lost
    if other:
        why.append(f"{other} computed otherwise than this run plans (e.g. another precision)")
    return (f"--resume: none of the {len(rows)} recorded row(s) of {where} in {results_dir} counts as done: "
            f"{'; '.join(why)}; running all of it")


def summary_rows(job: Job, results_dir: Path, writer: ResultWriter) -> list[dict[str, Any]]:
    """Rows to summarise: for a grid every planned cell found in the results, else this run's."""
    if not job.is_grid:
        return sorted(writer.rows, key=lambda r: (r["category"], r["seed"], r["value"]))
    order = {label: i for i, label in enumerate(job.axis.rows)}
    rows = _recorded_rows(job, results_dir)
    return sorted(rows, key=lambda r: (order.get(r["value"], len(order)), r["category"], r["seed"]))


def _recorded_rows(job: Job, results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The axis's recorded rows that the job plans (every row of a search, which plans no keys)."""
    frame = results_lib.read_results(results_dir, job.space.paper, job.axis.name)
    keys = set(job.planned_keys)
    return [r for r in frame.to_dict("records") if not keys or r["trial_key"] in keys]
