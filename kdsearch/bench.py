"""``python -m kdsearch.bench``: training throughput against the networks' bare compute.

For each method, on one device in one run:

* ``pipeline``: the real training path — uint8 images on the device, seeded batches
  made ahead by a background thread as in training (``prefetch``), on-device
  normalisation, synthetic anomalies when the method needs them (NSA on parallel CPU
  threads), and the training loop's own step: forward under autocast, divergence check,
  logged values, backward and optimiser step (bf16 and channels-last on CUDA);
* ``bare``: the same networks and step on tensors prepared in advance (no batching, no
  synthesis) — what the hardware can do with these models;

each the median of ``--repeats`` runs of up to ``--steps`` steps or ``--seconds``, with
the spread, and their ratio (1.0 = the pipeline costs nothing), plus the method's
synthesis alone. With ``--cache``, also the pipeline with the teacher's features of the
clean images served from the teacher cache (:mod:`kdsearch.teacher_cache`), filled by one
pass first as a first epoch would, and its ratio to the uncached bare step (above 1: the
cache saves more than the pipeline costs). It also times DRAEM, FAS and NSA alone at 256² and the metrics on a
whole category (120 maps of 256², both AU-PRO protocols). Weights are random: speed does
not depend on them, and no run needs a download.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdsearch.batches import prefetched
from kdsearch.errors import CliParser, UserError, run_cli
from kdsearch.loop import PhaseRunner
from kdsearch.methods import AnomalyMethod, Batch, get_method_class, list_methods
from kdsearch.metrics import AU_PRO_PROTOCOLS, all_metrics, au_pro
from kdsearch.numerics import Numerics, device_name
from kdsearch.runtime import build_batches, build_method, build_numerics, prefetch_depth, resolve_device
from kdsearch.synthesis import AnomalySynthesizer, SynthesisConfig
from kdsearch.teacher_cache import build_teacher_cache, bytes_per_image
from kdsearch.trial import Trial
from kdsearch.settings import single_trial


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(batches: Iterable[Batch], prefetch: int = 0, device: torch.device | None = None) -> Iterator[Batch]:
    """Epoch after epoch of ``batches``, each made ahead as in training when ``prefetch`` > 0."""
    while True:
        yield from prefetched(batches, prefetch, device)


def _train_steps(runner: PhaseRunner, batches: Iterator[Batch], max_steps: int, max_seconds: float) -> float:
    """Images/s of the training loop's step (its divergence check and logged values included)
    on ``batches`` until ``max_steps`` or ``max_seconds``."""
    device = runner.numerics.device
    _sync(device)
    started = time.perf_counter()
    images = steps = 0
    while steps < max_steps and (steps < 2 or time.perf_counter() - started < max_seconds):
        batch = next(batches)
        runner.train_step(batch, "bench", steps + 1)
        images += len(batch["image"])
        steps += 1
        if steps == max_steps or steps % 4 == 0:
            _sync(device)
    _sync(device)
    return images / (time.perf_counter() - started)


def _repeated(measure: Callable[[], float], repeats: int) -> dict[str, float]:
    """Median and spread (min, max) of ``repeats`` measurements."""
    values = [measure() for _ in range(repeats)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass(frozen=True)
class BenchBudget:
    """How long each measurement runs: a repeat stops at ``steps`` or ``seconds``, whichever first."""

    steps: int = 20
    seconds: float = 10.0
    repeats: int = 3
    warmup: int = 2


def bench_method(name: str, profile: str, device: torch.device, batch_size: int | None,
                 budget: BenchBudget = BenchBudget(), cache: bool = False) -> dict[str, Any]:
    """Pipeline and bare throughput of one method at its profile's image size; with
    ``cache``, the pipeline with the teacher cache too (methods it applies to)."""
    # Speed only: random weights, so the paper profile needs no weight download.
    trial = single_trial(name, profile, {"pretrained": "none", **({"batch_size": batch_size} if batch_size else {})})
    train_cfg = trial.train
    size, batch_size = train_cfg.image_size, train_cfg.batch_size
    numerics = build_numerics(train_cfg, device)
    method = build_method(trial, numerics)
    # The main phase: the step every batch takes (DMDD's head trains on a pass of its own).
    runner = PhaseRunner(method.training_phases(train_cfg.epochs)[0], numerics, compile_step=train_cfg.compile)
    runner.start_pass(method)
    # Enough distinct images for one repeat at most; epochs reshuffle and re-synthesise.
    count = batch_size * (min(budget.steps, 32) + 1)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, device=device)
    # One batch source (per-category preparation such as GrabCut runs once): the bare run
    # replays one epoch of its tensors made before timing, the pipeline run draws new epochs.
    batches = build_batches(trial, images, numerics, trial.synthesis)
    synthesizer = batches.anomalies
    prepared = list(batches)
    pipeline_source, bare_source = _endless(batches, prefetch_depth(train_cfg, device), device), _endless(prepared)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for source in (pipeline_source, bare_source):
        _train_steps(runner, source, budget.warmup, float("inf"))
    pipeline = _repeated(lambda: _train_steps(runner, pipeline_source, budget.steps, budget.seconds), budget.repeats)
    bare = _repeated(lambda: _train_steps(runner, bare_source, budget.steps, budget.seconds), budget.repeats)
    row: dict[str, Any] = {
        "method": name, "profile": profile, "device": device_name(device), "image_size": size,
        "batch_size": batch_size, "precision": "bf16" if numerics.autocast_dtype is not None else "fp32",
        "synthesis": _synthesis_label(synthesizer.config if synthesizer is not None else None),
        "pipeline_images_per_s": pipeline["median"],
        "pipeline_spread": [pipeline["min"], pipeline["max"]], "bare_images_per_s": bare["median"],
        "bare_spread": [bare["min"], bare["max"]], "ratio": pipeline["median"] / bare["median"],
    }
    if cache:
        row.update(_cached_pipeline(trial, method, numerics, runner, images, budget, bare["median"]))
    if synthesizer is not None:
        row["synthesis_images_per_s"] = _repeated(
            lambda: _synthesis_rate(synthesizer, images, batch_size, budget), budget.repeats)["median"]
    if device.type == "cuda":
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def _cached_pipeline(trial: Trial, method: AnomalyMethod, numerics: Numerics, runner: PhaseRunner,
                     images: torch.Tensor, budget: BenchBudget, bare: float) -> dict[str, Any]:
    """The pipeline's images/s with the teacher cache, after one pass has filled it, and its
    ratio to the uncached ``bare`` images/s; nothing where the cache does not apply."""
    if "teacher_cache" in trial.inert_settings:
        return {}
    trial = dataclasses.replace(trial, train=dataclasses.replace(trial.train, teacher_cache="on", compile=False))
    cache = build_teacher_cache(trial, method, numerics, images)
    if cache is None:
        return {"cached_images_per_s": None}
    cached = PhaseRunner(runner.phase, numerics, teacher_cache=cache)
    cached.start_pass(method)
    batches = build_batches(trial, images, numerics, trial.synthesis, with_index=True)
    for batch in batches:  # the first epoch's fill, without the training steps
        with numerics.autocast():  # as the step runs it (the batch is made outside)
            cache.attach(batch)
    if cache.split_exact is False:  # DMDD's split calls differ from its joint call here: off
        return {"cached_images_per_s": None, "cache_off": "inexact split"}
    source = _endless(batches, prefetch_depth(trial.train, numerics.device), numerics.device)
    _train_steps(cached, source, budget.warmup, float("inf"))
    hits, misses = cache.hits, cache.misses
    timing = _repeated(lambda: _train_steps(cached, source, budget.steps, budget.seconds), budget.repeats)
    return {"cached_images_per_s": timing["median"], "cached_spread": [timing["min"], timing["max"]],
            "cached_ratio": timing["median"] / bare,
            # The timed steps' images the cache served, and those it had to compute (none once filled).
            "cache_hits": cache.hits - hits, "cache_misses": cache.misses - misses,
            "cache_mb_per_image": bytes_per_image(cache.teacher, trial.train.image_size, numerics.precision) / 1e6}


def _synthesis_label(spec: SynthesisConfig | None) -> str:
    if spec is None:
        return "none"
    if spec.kind == "nsa" and spec.nsa_mode == "swap":
        return "nsa_swap"
    return "fas" if spec.kind == "draem" and spec.foreground == "grabcut" else spec.kind


def _synthesis_rates(synthesizer: AnomalySynthesizer, images: torch.Tensor, batch_size: int,
                     budget: BenchBudget) -> tuple[float, float]:
    """One synthesizer alone on ``images`` (uint8, on the device), per batch of ``batch_size``:
    images per second of wall time, and per second of this process's CPU time."""
    generator = torch.Generator().manual_seed(0)
    _sync(images.device)
    started, cpu_started = time.perf_counter(), time.process_time()
    done = steps = 0
    while steps < budget.steps and (steps < 2 or time.perf_counter() - started < budget.seconds):
        start = (steps * batch_size) % max(1, len(images) - batch_size + 1)
        indices = torch.arange(start, start + batch_size)
        synthesizer(images[indices].float().div_(255.0), generator, indices=indices)
        done += batch_size
        steps += 1
    _sync(images.device)
    return done / (time.perf_counter() - started), done / max(time.process_time() - cpu_started, 1e-9)


def _synthesis_rate(synthesizer: AnomalySynthesizer, images: torch.Tensor, batch_size: int,
                    budget: BenchBudget) -> float:
    """Images/s (wall time) of one synthesizer alone: :func:`_synthesis_rates`."""
    return _synthesis_rates(synthesizer, images, batch_size, budget)[0]


#: What each method's synthesis is, at 256² (the papers' size): DRAEM (ADPS), FAS = DRAEM
#: inside a GrabCut foreground (DMDD), and MRKD's two readings of NSA: the text's Poisson
#: blends (by OpenCV per image, and batched in torch on the device, CUDA's default) and the
#: authors' code's swap of a patch within the image (``nsa_swap``, a ``paper`` run's, here
#: with bottle's widths and patch count). GrabCut runs once per category.
SYNTHESIS_BENCH = {"draem": SynthesisConfig(kind="draem"), "fas": SynthesisConfig(kind="draem", foreground="grabcut"),
                   "nsa": SynthesisConfig(kind="nsa", nsa_blend="opencv"),
                   "nsa_torch": SynthesisConfig(kind="nsa", nsa_blend="torch"),
                   "nsa_swap": SynthesisConfig(kind="nsa", nsa_mode="swap", nsa_num_patches=(1, 3))}


def bench_synthesis(device: torch.device, size: int = 256, batch_size: int = 16,
                    budget: BenchBudget = BenchBudget()) -> dict[str, Any]:
    """Synthesis-only images/s of DRAEM, FAS and NSA at ``size``² on ``device`` (median of repeats)."""
    generator = torch.Generator().manual_seed(0)
    count = batch_size * 4
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator).to(device)
    out: dict[str, Any] = {"device": device_name(device), "image_size": size, "batch_size": batch_size}
    for label, config in SYNTHESIS_BENCH.items():
        synthesizer = AnomalySynthesizer(config)
        prepared = time.perf_counter()
        synthesizer.prepare(images)
        if config.foreground == "grabcut":
            out["grabcut_images_per_s"] = count / (time.perf_counter() - prepared)
        _synthesis_rate(synthesizer, images, batch_size, BenchBudget(steps=1, repeats=1))
        timing = _repeated(lambda s=synthesizer: _synthesis_rate(s, images, batch_size, budget), budget.repeats)
        out[f"{label}_images_per_s"] = timing["median"]
        out[f"{label}_spread"] = [timing["min"], timing["max"]]
    return out


def synthesis_placement(config: SynthesisConfig | None) -> str:
    """Where a synthesis runs during a CUDA training: ``host`` (per image on a CPU core: NSA's
    swap, and NSA's OpenCV blends), ``device`` (batched torch on the GPU: DRAEM, FAS and NSA's
    torch blends, whose patch drawing stays on the host) or ``none``."""
    if config is None:
        return "none"
    if config.kind == "nsa" and (config.nsa_mode == "swap" or config.nsa_blend == "opencv"):
        return "host"
    return "device"


def _object_images(count: int, size: int) -> torch.Tensor:
    """(count, 3, size, size) uint8 renders of the synthetic ``pill`` (an object on a plain
    background), so foreground masks and NSA's object tests meet what a category's do."""
    from kdsearch.data.synthetic import render_sample

    frames = [render_sample("pill", seed)[0] for seed in range(count)]
    images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                 align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return images


def bench_paper_synthesis_per_core(methods: Sequence[str], budget: BenchBudget = BenchBudget(),
                                   count: int = 32) -> dict[str, Any]:
    """Each method's ``paper``-profile synthesis on one CPU thread (torch and OpenCV held to
    one thread), at the profile's size and batch, on renders of an object category with the
    profile's first category's settings: images per second of this process's CPU time (one
    core's rate, which other processes on the machine barely change) and of wall time. The
    cost model's GPU estimate takes the CPU-time rate as a host core's (:mod:`kdsearch.cost`)."""
    import cv2


    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out: dict[str, Any] = {"device": device_name(torch.device("cpu")), "threads": 1}
    try:
        for name in methods:
            trial = single_trial(name, "paper", {"pretrained": "none"})
            spec = trial.synthesis
            row: dict[str, Any] = {"synthesis": _synthesis_label(spec), "on_cuda": synthesis_placement(spec),
                                   "category": trial.train.category}
            if spec is not None:
                synthesizer = AnomalySynthesizer(spec.for_category(trial.category_kind))
                images = _object_images(count, trial.train.image_size)
                synthesizer.prepare(images)
                batch = min(trial.train.batch_size, count)
                _synthesis_rate(synthesizer, images, batch, BenchBudget(steps=1, repeats=1))
                rates = [_synthesis_rates(synthesizer, images, batch, budget) for _ in range(budget.repeats)]
                cpu = [c for _, c in rates]
                row.update(images_per_cpu_s=statistics.median(cpu), cpu_spread=[min(cpu), max(cpu)],
                           images_per_s=statistics.median(w for w, _ in rates),
                           image_size=trial.train.image_size, batch_size=batch)
            out[name] = row
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    return out


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
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    for protocol in AU_PRO_PROTOCOLS:
        au_pro(maps, masks, protocol=protocol)
    return {"maps": num_maps, "size": size, "seconds": seconds, "au_pro_seconds": time.perf_counter() - started,
            "au_pro": values["au_pro"]}


def _cached_columns(row: dict[str, Any], asked: bool) -> str:
    if not asked:
        return ""
    if row.get("cached_images_per_s") is None:
        why = "n/a" if "cached_images_per_s" not in row else row.get("cache_off", "too large")
        return f" {why:>20} {'—':>6}"
    low, high = row["cached_spread"]
    return f" {row['cached_images_per_s']:>8.1f} [{low:.1f}-{high:.1f}] {row['cached_ratio']:>6.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m kdsearch.bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all", help="comma-separated methods or 'all' (default)")
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "paper"), help="image size and backbone (default quick)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: the profile's)")
    parser.add_argument("--steps", type=int, default=BenchBudget.steps,
                        help=f"most timed steps per repeat (default {BenchBudget.steps})")
    parser.add_argument("--seconds", type=float, default=BenchBudget.seconds,
                        help=f"most seconds per repeat, at least 2 steps (default {BenchBudget.seconds:g})")
    parser.add_argument("--repeats", type=int, default=BenchBudget.repeats,
                        help=f"repeats per measurement; the median is reported (default {BenchBudget.repeats})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to time: auto = the GPU when there is one, else the CPU (default auto)")
    parser.add_argument("--no-synthesis", action="store_true", help="skip the synthesis-only timings at 256²")
    parser.add_argument("--cache", action="store_true",
                        help="also time the pipeline with the teacher cache (teacher_cache) serving the clean "
                             "images' teacher features, for the methods it applies to")
    parser.add_argument("--save", action="store_true",
                        help="keep the pipeline images/s per method for this device and profile, so that "
                             "python -m kdsearch.ablate --dry-run estimates sweep costs from them")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args(argv)
    names = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        get_method_class(name)
    if args.steps < 2 or args.repeats < 1 or args.seconds <= 0:
        raise UserError("--steps must be >= 2, --repeats >= 1 and --seconds > 0")
    budget = BenchBudget(steps=args.steps, seconds=args.seconds, repeats=args.repeats)
    device = resolve_device(args.device)
    if not args.json:
        print(f"{device_name(device)} · profile {args.profile} · median of {budget.repeats} repeats of "
              f"up to {budget.steps} steps or {budget.seconds:g} s, after {budget.warmup} warm-up steps")
        print(f"{'method':<8} {'size':>5} {'batch':>5} {'synthesis':>9} {'pipeline img/s':>20} "
              f"{'bare img/s':>20} {'ratio':>6} {'synth img/s':>12}"
              + (f" {'cached img/s':>20} {'ratio':>6}" if args.cache else ""))
    rows = []
    for name in names:
        row = bench_method(name, args.profile, device, args.batch_size, budget, cache=args.cache)
        rows.append(row)
        if args.json:
            print(json.dumps(row))
        else:
            pipe, bare = row["pipeline_spread"], row["bare_spread"]
            synth = row.get("synthesis_images_per_s")
            print(f"{name:<8} {row['image_size']:>5} {row['batch_size']:>5} {row['synthesis']:>9} "
                  f"{row['pipeline_images_per_s']:>8.1f} [{pipe[0]:.1f}-{pipe[1]:.1f}] "
                  f"{row['bare_images_per_s']:>8.1f} [{bare[0]:.1f}-{bare[1]:.1f}] {row['ratio']:>6.2f} "
                  f"{'—' if synth is None else f'{synth:.1f}':>12}" + _cached_columns(row, args.cache))
        sys.stdout.flush()
    if args.save:
        from kdsearch.cost import save_throughput

        where = save_throughput(rows)
        print(f"saved {len(rows)} throughput figure(s) for {device_name(device)} · {args.profile} to {where}",
              file=sys.stderr)
    if not args.no_synthesis:
        synthesis = bench_synthesis(device, budget=budget)
        if args.json:
            print(json.dumps({"synthesis": synthesis}))
        else:
            rates = ", ".join(f"{k} {synthesis[f'{k}_images_per_s']:.1f}" for k in SYNTHESIS_BENCH)
            print(f"synthesis alone at 256², images/s: {rates} (GrabCut, once per category: "
                  f"{synthesis['grabcut_images_per_s']:.1f})")
    if not args.no_synthesis:
        per_core = bench_paper_synthesis_per_core(names, budget)
        if args.json:
            print(json.dumps({"synthesis_per_core": per_core}))
        else:
            parts = [f"{name} {row['synthesis']} ({row['on_cuda']} on CUDA) "
                     + (f"{row['images_per_cpu_s']:.1f} [{row['cpu_spread'][0]:.1f}-{row['cpu_spread'][1]:.1f}]"
                        if "images_per_cpu_s" in row else "—")
                     for name, row in per_core.items() if name in names]
            print(f"paper-profile synthesis on one CPU thread, images per CPU-second: {', '.join(parts)}")
    metrics = bench_metrics()
    if args.json:
        print(json.dumps({"metrics": metrics}))
    else:
        print(f"metrics: all five on {metrics['maps']} maps of {metrics['size']}² in {metrics['seconds']:.2f} s; "
              f"AU-PRO alone, both protocols: {metrics['au_pro_seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
