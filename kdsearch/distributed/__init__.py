"""Run an ablation job on Ray: Tune schedules trials, Optuna samples them, Train runs DDP.

The only package that imports Ray and Optuna (pinned to ray 2.60 in pyproject.toml,
because their APIs keep moving; every call lives here). One module per job:

* :mod:`.options`: :class:`RunOptions` (how to run a job) and each trial's resources.
* :mod:`.session`: :func:`start_ray` joins a cluster or starts a local Ray on a loopback
  address.
* :mod:`.worker`: what runs in a trial. :func:`tune_trial` is the Tune trainable: with one
  worker per trial it runs :func:`train_func` in the trial itself (no Train start-up
  cost, identical records); with more it builds a ``TorchTrainer`` (DDP, gloo on CPU)
  whose reports a ``TuneReportCallback`` forwards to Tune, as Ray's Train+Tune guide does
  for Train V2. :func:`train_func` is a Ray Train style loop body: resume from the last
  checkpoint, checkpoint from rank 0, report on every rank; the training itself is
  :func:`kdsearch.loop.fit_and_evaluate`.
* :mod:`.driver`: :func:`run_job` runs one ``Tuner`` per job (grid) or per study (search).
  A grid axis is an Optuna ``GridSampler`` over the indices of the pending trials (so a
  resumed run samples only what is missing); a search axis is Optuna TPE, warm-started
  from the results tree, with ASHA early stopping on the validation metric reported each
  epoch (never on ``test``, evaluated once at the end of a trial). Its Tune callback
  writes each finished trial to the results tree and logs it to W&B.
* :mod:`.storage`: removes the checkpoints a finished, stopped or killed sweep left.

Fault tolerance: a trial whose worker dies restarts from its last checkpoint up to
``max_failures`` times (Tune's ``FailureConfig`` for one-worker trials, Train's for DDP
trials), then is written as ``failed``; the sweep goes on. A user's mistake
(:class:`~kdsearch.errors.UserError`) raised in a trial is no lost worker: every attempt would
meet it again, so the trial ends ``failed`` at once with its sentence, never restarted; when
every trial that ran ended with the same one, the sweep stops with it (``error:``, exit 2).
"""
from __future__ import annotations

import os

# Ray reads these when it is imported: no per-trial CSV/JSON/TensorBoard loggers (the
# results tree replaces them) and no box-drawing progress output.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from kdsearch.distributed.driver import run_job  # noqa: E402
from kdsearch.distributed.options import (  # noqa: E402
    CHECKPOINT_FILE,
    DRIVER_CPU,
    LOCAL_NODE_IP,
    RunOptions,
    trial_resources,
)
from kdsearch.distributed.session import start_ray  # noqa: E402
from kdsearch.distributed.worker import CheckpointTimer, train_func, tune_trial  # noqa: E402

__all__ = ["CHECKPOINT_FILE", "DRIVER_CPU", "LOCAL_NODE_IP", "CheckpointTimer", "RunOptions", "run_job", "start_ray",
           "train_func", "trial_resources", "tune_trial"]
