"""Check that a bf16 training's anomaly maps are computed in fp32, for every method.

Each method is built as a ``smoke`` training on the device builds it (random weights, bf16
autocast), then scores a batch under that training's numerics as evaluation does: the
networks must run in bf16 (a convolution's output is bf16) and the map must come out fp32.
One line per method, ``PASS`` or ``FAIL``; exit code 1 when any fails.

Usage: ``python scripts/check_map_precision.py [--device cuda|cpu] [--methods rd4ad,mrkd]``
"""
from __future__ import annotations

import argparse
import sys

import torch

import kdsearch  # noqa: F401  (installs the torchvision shim before timm is imported)
from kdsearch.methods import list_methods
from kdsearch.runtime import build_method, build_numerics, resolve_device
from kdsearch.settings import single_trial


def check(name: str, device: torch.device) -> tuple[bool, str]:
    """(passed, what was seen) for one method."""
    trial = single_trial(name, "smoke", {"pretrained": "none", "precision": "bf16", "device": device.type})
    numerics = build_numerics(trial.train, device)
    method = build_method(trial, numerics)
    method.eval()
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in method.modules() if isinstance(m, torch.nn.Conv2d)]
    size = trial.train.image_size
    images = numerics.format(torch.rand(2, 3, size, size, device=device))
    try:
        with torch.no_grad(), numerics.autocast():
            maps = method.anomaly_map(images)
    finally:
        for hook in hooks:
            hook.remove()
    passed = maps.dtype == torch.float32 and torch.bfloat16 in seen and bool(torch.isfinite(maps).all())
    convs = ", ".join(sorted(str(d).removeprefix("torch.") for d in seen)) or "none"
    return passed, f"autocast {numerics.autocast_dtype}, convolutions in {convs}, map {maps.dtype} {tuple(maps.shape)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--methods", default="all", help="comma-separated methods or 'all' (default)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    names = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    failed = 0
    for name in names:
        try:
            passed, seen = check(name, device)
        except Exception as exc:  # noqa: BLE001  (a failure is reported, and the other methods still run)
            passed, seen = False, f"{type(exc).__name__}: {exc}"
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'} maps in fp32 under bf16: {name} on {device} ({seen})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
