"""Weights & Biases tracking of an ablation: one W&B run per trial, grouped by paper/axis.

The only module that imports ``wandb``. Runs are created in the driver process (the one
that runs ``python -m kdsearch.ablate``), from the results Ray forwards to it, so the
API key never has to reach a Ray worker and never appears in a config, a result or a log
line: this module only asks whether a key is configured, it never reads it.

Every result row has its run, also a row that shares another row's training or is answered
from a training already recorded (its run carries that training's curves and says whose
they are, ``reused_from``). Each run carries the flattened trial config (so W&B's parallel
coordinates, parameter importance and group-by views work), every value the method logs per
epoch (each loss part, e.g. ADPS's ``distill`` and ``focal``, and the validation metrics),
the test metrics in its summary and a few anomaly-map images. The sweep itself (the W&B sweep
config of the axis and the axis's definition: its rows' field values or its distribution) is
each run's ``sweep`` config group and is saved as ``wandb/sweep-<paper>-<axis>.json`` next to
the offline runs, so a dashboard can be built after ``wandb sync``. Online, the axis is also
registered as a W&B sweep and every run is attached to it, while Ray and Optuna stay the
scheduler. Tracking failures never stop a sweep: they are reported once and tracking is
switched off.
"""
from __future__ import annotations

import io
import json
import netrc
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from kdsearch.runlock import remove_folders_of_gone_processes

if TYPE_CHECKING:
    from kdsearch.plan import Job, TrialSpec

#: The W&B modes (``--wandb``), defined here only.
MODES = ("auto", "online", "offline", "disabled")


#: The folder of a sweep driver's W&B temp folders, ``<tmp>/kdsearch-driver-<pid>-*``
#: (see :func:`import_wandb_apart`); the pid says whose it is.
DRIVER_TMP_PREFIX = "kdsearch-driver-"


def import_wandb_apart() -> None:
    """Import W&B with its import-time temp folders inside a folder of this process's own.

    ``import wandb`` makes an empty ``tmp*wandb-media`` and ``tmp*wandb-artifacts`` in the
    system temp folder, which only a normal exit removes: a SIGKILLed driver left them for
    good. Imported here first (timm imports W&B too), they go into
    ``<tmp>/kdsearch-driver-<pid>-*``, which this process removes when it exits and the next
    sweep removes once the process is gone. Does nothing when W&B is already imported or missing.
    """
    import atexit
    import shutil
    import tempfile

    remove_folders_of_gone_processes(tempfile.gettempdir(), DRIVER_TMP_PREFIX)  # those of drivers gone
    if "wandb" in sys.modules:
        return
    try:
        own = tempfile.mkdtemp(prefix=f"{DRIVER_TMP_PREFIX}{os.getpid()}-")
    except OSError:
        return  # an unwritable temp folder: W&B's import meets it as it always did
    atexit.register(shutil.rmtree, own, True)
    before = tempfile.tempdir
    tempfile.tempdir = own
    try:
        import wandb  # noqa: F401
        import wandb.sdk.artifacts.artifact  # noqa: F401 - its _TMP_DIR
        import wandb.sdk.data_types._private  # noqa: F401 - its MEDIA_TMP
    except ImportError:
        pass
    finally:
        tempfile.tempdir = before


def key_configured() -> bool:
    """Whether a W&B API key is configured (environment or ``~/.netrc``), without reading it out."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` → ``online`` with a configured key, else ``offline``; ``WANDB_MODE=disabled`` wins over auto."""
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("disabled", "dryrun", "offline"):
        return "disabled" if env == "disabled" else "offline"
    return "online" if key_configured() else "offline"


def wandb_root(results_dir: str | os.PathLike[str]) -> Path:
    """Where W&B's local files go: ``$WANDB_DIR`` when set (W&B's own convention), else
    ``<results>/_wandb``, next to the rows they mirror."""
    configured = os.environ.get("WANDB_DIR", "").strip()
    return Path(configured).expanduser() if configured else Path(results_dir) / "_wandb"


def sweep_config(name: str, description: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """A W&B sweep config for an axis: a grid over row labels, or the search's distribution."""
    if description["kind"] == "grid":
        return {"name": name, "method": "grid", "metric": {"name": metric, "goal": "maximize"},
                "parameters": {"axis_value": {"values": list(description["values"])}}}
    dist = description["distribution"]
    if dist == "categorical":
        param: dict[str, Any] = {"values": list(description["choices"])}
    elif dist == "loguniform":
        param = {"distribution": "log_uniform_values", "min": description["low"], "max": description["high"]}
    elif dist == "int":
        param = {"distribution": "int_uniform", "min": int(description["low"]), "max": int(description["high"])}
    else:
        param = {"distribution": "uniform", "min": description["low"], "max": description["high"]}
    return {"name": name, "method": "bayes", "metric": {"name": metric, "goal": "maximize"},
            "parameters": {description["param"]: param}}


def sweep_definition(job: Job, metric: str) -> dict[str, Any]:
    """The sweep as W&B and a reader need it: the W&B sweep config of the axis, and the axis as
    its search space defines it (rows and their field values, or the distribution)."""
    axis = job.axis
    definition: dict[str, Any] = {
        "paper": job.space.paper, "method": job.space.method, "axis": axis.name, "table": axis.table,
        "profile": job.profile, "search_space": job.space.path.name, "fixed": dict(axis.fixed),
        "wandb_sweep": sweep_config(job.name, job.search_description(), metric)}
    if axis.is_grid:
        definition["rows"] = {label: dict(fields) for label, fields in axis.rows.items()}
        if axis.former:
            definition["former_labels"] = dict(axis.former)
    else:
        definition["search"] = job.search_description()
    return definition


def run_name(spec: TrialSpec) -> str:
    return f"{spec.axis}={spec.value}·{spec.category}·s{spec.seed}"


def run_config(spec: TrialSpec, reused_from: str | None = None) -> dict[str, Any]:
    """A row's W&B config: its trial's settings and its cell (``reused_from``: whose training it is)."""
    config = {**spec.identity, "paper": spec.paper, "axis": spec.axis, "axis_value": spec.value,
              "dataset": spec.dataset, "category": spec.category, "category_kind": spec.category_kind,
              "seed": spec.seed, "profile": spec.profile, "trial_key": spec.trial_key,
              "training_key": spec.training_key}
    if reused_from:
        config["reused_from"] = reused_from
    return config


class Tracker:
    """W&B runs of one ablation, keyed by ``trial_key``.

    Args:
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        project: W&B project.
        group: run group, ``paper/axis``.
        root: folder for W&B's local files (``<root>/wandb/offline-run-*``).
        sweep: the axis as a W&B sweep config; registered when online.
        definition: the whole sweep (:func:`sweep_definition`): every run's ``sweep`` config
            group, and saved as ``<root>/wandb/sweep-<paper>-<axis>.json``.
    """

    def __init__(self, mode: str, project: str, group: str, root: str | os.PathLike[str],
                 sweep: Mapping[str, Any] | None = None, definition: Mapping[str, Any] | None = None) -> None:
        self.mode = resolve_mode(mode)
        self.project, self.group, self.root = project, group, Path(root)
        self.runs: dict[str, Any] = {}
        self._steps: dict[str, int] = {}  # the last W&B step logged, per run
        self.sweep_id: str | None = None
        self.definition = dict(definition or {})
        self._wandb: Any = None
        if self.mode == "disabled":
            return
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a core dependency
            self._off("wandb is not installed")
            return
        self._wandb = wandb
        self.root.mkdir(parents=True, exist_ok=True)
        if self.definition:
            self._save_definition()
        if self.mode == "online" and sweep is not None:
            try:
                self.sweep_id = wandb.sweep(sweep=dict(sweep), project=project)
            except Exception as exc:  # noqa: BLE001 - a sweep page is a nicety, never a blocker
                print(f"warning: W&B sweep not registered ({type(exc).__name__}); runs are logged without it",
                      file=sys.stderr)

    @property
    def enabled(self) -> bool:
        return self._wandb is not None

    @property
    def definition_path(self) -> Path:
        return self.root / "wandb" / f"sweep-{self.group.replace('/', '-')}.json"

    def _save_definition(self) -> None:
        try:
            self.definition_path.parent.mkdir(parents=True, exist_ok=True)
            self.definition_path.write_text(json.dumps(self.definition, indent=1, ensure_ascii=False, default=str)
                                            + "\n")
        except OSError as exc:
            print(f"warning: the sweep's definition was not saved next to the W&B runs ({exc}); the runs carry "
                  f"it in their 'sweep' config", file=sys.stderr)

    def start_row(self, spec: TrialSpec, reused_from: str | None = None) -> None:
        """Open the run of a row (a second call for the same row does nothing)."""
        tags = (spec.paper, spec.axis, spec.profile) + (("shared training",) if reused_from else ())
        self.start(spec.trial_key, run_name(spec), run_config(spec, reused_from), tags=tags)

    def row(self, spec: TrialSpec, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]] = (),
            *, reused_from: str | None = None, failed: bool = False) -> None:
        """The whole run of a row that trained no model of its own: the curves of the training it
        shares (``records``, may be none), then its own test metrics, then closed."""
        self.start_row(spec, reused_from)
        for record in records:
            self.log(spec.trial_key, record, step=int(record["epoch"]) if "epoch" in record else None)
        self.finish(spec.trial_key, summary, failed=failed)

    def _off(self, why: str) -> None:
        print(f"warning: W&B tracking switched off: {why}", file=sys.stderr)
        self._wandb = None

    def start(self, key: str, name: str, config: Mapping[str, Any], tags: Sequence[str] = ()) -> None:
        """Open the run of one trial (a second call for the same key does nothing)."""
        if not self.enabled or key in self.runs:
            return
        wandb = self._wandb
        settings = {"silent": True, "console": "off", "x_disable_stats": True}
        if self.sweep_id:
            settings["sweep_id"] = self.sweep_id
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.runs[key] = wandb.init(
                    project=self.project, group=self.group, job_type=self.group.split("/")[-1], name=name,
                    config={**config, **({"sweep": self.definition} if self.definition else {})},
                    tags=list(tags), dir=str(self.root), mode=self.mode,
                    reinit="create_new", settings=wandb.Settings(**settings))
        except Exception as exc:  # noqa: BLE001
            self._off(f"{type(exc).__name__}: {exc}")

    def log(self, key: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log one epoch's values; ``step`` is the epoch.

        The epoch is logged as the ``epoch`` field; W&B's step is the epoch while epochs only
        go forward, else the next step: a trial that trains again from an earlier epoch (a
        restart from its checkpoint, or from scratch when that checkpoint is unreadable) logs
        its retrained epochs too, where W&B would drop a step that goes back ("Steps must be
        monotonically increasing") and warn on stderr."""
        run = self.runs.get(key)
        if run is None:
            return
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if step is not None:
            values["epoch"] = step
            step = max(int(step), self._steps.get(key, -1) + 1)
            self._steps[key] = step
        try:
            run.log(values, step=step)
        except Exception as exc:  # noqa: BLE001
            self._off(f"{type(exc).__name__}: {exc}")

    def finish(self, key: str, summary: Mapping[str, Any], images: Sequence[tuple[str, bytes]] = (),
               failed: bool = False) -> None:
        """Write the final metrics into the run's summary, log images and close it."""
        run = self.runs.pop(key, None)
        self._steps.pop(key, None)
        if run is None:
            return
        try:
            for name, value in summary.items():
                run.summary[name] = value
            if images:
                from PIL import Image

                run.log({"anomaly_maps": [self._wandb.Image(Image.open(io.BytesIO(png)), caption=caption)
                                          for caption, png in images]})
            run.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # noqa: BLE001
            self._off(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Close runs left open (trials cut off by an interrupted driver)."""
        for key in list(self.runs):
            self.finish(key, {}, failed=True)


def anomaly_images(spec: TrialSpec, state: dict[str, Any], count: int) -> list[tuple[str, bytes]]:
    """PNG panels (test image | anomaly map | ground truth) of the first anomalous test images,
    mapped on the CPU by the trial's method with the kept ``state``'s weights."""
    import cv2
    import numpy as np
    import torch

    from kdsearch.evaluate import predict
    from kdsearch.loop import load_trial_data
    from kdsearch.runtime import build_method, build_numerics

    cfg = spec.trial.train
    numerics = build_numerics(cfg, torch.device("cpu"))
    method = build_method(spec.trial, numerics, state)
    test = load_trial_data(cfg).test
    picks = torch.nonzero(test.labels.flatten() > 0).flatten()[:count]
    if len(picks) == 0:
        picks = torch.arange(min(count, len(test.images)))
    maps, _ = predict(method, test.images[picks], cfg.eval_batch_size, numerics)
    panels = []
    for index, amap in zip(picks.tolist(), maps):
        image = test.images[index].permute(1, 2, 0).numpy()
        if image.dtype != np.uint8:
            image = np.clip(image * 255, 0, 255).astype(np.uint8)
        heat = amap.numpy()
        heat = (255 * (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)).astype(np.uint8)
        heat = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        mask = test.masks[index].reshape(heat.shape[:2]).float().numpy()
        mask = np.repeat((mask > 0.5).astype(np.uint8)[..., None] * 255, 3, axis=2)
        panel = np.concatenate([image, heat, mask], axis=1)
        ok, png = cv2.imencode(".png", cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        if ok:
            panels.append((f"{spec.category} test #{index}", png.tobytes()))
    return panels
