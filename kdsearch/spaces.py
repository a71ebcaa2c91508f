"""Search spaces: ``search_spaces/<paper>.yaml`` read into typed objects.

A file names the method, the paper's defaults, training profiles (``smoke``, ``quick``,
``paper``) and axes. A grid axis has ``values`` (a list for one ``param``, or named rows
each a set of field values); a search axis has a ``distribution`` over one ``param``.
See DESIGN.md, "Search spaces".
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from kdsearch.config import yaml_load
from kdsearch.errors import UserError

PROFILES = ("smoke", "quick", "paper")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "categorical")
SEARCH_SPACES_ENV = "KDSEARCH_SEARCH_SPACES"
DEFAULT_RESULTS = "results"  # the results folder every command reads and writes unless --results says otherwise


@dataclass(frozen=True)
class Axis:
    """One ablation axis or search dimension of a paper.

    Attributes:
        name: axis name used on the command line.
        table: the paper's table or figure it reproduces (may be empty for searches).
        rows: for a grid, row label → field values (in the paper's order); empty for a search.
        param: the swept field for a numeric grid or a search.
        distribution: ``uniform``/``loguniform``/``int``/``categorical`` for a search.
        low, high, choices, n_trials: the search's range and default trial count.
        fixed: field values every trial of this axis uses (e.g. ``patch_k: 4`` for Table V).
        former: row label → the label the row had before (``"w/o DFE": "✗"``). A former
            label is still accepted (``--values``), reads back as the current one, and stays
            in the row's trial key, so results recorded under it are still found.
    """

    name: str
    table: str = ""
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    param: str | None = None
    distribution: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    n_trials: int = 10
    fixed: dict[str, Any] = field(default_factory=dict)
    former: dict[str, str] = field(default_factory=dict)

    @property
    def is_grid(self) -> bool:
        return self.distribution is None

    def row_label(self, name: str) -> str | None:
        """The row a name means: its current label, or a former one's row; ``None`` if none."""
        if name in self.rows:
            return name
        return next((label for label, was in self.former.items() if was == name), None)

    def key_label(self, label: str) -> str:
        """The label a row's trial key is made from: the former one where the row was renamed."""
        return self.former.get(label, label)

    def select_rows(self, values: str) -> list[str]:
        """``--values a,b``: the rows named (by their label or a former one), checked, in the order given."""
        names = [v.strip() for v in values.split(",") if v.strip()]
        unknown = [v for v in names if self.row_label(v) is None]
        if unknown or not names:
            raise UserError(f"axis {self.name!r} has no row(s) {', '.join(unknown) or repr(values)}; "
                            f"rows: {self.names_text()}")
        labels = [self.row_label(v) or v for v in names]
        repeated = sorted({v for v in labels if labels.count(v) > 1})
        if repeated:
            raise UserError(f"--values lists {', '.join(repeated)} more than once; name each row once")
        return labels

    def names_text(self) -> str:
        """``a, b (or x), c``: every row with the former names it still answers to."""
        return ", ".join(f"{label} (or {self.former[label]})" if label in self.former else label
                         for label in self.rows)

    def row_settings(self, value: Any) -> dict[str, Any]:
        """What one row sets (a grid: the row's field values) or the sampled value (a search).

        Args:
            value: a row label (or a former one) for a grid axis, the sampled value for a search axis.
        """
        if self.is_grid:
            label = self.row_label(str(value))
            if label is None:
                raise UserError(f"axis {self.name!r} has no row {str(value)!r}; rows: {self.names_text()}")
            return dict(self.rows[label])
        return {self.param: value}

    def overrides(self, value: Any) -> dict[str, Any]:
        """Field values of one trial: the axis's ``fixed`` values, then :meth:`row_settings`."""
        return {**self.fixed, **self.row_settings(value)}

    def numeric_value(self, label: str) -> float | None:
        """The row's number for numeric grids (for plots), else ``None``."""
        if self.param is None:
            return None
        value = self.rows.get(label, {}).get(self.param)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class SearchSpace:
    """A paper's search space file."""

    paper: str
    method: str
    profiles: dict[str, dict[str, Any]]
    axes: dict[str, Axis]
    path: Path

    def profile(self, name: str, dataset: str | None = None, category: str | None = None) -> dict[str, Any]:
        """Settings of profile ``name`` (train and method fields, plus ``seeds``/``categories``):
        :meth:`profile_parts` merged."""
        return {k: v for _, part in self.profile_parts(name, dataset, category) for k, v in part.items()}

    def profile_parts(self, name: str, dataset: str | None = None,
                      category: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Profile ``name``'s settings as layers, each with where it comes from, lowest first.

        A profile may hold ``datasets: {name: {settings}}``: what the paper changes on that
        dataset (e.g. DSKD trains MT Defects at 128²). They apply when ``dataset`` (default:
        the profile's own) is one of them. It may also hold ``per_category: {category:
        {settings}}``: what the authors' code sets per category of the profile's own dataset
        (MRKD's NSA widths and backgrounds), applied for ``category`` on that dataset.
        """
        if name not in self.profiles:
            raise UserError(f"{self.path.name} has no profile {name!r}; choose one of: {', '.join(self.profiles)}")
        settings = dict(self.profiles[name])
        per_dataset = settings.pop("datasets", None) or {}
        per_category = settings.pop("per_category", None) or {}
        own = settings.get("dataset")
        chosen = dataset or own
        parts = [(f"profile {name}", settings), (f"profile {name} · dataset {chosen}", dict(per_dataset.get(chosen) or {}))]
        if category is not None and chosen == own:
            parts.append((f"profile {name} · category {category}", dict(per_category.get(category) or {})))
        return [(source, values) for source, values in parts if values]

    def dataset_overrides(self, name: str) -> dict[str, dict[str, Any]]:
        """The datasets profile ``name`` names, with what each changes (the papers' other tables)."""
        return {str(k): dict(v or {}) for k, v in (self.profiles.get(name, {}).get("datasets") or {}).items()}

    def axis(self, name: str) -> Axis:
        if name not in self.axes:
            raise UserError(f"paper {self.paper!r} has no axis {name!r}; choose one of: {', '.join(self.axes)}")
        return self.axes[name]


def spaces_dir() -> Path:
    """Folder of the search-space YAML files (``$KDSEARCH_SEARCH_SPACES`` overrides it).

    A wheel carries them inside the package (``kdsearch/search_spaces``, mapped there from
    the top-level folder); a source checkout reads the top-level ``search_spaces/`` itself.
    """
    import os

    override = os.environ.get(SEARCH_SPACES_ENV)
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    packaged = package / "search_spaces"
    return packaged if packaged.is_dir() else package.parent / "search_spaces"


def list_papers() -> list[str]:
    """Papers with a search-space file."""
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


def _parse_axis(name: str, raw: Any, where: str) -> Axis:
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: axis {name!r} must be a mapping with 'values' or 'distribution'")
    known = {"table", "param", "values", "distribution", "low", "high", "choices", "n_trials", "fixed", "former"}
    unknown = set(raw) - known
    if unknown:
        raise UserError(f"{where}: axis {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    param = raw.get("param")
    fixed = dict(raw.get("fixed") or {})
    if "distribution" in raw:
        dist = raw["distribution"]
        if dist not in DISTRIBUTIONS:
            raise UserError(f"{where}: axis {name!r} distribution must be one of {DISTRIBUTIONS}, got {dist!r}")
        if not param:
            raise UserError(f"{where}: search axis {name!r} needs 'param'")
        if dist == "categorical":
            choices = tuple(raw.get("choices") or ())
            if not choices:
                raise UserError(f"{where}: categorical axis {name!r} needs 'choices'")
            return Axis(name, str(raw.get("table", "")), {}, param, dist, choices=choices,
                        n_trials=int(raw.get("n_trials", 10)), fixed=fixed)
        low, high = raw.get("low"), raw.get("high")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
            raise UserError(f"{where}: axis {name!r} needs numbers low < high, got low={low!r} high={high!r}")
        if dist == "loguniform" and low <= 0:
            raise UserError(f"{where}: loguniform axis {name!r} needs low > 0, got {low}")
        return Axis(name, str(raw.get("table", "")), {}, param, dist, float(low), float(high),
                    n_trials=int(raw.get("n_trials", 10)), fixed=fixed)
    values = raw.get("values")
    if isinstance(values, list):
        if not param:
            raise UserError(f"{where}: axis {name!r} lists values, so it needs 'param'")
        rows = {_label(v): {param: v} for v in values}
    elif isinstance(values, Mapping):
        rows = {}
        for label, overrides in values.items():
            if overrides is not None and not isinstance(overrides, Mapping):
                raise UserError(f"{where}: row {label!r} of axis {name!r} must be a mapping of field values")
            rows[str(label)] = dict(overrides or {})
    else:
        raise UserError(f"{where}: axis {name!r} needs 'values' (a list or named rows) or a 'distribution'")
    if not rows:
        raise UserError(f"{where}: axis {name!r} has no values")
    former = raw.get("former") or {}
    if not isinstance(former, Mapping) or not all(isinstance(v, str) for v in former.values()):
        raise UserError(f"{where}: 'former' of axis {name!r} must map row labels to their former labels")
    former = {str(k): v for k, v in former.items()}
    unknown_rows = [k for k in former if k not in rows]
    clashing = [v for v in former.values() if v in rows]
    if unknown_rows or clashing or len(set(former.values())) < len(former):
        raise UserError(f"{where}: 'former' of axis {name!r} must name its rows ({', '.join(rows)}) each with a "
                        f"label no other row has; check {', '.join(unknown_rows + clashing) or 'repeated former labels'}")
    return Axis(name, str(raw.get("table", "")), rows, param, fixed=fixed, former=former)


def _label(value: Any) -> str:
    """Row label of a numeric grid value, printed as the papers print it (0.2, 1e-05, 8)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return str(value)


#: The keys a search-space file may hold.
_TOP_LEVEL = ("paper", "method", "profiles", "axes")


@lru_cache(maxsize=None)
def _load_cached(path: Path, mtime: float) -> SearchSpace:
    where = str(path.name)
    try:
        raw = yaml_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping) or "method" not in raw:
        raise UserError(f"{where} must be a mapping with at least 'method', 'profiles' and 'axes'")
    unknown = [str(k) for k in raw if k not in _TOP_LEVEL]
    if unknown:
        raise UserError(f"{where}: unknown top-level key(s) {unknown}; a search space has only {list(_TOP_LEVEL)} "
                        "(a paper's defaults belong in its method's config dataclass, a budget in a profile)")
    profiles = {str(k): dict(v or {}) for k, v in (raw.get("profiles") or {}).items()}
    missing = [p for p in PROFILES if p not in profiles]
    if missing:
        raise UserError(f"{where} lacks profiles {missing}; every paper defines {list(PROFILES)}")
    axes = {str(k): _parse_axis(str(k), v, where) for k, v in (raw.get("axes") or {}).items()}
    return SearchSpace(str(raw.get("paper", path.stem)), str(raw["method"]), profiles, axes, path)


def load_search_space(paper: str) -> SearchSpace:
    """Read ``search_spaces/<paper>.yaml``; unknown papers are a :class:`UserError`."""
    path = spaces_dir() / f"{paper}.yaml"
    if not path.is_file():
        papers = list_papers()
        if not papers:
            raise UserError(f"the search-space folder {spaces_dir()} holds no <paper>.yaml file; point "
                            f"${SEARCH_SPACES_ENV} at a folder of search spaces, or unset it to use the built-in ones")
        raise UserError(f"unknown paper {paper!r}: no {path.name} in the search spaces; choose one of: {', '.join(papers)}")
    return _load_cached(path, path.stat().st_mtime)


def space_for_method(method: str) -> SearchSpace | None:
    """The search space whose paper is ``method`` (every method has one), else ``None``."""
    path = spaces_dir() / f"{method}.yaml"
    return load_search_space(method) if path.is_file() else None
