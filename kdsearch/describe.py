"""Model complexity of any registered method: ``python -m kdsearch.describe --method dskd``.

Prints the parameter count, the trainable parameter count and the forward FLOPs of
``anomaly_map`` on one image at the profile's image size (counted by
``torch.utils.flop_counter.FlopCounterMode``: matrix products and convolutions, one
multiply-add = 2 FLOPs; element-wise ops such as BN, ReLU or the Gaussian blur are not
counted). Where a paper prints its own complexity, those numbers are shown beside.
Weights do not change the counts, so the teacher is built with ``pretrained=none``
unless ``--set pretrained=...`` says otherwise (nothing is downloaded). Below them it
prints the method's settings as the profile resolves them: the paper's defaults live in
the method's config dataclass, and this is where a user reads them.
"""
from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdsearch.config import parse_assignments, to_dict, yaml_load
from kdsearch.errors import CliParser, run_cli
from kdsearch.methods import AnomalyMethod, create_method, list_methods
from kdsearch.spaces import PROFILES, space_for_method
from kdsearch.settings import explain
from kdsearch.settings import single_trial


@dataclass(frozen=True)
class PaperComplexity:
    """Complexity a paper reports for its method (``None`` where it reports none)."""

    source: str
    params_m: float | None = None
    gflops: float | None = None
    inference_s: float | None = None
    memory_mb: float | None = None


#: The package whose ``reference/<paper>.yaml`` files hold the papers' printed numbers.
REFERENCE_PACKAGE = "kdsearch.analysis"
_UNITS = {"params_millions": "params_m", "gflops": "gflops", "inference_seconds": "inference_s", "memory_mb": "memory_mb"}


@functools.lru_cache(maxsize=None)
def paper_complexity(method: str) -> PaperComplexity | None:
    """The complexity ``method``'s paper prints for it: the ``complexity:`` table of the
    paper's reference file, its row named as the paper names its method (``main_results``'
    label); None when the paper prints none (or no reference file is installed)."""
    try:
        path = importlib.resources.files(REFERENCE_PACKAGE).joinpath("reference", f"{method}.yaml")
        raw = yaml_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ModuleNotFoundError:
        raw = None
    table = (raw or {}).get("complexity")
    if not table:
        return None
    row = table["rows"].get((raw.get("main_results") or {}).get("label", method.upper()))
    if row is None:
        return None
    return PaperComplexity(source=f"{method.upper()} {table['source']}",
                           **{_UNITS[name]: float(value) for name, value in row.items()})


@dataclass(frozen=True)
class Complexity:
    """Measured size and cost of one method at one image size."""

    method: str
    profile: str | None
    image_size: int
    parameters: int
    trainable_parameters: int
    forward_flops: int
    settings: dict[str, Any] = field(default_factory=dict)
    #: every setting (training, method, synthesis) as ``name = value  ← layer`` (:func:`kdsearch.settings.explain`)
    explained: tuple[str, ...] = ()

    @property
    def forward_gmacs(self) -> float:
        """Multiply-accumulates in billions (FLOPs / 2), the unit many papers call "FLOPs"."""
        return self.forward_flops / 2e9


def count_parameters(method: AnomalyMethod) -> tuple[int, int]:
    """(all parameters, trainable parameters) of a method, each parameter counted once."""
    params = list(method.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def anomaly_map_flops(method: AnomalyMethod, image_size: int) -> int:
    """FLOPs of one ``anomaly_map`` call on a single (1, 3, S, S) image, in eval mode."""
    was_training = method.training
    method.eval()
    try:
        images = torch.zeros(1, 3, image_size, image_size)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            method.anomaly_map(images)
        return int(counter.get_total_flops())
    finally:
        method.train(was_training)


def describe(method: str, profile: str | None = "paper", overrides: dict | None = None) -> Complexity:
    """Build ``method`` as ``profile`` configures it (plus ``overrides``) and measure it."""
    overrides = dict(overrides or {})
    overrides.setdefault("pretrained", "none")
    if space_for_method(method) is None:
        profile = None
    trial = single_trial(method, profile, overrides)
    size = trial.train.image_size
    model = create_method(method, size, trial.method_config)
    total, trainable = count_parameters(model)
    flops = anomaly_map_flops(model, size)
    return Complexity(method, profile, size, total, trainable, flops, to_dict(trial.method_config), tuple(explain(trial)))


def _report(result: Complexity) -> dict:
    out = {**asdict(result), "forward_gflops": result.forward_flops / 1e9, "forward_gmacs": result.forward_gmacs}
    paper = paper_complexity(result.method)
    if paper is not None:
        out["paper"] = asdict(paper)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="python -m kdsearch.describe",
        description="Parameter count, trainable parameter count and anomaly-map FLOPs of a method, "
                    "with the paper's own complexity numbers where it prints them.",
        epilog="Example: python -m kdsearch.describe --method dskd --profile paper",
    )
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(list_methods())}")
    parser.add_argument("--profile", choices=PROFILES, default="quick",
                        help="configuration and image size (default quick, as every command; paper: the paper's own, "
                             "which its printed numbers are for)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a method or training field, e.g. --set image_size=128 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = describe(args.method, args.profile, parse_assignments(args.assignments))
    report = _report(result)
    if args.json:
        print(json.dumps(report))
        return 0
    where = f"profile {result.profile}, " if result.profile else ""
    print(f"{result.method} ({where}{result.image_size}×{result.image_size}, one image)")
    paper = paper_complexity(result.method)
    rows = [
        ("parameters", f"{result.parameters / 1e6:.2f} M", f"{paper.params_m} M" if paper and paper.params_m else None),
        ("trainable parameters", f"{result.trainable_parameters / 1e6:.2f} M", None),
        ("forward FLOPs", f"{report['forward_gflops']:.2f} G", f"{paper.gflops} G" if paper and paper.gflops else None),
        ("forward MACs", f"{result.forward_gmacs:.2f} G", None),
    ]
    header = f"  {'':<22} {'measured':>12}"
    if paper is not None:
        header += f"   {paper.source}"
        if result.profile != "paper":
            header += " (the paper's configuration: compare with --profile paper)"
    print(header)
    for label, measured, printed in rows:
        print(f"  {label:<22} {measured:>12}" + (f"   {printed}" if printed else ""))
    print("settings (each value ← the layer it comes from; later layers win):")
    for line in result.explained:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
