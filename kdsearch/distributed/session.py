"""Join a Ray cluster, or start a local Ray bound to a loopback address."""
from __future__ import annotations

import logging
import os
from typing import Any

import optuna
import ray

from kdsearch.distributed.options import LOCAL_NODE_IP, check_reachable
from kdsearch.errors import UserError

def _quiet_logs() -> None:
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A trial whose worker dies is retried and, at the end, recorded with its error: the
    # controller's traceback of every attempt would only bury the one-line summaries.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    # Tune's experiment state is never restored (the results tree says what is done); a
    # failed save of it (a full disk) is told once by kdsearch, not as Ray's traceback.
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
    # With --max-failures 0 (or its last restart spent) a trial that lost its worker is named
    # in a kdsearch line and recorded failed: Tune's closing "Trials did not complete: [...]"
    # names its own trial ids only.
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Every trial's failure is recorded and told by kdsearch in one line (a full disk: one
    # error: line). Ray's "Unhandled error" log of the same exception, a worker's traceback
    # (worker.py:439 ... tune.report), would only bury it.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # A log handler that cannot write (W&B's debug log on a full disk) must not print
    # Python's "--- Logging error ---" block with its traceback for every record.
    logging.raiseExceptions = False


def start_ray(address: str | None = None, *, temp_dir: str | None = None, num_cpus: int | None = None,
              env: dict[str, str] | None = None) -> bool:
    """Join ``address`` or start a local Ray bound to a loopback address.

    ``env``: environment variables of every worker of this driver's job (Ray's runtime_env).

    Returns:
        Whether this call started Ray (the caller then shuts it down); ``False`` when Ray
        was already initialised in this process.
    """
    _quiet_logs()
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if env:
        common["runtime_env"] = {"env_vars": dict(env)}
    if address:
        common.pop("include_dashboard")
        check_reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as exc:
            # A head with token auth joined without its token raises AuthenticationError (a RayError).
            raise UserError(f"cannot join the Ray cluster at {address!r}: {exc}; check that `ray start --head` "
                            "runs there, that RAY_AUTH_MODE matches the cluster's and, with token auth, that "
                            "the cluster's token is in ~/.ray/auth_token or RAY_AUTH_TOKEN") from exc
    else:
        # address="local" ignores a stale ray_current_cluster file from another session.
        ray.init(address="local", _node_ip_address=LOCAL_NODE_IP, num_cpus=num_cpus or os.cpu_count() or 1,
                 _temp_dir=temp_dir, **common)
    _quiet_logs()
    return True


def offered_gpu_node_types() -> dict[str, float]:
    """Node types of the joined cluster that would bring GPUs (none up yet, maybe): from the
    autoscaler's config in Ray's state, and from the cluster launcher's config on a head node
    (``~/ray_bootstrap_config.yaml``). Empty for a local Ray or when neither is readable."""
    from pathlib import Path

    from kdsearch.distributed.options import gpu_node_types

    offered: dict[str, float] = {}
    try:
        config = ray._private.state.state.get_cluster_config()
        for group in getattr(config, "node_group_configs", None) or ():
            gpus = float(group.resources.get("GPU", 0))
            if gpus > 0 and group.max_count != 0:
                offered[str(group.name)] = gpus
    except Exception:  # noqa: BLE001 - Ray's internal state API; the launcher config below is the fallback
        pass
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    if bootstrap.is_file():
        import yaml

        try:
            offered.update(gpu_node_types(yaml.safe_load(bootstrap.read_text()) or {}))
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    return offered
