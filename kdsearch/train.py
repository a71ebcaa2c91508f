"""Train one trial in one process and print its metrics: ``python -m kdsearch.train``.

The command line resolves a :class:`~kdsearch.trial.Trial` and hands it to
:func:`kdsearch.loop.fit_and_evaluate`; ``--out`` keeps a complete checkpoint every epoch
(``--resume`` continues from it) and the metrics as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdsearch import data as data_lib
from kdsearch.checkpoint import config_changes, load_checkpoint, save_checkpoint
from kdsearch.config import parse_assignments
from kdsearch.errors import CliParser, UserError, run_cli
from kdsearch.loop import TrialOutcome, config_state, fit_and_evaluate
from kdsearch.methods import list_methods
from kdsearch.spaces import PROFILES
from kdsearch.texture_source import textures_setting, textures_warning
from kdsearch.trial import Trial
from kdsearch.settings import single_trial
from kdsearch.vocabulary import METRIC_LABELS, VAL_METRIC, Status


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="python -m kdsearch.train",
        description="Train one anomaly-detection method on one category, evaluate it on the test split "
                    "once and print image AUROC, pixel AUROC, AU-PRO (both protocols) and pixel AP.",
        epilog="Example: python -m kdsearch.train --method rd4ad --profile quick --json",
    )
    parser.add_argument("--method", default="rd4ad", help=f"one of: {', '.join(list_methods())} (default rd4ad)")
    parser.add_argument("--dataset", choices=data_lib.DATASETS, help="dataset (default: the profile's; synthetic is built in)")
    parser.add_argument("--data-root", help="root folder of a real dataset in its published layout")
    parser.add_argument("--category", help="category to train on (default: the dataset's first)")
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="training budget (default quick)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training, method or synthesis field, e.g. --set lr=0.001 or "
                             "--set synthesis.perlin_threshold=0.3 (repeatable; see docs/DESIGN.md, Settings)")
    parser.add_argument("--epochs", type=int, help="training epochs (overrides the profile)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default auto)")
    parser.add_argument("--pretrained", help="teacher weights: auto (ImageNet via timm), none (random init) or a file path")
    parser.add_argument("--textures", metavar="PATH",
                        help="DTD-style texture folder (e.g. dtd/images) for DRAEM anomalies (adps, dmdd); default: "
                             "the built-in procedural bank")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--out", type=Path, help="folder for checkpoint.pt (every epoch) and metrics.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>/checkpoint.pt with the settings it was trained with: a command "
                             "that sets anything else is refused, except a larger --epochs (training goes on; the "
                             "learning-rate milestones stay those of the first run), --data-root and the speed "
                             "settings cache_dir, prefetch and teacher_cache")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on the last stdout line")
    return parser


def _command_line(args: argparse.Namespace) -> dict[str, Any]:
    """The settings this command's own flags give (``--dataset``, ``--epochs``, ...)."""
    flags = {key: getattr(args, key) for key in ("dataset", "data_root", "category", "epochs", "seed", "device",
                                                 "pretrained") if getattr(args, key) is not None}
    return {**flags, **({"compile": True} if args.compile else {})}


def _print_report(trial: Trial, outcome: TrialOutcome) -> None:
    train_cfg = trial.train
    print(f"{train_cfg.method} on {train_cfg.dataset}/{train_cfg.category} · {outcome.epochs} epochs · "
          f"{outcome.device} ({outcome.device_model or 'unknown model'}) · {outcome.precision or 'unknown precision'} "
          f"{outcome.memory_format or ''} · torch {outcome.torch_version or '?'} · status {outcome.status}")
    for key, label in METRIC_LABELS.items():
        value = outcome.metrics.get(key)
        print(f"  {label:<22} {'—' if value is None or math.isnan(value) else f'{100 * value:6.2f} %'}")
    print(f"  {'train':<22} {outcome.train_seconds:6.1f} s ({outcome.train_images_per_second:.1f} images/s)")
    print(f"  {'evaluate':<22} {outcome.eval_seconds:6.1f} s · peak memory {outcome.peak_memory_mb:.0f} MB")
    if outcome.error:
        print(f"  error: {outcome.error}")


def _refuse_changed_settings(state: dict[str, Any], trial: Trial, checkpoint_path: Path) -> None:
    changes = config_changes(state, config_state(trial))
    if changes:
        raise UserError(f"--resume: this command differs from {checkpoint_path} in what it trains ("
                        f"{'; '.join(changes)}); resume with the checkpoint's settings (only --epochs may be "
                        f"raised), or give another --out to start a new run")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and args.out is None:
        raise UserError("--resume needs --out DIR (the folder holding checkpoint.pt)")
    trial = single_trial(args.method, args.profile, parse_assignments(args.assignments),
                         textures=textures_setting(args.method, args.textures), command_line=_command_line(args))
    warning = textures_warning(trial, args.profile)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    checkpoint_path = args.out / "checkpoint.pt" if args.out else None
    # Read before anything is created: a --resume into a new folder is refused and leaves nothing.
    initial_state = load_checkpoint(checkpoint_path) if args.resume else None
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output folder {args.out}: {exc.strerror}; choose a writable --out") from exc
    if initial_state is not None:
        _refuse_changed_settings(initial_state, trial, checkpoint_path)

    def on_epoch(record: dict[str, Any], state: Callable[[], dict[str, Any]]) -> None:
        if checkpoint_path is not None:
            save_checkpoint(state(), checkpoint_path)
        val = f"  {VAL_METRIC} {record[VAL_METRIC]:.4f}" if VAL_METRIC in record else ""
        print(f"epoch {record['epoch']:>3}: loss {record['loss']:.4f}{val}  {record['seconds']:.1f} s", file=sys.stderr)

    outcome = fit_and_evaluate(trial, initial_state=initial_state, on_epoch=on_epoch, progress=sys.stderr.isatty())
    summary = {"method": trial.train.method, "dataset": trial.train.dataset, "category": trial.train.category,
               "profile": args.profile, **outcome.summary()}
    if args.out is not None:
        (args.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary))
    else:
        _print_report(trial, outcome)
    return 0 if outcome.status == Status.OK else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
