"""``python -m kdsearch.bench``: training throughput against the networks' bare compute.

For each method, on one device in one run:

* ``pipeline``: the real training path — uint8 images on the device, seeded batches,
  on-device normalisation, synthetic anomalies when the method needs them, the training
  step, backward and optimiser step (bf16 autocast and channels-last on CUDA);
* ``bare``: the same networks and step on tensors prepared in advance (no batching, no
  synthesis) — what the hardware can do with these models;

and prints images/s for both and their ratio (1.0 = the pipeline costs nothing). It also
times the metrics on a whole category (120 maps of 256², both AU-PRO protocols).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from kdsearch.batches import TrainBatches
from kdsearch.errors import UserError, run_cli
from kdsearch.evaluate import autocast_context
from kdsearch.methods import build_config, get_method_class, list_methods
from kdsearch.metrics import all_metrics
from kdsearch.synthesis import AnomalySynthesizer
from kdsearch.train import resolve_device, resolve_trial


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(method, optimizer, batches, device: torch.device, warmup: int) -> float:
    """Images per second over ``batches`` after ``warmup`` untimed steps."""
    method.train()
    images = 0
    started = None
    for step, batch in enumerate(batches):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        with autocast_context(device):
            loss = method.training_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if started is not None:
            images += len(batch["image"])
    _sync(device)
    if started is None or images == 0:
        raise UserError("too few steps to time; raise --steps")
    return images / (time.perf_counter() - started)


def bench_method(name: str, profile: str, device: torch.device, batch_size: int | None, steps: int, warmup: int = 1) -> dict:
    """Pipeline and bare throughput of one method at its profile's image size."""
    train_cfg, overrides = resolve_trial(name, profile, {})
    size = train_cfg.image_size
    batch_size = batch_size or train_cfg.batch_size
    torch.manual_seed(0)
    method = get_method_class(name)(build_config(name, overrides), size).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer, _ = method.configure_optimizer(train_cfg.epochs)
    count = batch_size * (steps + warmup)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, device=device)
    spec = method.synthesis()
    synthesizer = AnomalySynthesizer(spec) if spec is not None else None
    # One batch source (per-category preparation such as GrabCut runs once): the bare run
    # replays one epoch of its tensors made before timing, the pipeline run draws a new epoch.
    batches = TrainBatches(images, batch_size, 0, synthesizer, channels_last=channels_last)
    prepared = list(batches)
    pipeline = _timed_steps(method, optimizer, batches, device, warmup)
    bare = _timed_steps(method, optimizer, prepared, device, warmup)
    return {"method": name, "image_size": size, "batch_size": batch_size, "synthesis": spec.kind if spec else "none",
            "pipeline_images_per_s": pipeline, "bare_images_per_s": bare, "ratio": pipeline / bare}


def bench_metrics(num_maps: int = 120, size: int = 256, seed: int = 0) -> dict:
    """Seconds for all metrics of one category-sized test set."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_maps, size, size), dtype=bool)
    longest = max(2, size // 6)
    for i in range(num_maps // 2):
        y, x = rng.integers(0, size - longest, 2)
        masks[i, y : y + rng.integers(1, longest), x : x + rng.integers(1, longest)] = True
    maps = rng.random((num_maps, size, size), dtype=np.float32) + masks * 0.5
    labels = masks.reshape(num_maps, -1).any(1).astype(int)
    started = time.perf_counter()
    values = all_metrics(maps.reshape(num_maps, -1).max(1), labels, maps, masks)
    return {"maps": num_maps, "size": size, "seconds": time.perf_counter() - started, "au_pro": values["au_pro"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdsearch.bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all", help="comma-separated methods or 'all' (default)")
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "paper"), help="image size and backbone (default quick)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the profile's)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args(argv)
    names = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        get_method_class(name)
    if args.steps < 1:
        raise UserError("--steps must be >= 1")
    device = resolve_device(args.device)
    if not args.json:
        print(f"device {device} · profile {args.profile} · {args.steps} timed steps after 1 warm-up")
        print(f"{'method':<8} {'size':>5} {'batch':>5} {'synthesis':>9} {'pipeline img/s':>15} {'bare img/s':>11} {'ratio':>6}")
    for name in names:
        row = bench_method(name, args.profile, device, args.batch_size, args.steps)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{name:<8} {row['image_size']:>5} {row['batch_size']:>5} {row['synthesis']:>9} "
                  f"{row['pipeline_images_per_s']:>15.2f} {row['bare_images_per_s']:>11.2f} {row['ratio']:>6.2f}")
        sys.stdout.flush()
    metrics = bench_metrics()
    if args.json:
        print(json.dumps({"metrics": metrics}))
    else:
        print(f"metrics: all five on {metrics['maps']} maps of {metrics['size']}² in {metrics['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
