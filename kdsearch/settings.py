"""A trial's settings as one ordered list of layers, each value with the layer it came from.

Every command builds a trial's settings here, in one pass, lowest precedence first:

1. the defaults: the fields of :class:`~kdsearch.trial.TrainConfig`, the method's config
   dataclass and the synthesis its config asks for (no layer: what no layer sets);
2. ``profile P``: the search space's profile;
3. ``profile P · dataset D``: what the profile changes on dataset ``D`` (its ``datasets:``);
4. ``profile P · category C``: what it sets for category ``C`` of its own dataset (``per_category:``);
5. ``search validation``: a search axis validates every epoch, on held-out images
   (:func:`validation_settings`; :func:`kdsearch.search_axis.check_search_validation` refuses a
   later layer that undoes it);
6. ``--set``: the user's settings;
7. ``--textures``: the DTD folder, as the method's ``texture_root``;
8. ``command line``: the dataset, data root, category, seed (and ``train``'s other flags);
9. ``first category of D``: when no layer names a category;
10. ``axis A · fixed``: what every row of an ablation axis sets;
11. ``axis A · row R`` or ``search sample``: the row itself, or the value Optuna sampled.

Each layer is canonicalised once (:func:`kdsearch.trial.canonical_settings`), so a value is
found under one name whatever spelling set it. :func:`kdsearch.trial.resolve` turns the
merged values into a :class:`~kdsearch.trial.Trial`, which keeps its :class:`Settings`, so
``describe`` and ``ablate --dry-run --explain`` can say where each value came from.

A layer is *explicit* when the user or the ablation asked for it (from ``--set`` on): a
setting that changes nothing is refused only there (:func:`kdsearch.trial.check_explicit_settings`);
a profile's value that some configuration ignores stays silent.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kdsearch.errors import UserError
from kdsearch.trial import DEFAULT_SOURCE, Layer, Settings, Trial, check_explicit_settings, resolve

if TYPE_CHECKING:
    from kdsearch.spaces import Axis, SearchSpace

__all__ = ["Layer", "Settings", "settings_for", "single_trial", "sourced_settings", "explain", "setting_text",
           "validation_settings", "SEARCH_VAL_FRACTION"]

#: Share of the training images a search holds out when its profile holds out none.
SEARCH_VAL_FRACTION = 0.1


def validation_settings(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The ``search validation`` layer: a search selects by a validation metric, so it validates
    every epoch, on held-out images. A profile that trains on everything (``val_fraction`` 0,
    the paper profiles) gets :data:`SEARCH_VAL_FRACTION`."""
    layer: dict[str, Any] = {"val_every": 1}
    if float(profile.get("val_fraction", 0.1)) == 0.0:
        layer["val_fraction"] = SEARCH_VAL_FRACTION
    return layer


def settings_for(method: str, *, profile: str | None = None, space: SearchSpace | None = None,
                 user: Mapping[str, Any] | None = None, textures: Mapping[str, Any] | None = None,
                 command_line: Mapping[str, Any] | None = None, axis: Axis | None = None,
                 value: Any = None) -> Settings:
    """The ordered layers of one trial (see the module's text for the order).

    Args:
        method: the method's registry name.
        profile: a profile of ``space`` (``None``: no profile layers).
        space: the search space whose profiles and axis apply; ``None`` reads the one
            named after ``method``.
        user: ``--set`` values, in any spelling.
        textures: ``--textures`` as a method setting (:func:`kdsearch.texture_source.textures_setting`).
        command_line: the command's own flags (``dataset``, ``data_root``, ``category``, ``seed``; for
            ``train`` also ``epochs``, ``device``, ``pretrained``, ``compile``).
        axis: the ablation axis or search the trial belongs to.
        value: the axis's row label, or the value a search sampled.

    Raises:
        UserError: an unknown setting, a profile without a search space, a space of another
            method, or an unknown dataset.
    """
    from kdsearch import data as data_lib
    from kdsearch.catalog import DATASETS
    from kdsearch.methods import get_method_class
    from kdsearch.spaces import space_for_method
    from kdsearch.trial import RUN_KEYS, TrainConfig, canonical_settings

    get_method_class(method)  # an unknown method is named as such, before its missing profiles
    if space is not None and space.method != method:
        raise UserError(f"search space {space.path.name} is for method {space.method!r}, not {method!r}")
    space = space if space is not None else space_for_method(method)
    if profile is not None and space is None:
        raise UserError(f"method {method!r} has no search-space file with profiles; omit --profile")

    def layer(source: str, values: Mapping[str, Any] | None, explicit: bool) -> Layer:
        canonical = canonical_settings(method, values or {})
        return Layer(source, {k: v for k, v in canonical.items() if k not in RUN_KEYS}, explicit)

    given = [layer("--set", user, True), layer("--textures", textures, True), layer("command line", command_line, True)]
    chosen = {k: v for one in given for k, v in one.values.items()}
    own_dataset = space.profiles[profile].get("dataset") if profile is not None and space is not None else None
    dataset = str(chosen.get("dataset") or own_dataset or TrainConfig.dataset)
    first_category = None
    if chosen.get("category") is None:
        if dataset not in DATASETS:
            raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
        first_category = data_lib.list_categories(dataset, chosen.get("data_root"))[0]
    layers: list[Layer] = []
    if profile is not None and space is not None:
        parts = space.profile_parts(profile, chosen.get("dataset"), chosen.get("category") or first_category)
        layers += [layer(source, values, False) for source, values in parts]
    if axis is not None and not axis.is_grid:
        layers.append(layer("search validation", validation_settings({k: v for one in layers for k, v in one.values.items()}),
                            False))
    layers += given
    if first_category is not None:
        layers.append(layer(f"first category of {dataset}", {"category": first_category}, False))
    if axis is not None:
        layers.append(layer(f"axis {axis.name} · fixed", axis.fixed, True))
        row = f"axis {axis.name} · row {value}" if axis.is_grid else f"axis {axis.name} · search sample"
        layers.append(layer(row, axis.row_settings(value), True))
    return Settings(method, tuple(one for one in layers if one.values))


def sourced_settings(trial: Trial) -> list[tuple[str, str, str, str]]:
    """Every setting of ``trial`` as ``(section, name, value text, layer)``, by section (training,
    the method's, synthesis); ``name`` is the setting's one spelling (``synthesis.<field>`` for a
    synthesis field). A value no layer sets names its default: the config dataclass's, or what
    the method's config asks of its anomalies."""
    import dataclasses

    from kdsearch.config import to_dict

    method = trial.train.method
    # The method's name heads its own section.
    sections = [("train", {f.name: getattr(trial.train, f.name) for f in dataclasses.fields(trial.train)
                           if f.name != "method"}, "", "default (TrainConfig)"),
                (method, to_dict(trial.method_config), "", f"default ({type(trial.method_config).__name__})"),
                ("synthesis", to_dict(trial.synthesis) if trial.synthesis is not None else {}, "synthesis.",
                 f"{method}'s config")]
    rows = []
    for title, values, prefix, default in sections:
        for name, value in values.items():
            source = trial.settings.source_of(prefix + name) if trial.settings is not None else DEFAULT_SOURCE
            rows.append((title, prefix + name, setting_text(value), default if source == DEFAULT_SOURCE else source))
    return rows


def explain(trial: Trial) -> list[str]:
    """:func:`sourced_settings` as text: a ``section:`` line, then ``name = value  ← layer`` per field."""
    by_section: dict[str, list[tuple[str, str, str]]] = {}
    for section, name, text, source in sourced_settings(trial):
        field_name = name.removeprefix("synthesis.") if section == "synthesis" else name
        by_section.setdefault(section, []).append((field_name, text, source))
    lines = []
    for section, rows in by_section.items():
        width = max(len(name) for name, _, _ in rows)
        lines.append(f"{section}:")
        lines += [f"  {name:<{width}} = {text}  ← {source}" for name, text, source in rows]
    return lines


def setting_text(value: Any) -> str:
    """A setting's value as the command line spells it: ``a,b`` for a sequence, ``true``/``false``."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def single_trial(method: str, profile: str | None = None, settings: Mapping[str, Any] | None = None, *,
                 space: SearchSpace | None = None, textures: Mapping[str, Any] | None = None,
                 command_line: Mapping[str, Any] | None = None) -> Trial:
    """One trial outside an ablation (``train``, ``describe``, ``bench``): the method's defaults <
    ``profile`` < ``settings`` (``--set``) < ``textures`` < ``command_line``, resolved, with every
    explicit setting that changes nothing refused (its only row is the whole run).

    Raises:
        UserError: as :func:`kdsearch.settings.settings_for` and :func:`resolve`, and an explicit
            setting this trial ignores.
    """
    trial = resolve(settings_for(method, profile=profile, space=space, user=settings, textures=textures,
                                 command_line=command_line))
    check_explicit_settings([("settings", trial, trial.settings.explicit)])
    return trial
