"""How a job runs (not what: that is the job), and each trial's resources."""
from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsearch.errors import UserError

CHECKPOINT_FILE = "state.pt"
# Loopback address of a local single-node Ray: Ray rewrites 127.0.0.1 to the machine's
# network address, but keeps other 127/8 addresses (Linux routes all of them).
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"
# Resources of the small Tune function that drives a DDP trial (0 is refused by Tune).
DRIVER_CPU = 0.01


@dataclass
class RunOptions:
    """How to run a job (not what: that is the job).

    Attributes:
        results_dir: the results tree.
        storage: Ray's storage for checkpoints (folder or URI); default ``<results>/_ray``.
        address: Ray cluster to join (``auto`` or ``HOST:PORT``); ``None`` starts a local Ray.
        workers_per_trial: DDP workers per trial.
        gpus_per_trial, cpus_per_trial: resources per trial, split evenly over its workers.
        max_concurrent: most trials at once (``None``: as resources allow).
        max_failures: restarts from the last checkpoint before a trial is recorded failed.
        wandb, wandb_project: W&B mode and project.
        wandb_images: anomaly-map images per trial sent to W&B.
        temp_dir: Ray's temp/session folder for a local Ray (short: socket paths are limited).
        num_cpus: logical CPUs of a local Ray (default: the machine's).
        keep_models: keep each finished training's weights under ``<results>/_models/`` (written
            by the trial's rank 0, so the results folder must be reachable from the workers).
        checkpoint_every_s: a trial checkpoints after the first epoch that ends at least this
            many seconds after its start or its last checkpoint (0: after every epoch). A
            restart repeats at most that much training; short epochs no longer each write a
            checkpoint (a quick CPU epoch takes seconds, its checkpoint 40 MB).
    """

    results_dir: str = "results"
    storage: str | None = None
    address: str | None = None
    workers_per_trial: int = 1
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    wandb: str = "auto"
    wandb_project: str = "kdsearch"
    wandb_images: int = 4
    temp_dir: str | None = None
    num_cpus: int | None = None
    keep_models: bool = False
    checkpoint_every_s: float = 120.0

    def storage_path(self) -> str:
        if self.storage:
            return self.storage if "://" in self.storage else str(Path(self.storage).expanduser().resolve())
        return str((Path(self.results_dir) / "_ray").resolve())


def trial_resources(options: RunOptions, cluster_gpus: float) -> dict[str, float]:
    """Resources of one trial: the Tune trial's own and each DDP worker's.

    ``--cpus-per-trial``/``--gpus-per-trial`` are per trial and split over its workers.
    A DDP trial's Tune function takes :data:`DRIVER_CPU` out of the trial's CPUs, so a
    trial that asks for all of a machine's CPUs still fits on it.
    """
    workers = options.workers_per_trial
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else (float(workers) if cluster_gpus > 0 else 0.0)
    cpus = options.cpus_per_trial if options.cpus_per_trial is not None else float(workers)
    if workers == 1:
        return {"cpu": max(cpus, DRIVER_CPU), "gpu": gpus, "worker_cpu": max(cpus, DRIVER_CPU), "worker_gpu": gpus}
    return {"cpu": DRIVER_CPU, "gpu": 0.0, "worker_cpu": max((cpus - DRIVER_CPU) / workers, DRIVER_CPU),
            "worker_gpu": gpus / workers}


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at HOST:PORT: Ray itself retries its GCS for minutes.
    Ray-free, so a sweep checks ``--address`` before it creates anything."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__}); start one "
                        f"there with `ray start --head --port={port}`, or leave out --address to run on a local "
                        f"Ray") from None


def gpu_node_types(cluster: Mapping[str, Any]) -> dict[str, float]:
    """The node types of a cluster launcher config (``clusters/aws.yaml``'s
    ``available_node_types``) that bring GPUs and may be started, with their GPUs per node."""
    types = cluster.get("available_node_types") or {}
    head = cluster.get("head_node_type")
    offered = {}
    for name, node_type in types.items():
        gpus = float(((node_type or {}).get("resources") or {}).get("GPU", 0) or 0)
        most = (node_type or {}).get("max_workers", cluster.get("max_workers", 1))
        if gpus > 0 and (name == head or most != 0):
            offered[str(name)] = gpus
    return offered


def check_gpu_request(options: RunOptions, cluster_gpus: float, offered: Mapping[str, float], wants_cuda: bool) -> None:
    """Refuse a sweep whose trials would train on CPUs by accident: it gave no
    ``--gpus-per-trial`` while the cluster can add GPU nodes but has none up (an autoscaling
    cluster starts with ``min_workers: 0``), or its trials ask for ``device=cuda`` and get no GPU.

    Args:
        options: the sweep's options.
        cluster_gpus: GPUs the cluster has now (``ray.cluster_resources()``).
        offered: node types that would bring GPUs (:func:`gpu_node_types`), with GPUs per node.
        wants_cuda: whether the trials' ``device`` is ``cuda``.
    """
    asked = options.gpus_per_trial
    if asked is None and cluster_gpus > 0:
        return  # trial_resources asks for them
    if asked is None and offered:
        types = ", ".join(f"{name} ({gpus:g} GPU{'s' if gpus != 1 else ''})" for name, gpus in offered.items())
        raise UserError(f"the Ray cluster can add nodes with GPUs ({types}) but has none up yet, and this sweep asks "
                        f"for none, so its trials would train on CPUs; pass --gpus-per-trial 1 (or more) so they ask "
                        f"for GPUs and the cluster starts GPU nodes, or --gpus-per-trial 0 to train on CPUs")
    if wants_cuda and not asked:
        raise UserError("device=cuda is set but this sweep gives its trials no GPU (the cluster has none now and "
                        "--gpus-per-trial is not set); pass --gpus-per-trial 1, or drop device=cuda")
