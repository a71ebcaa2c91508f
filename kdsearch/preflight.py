"""What a sweep refuses before Ray starts: every mistake its trainings would meet first thing.

``python -m kdsearch.train`` meets a missing data root, a broken layout, an undecodable
image, weights it cannot reach or a missing texture folder as a :class:`UserError` in its
first seconds and exits 2. A sweep would meet the same error in every trial, on Ray, after
it started; :func:`check_jobs` asks the same functions those trainings ask, in the driver,
once per distinct category, weights and texture folder, before Ray starts and before
anything is created. What it decodes stays in the tensor cache, where the trials find it.
:func:`prepare_run_folders` then refuses a ``--storage`` or ``--address`` the sweep cannot use
before it makes the results folder.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from kdsearch.errors import UserError, require_writable_folder
from kdsearch.plan import Job
from kdsearch.search_axis import probe_value
from kdsearch.trial import Trial

__all__ = ["check_jobs", "prepare_run_folders", "trials_to_check"]

T = TypeVar("T")


def trials_to_check(job: Job) -> list[Trial]:
    """The trials whose data, weights and textures a job needs: every training a grid runs or
    scores again, and for a search each study with each value it may sample that changes them
    (every choice of a categorical axis, else one probe value)."""
    if job.is_grid:
        return [spec.trial for spec in (*job.trainings, *(row for row, _ in job.rescored))]
    axis = job.axis
    values = list(axis.choices) if axis.distribution == "categorical" else [probe_value(axis)]
    return [study.trial(job.space, axis, value).trial for study in job.studies if study.n_trials
            for value in values]


def check_jobs(jobs: Sequence[Job]) -> None:
    """Refuse the jobs' first mistake as one :class:`UserError`; return when there is none.

    In order, each once: every category's files in the dataset's published layout (a missing
    or empty data root, a missing category, a defect image without its mask) without decoding
    any; each backbone with its weights (a missing file, ImageNet weights neither cached nor
    reachable: a 3-second probe, nothing downloaded); each texture folder; then every image of
    each category, decoded as its trainings will read it.
    """
    from kdsearch import data as data_lib
    from kdsearch.loop import load_trial_data
    from kdsearch.nn.backbones import check_backbone
    from kdsearch.synthesis.textures import check_texture_root

    trials = [trial for job in jobs for trial in trials_to_check(job)]
    configs = [t.train for t in trials]
    for train in _distinct(configs, lambda c: (c.dataset, c.data_root, c.category, c.cache_dir)):
        data_lib.category_files(train.dataset, train.category, train.data_root, cache_dir=train.cache_dir)
    for backbone, pretrained in _distinct(filter(None, map(_weights, trials)), lambda w: w):
        check_backbone(backbone, pretrained)
    roots = (getattr(t.method_config, "texture_root", None) for t in trials)
    for root in _distinct(filter(None, roots), lambda r: r):
        check_texture_root(root)
    for train in _distinct(configs, lambda c: (c.dataset, c.data_root, c.category, c.image_size, c.preprocessing,
                                               c.val_fraction, c.split_seed, c.max_train_images, c.cache_dir)):
        load_trial_data(train)
        data_lib.clear_memory_cache()  # the trials read it from the disk cache, in their own processes


def prepare_run_folders(results_dir: Path, axis_dir: Path, *, storage: str | None, address: str | None,
                        keep_models: bool) -> list[Path]:
    """Refuse a local ``--storage``, an ``--address`` or (with ``keep_models``) a ``_models``
    folder the sweep cannot use, then make the axis's results folder.

    What can be refused is refused before the results folder exists.

    Returns:
        The folders this made, innermost first (:func:`remove_empty_folders` undoes them).
    """
    from kdsearch import results as results_lib

    if storage and "://" not in storage:
        _check_storage_folder(Path(storage).expanduser())
    if address:
        from kdsearch.distributed.options import check_reachable

        check_reachable(address)
    if keep_models:
        require_writable_folder(results_dir / results_lib.MODELS_DIRNAME, "kept models to",
                                "make it writable, choose another --results, or drop --keep-models")
    made = [folder for folder in (axis_dir, axis_dir.parent, results_dir) if not folder.exists()]
    try:
        axis_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to results folder {results_dir}: {exc.strerror}; choose a writable --results") from exc
    return made


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` (innermost first) that is still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): its parents are not empty either


def _weights(trial: Trial) -> tuple[str, str] | None:
    """``(backbone, pretrained)`` a trial builds, ``pretrained`` as ``none`` where it has no teacher."""
    backbone = getattr(trial.method_config, "backbone", None)
    if backbone is None:
        return None
    pretrained = getattr(trial.method_config, "pretrained", "none")
    if "pretrained" in trial.inert_settings:
        pretrained = "none"
    return str(backbone), str(pretrained)


def _distinct(items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
    seen: dict[Hashable, T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


def _check_storage_folder(folder: Path) -> None:
    """A local ``--storage`` must be a folder this process can create and write, before any trial starts."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--storage {folder} is a file; give a folder for the checkpoints (it is created if missing) "
                        f"or s3://bucket/prefix")
    require_writable_folder(folder, "checkpoints to --storage", "give a writable folder or s3://bucket/prefix")
