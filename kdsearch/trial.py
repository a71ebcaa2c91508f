"""A trial, resolved once, and what every layer says about it.

:func:`resolve` turns a trial's settings, an ordered list of layers (the method's defaults,
a profile, the user's settings, an axis row: :mod:`kdsearch.settings`), into one frozen
:class:`Trial`: the training config, the method's config and the synthetic anomalies it
trains on. ``train``, ``ablate``, ``bench``, ``describe`` and the Ray trainable all start
from it; nothing else rebuilds a configuration from dicts.

Settings live in three sections: ``train`` (:class:`TrainConfig`), ``method`` (the
method's config dataclass) and ``synthesis`` (:class:`~kdsearch.synthesis.SynthesisConfig`).
Training and method fields may also be named bare (``lr``, ``epochs``): no method field
shares a training field's name. Synthesis fields are always named with their section
(``synthesis.perlin_threshold``), in ``--set`` and in YAML alike.

Statuses and metric names live in the leaf :mod:`kdsearch.vocabulary`, which the results
tree and the analysis read without the resolver.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdsearch.errors import UserError

if TYPE_CHECKING:
    from kdsearch.methods import MethodConfig
    from kdsearch.synthesis import SynthesisConfig

__all__ = ["TrainConfig", "Trial", "Layer", "Settings", "resolve", "canonical_settings", "explicit_names",
           "check_explicit_settings", "SECTIONS"]

#: The values of ``TrainConfig.teacher_cache`` (:mod:`kdsearch.teacher_cache`).
TEACHER_CACHE_SETTINGS = ("auto", "on", "off")
#: The sections a setting belongs to (``--set section.field=value``).
SECTIONS = ("train", "method", "synthesis")
#: Keys of a profile that say how a run is laid out, not how a trial is configured.
RUN_KEYS = ("seeds", "categories")

#: Marks a training field that changes what a trial computes, and so its key.
_KEY = {"key": True}


#: Where a value no layer sets comes from.
DEFAULT_SOURCE = "default"


@dataclass(frozen=True)
class Layer:
    """One source of settings: what it is called and the values it sets (canonical names)."""

    source: str
    values: Mapping[str, Any]
    explicit: bool = False


@dataclass(frozen=True)
class Settings:
    """A trial's settings: its method and the layers, lowest precedence first."""

    method: str
    layers: tuple[Layer, ...]

    @property
    def values(self) -> dict[str, Any]:
        """Every set value, the last layer that sets a name winning."""
        merged: dict[str, Any] = {}
        for layer in self.layers:
            merged.update(layer.values)
        return merged

    @property
    def explicit(self) -> frozenset[str]:
        """Names an explicit layer sets (the user's or the axis's settings)."""
        return frozenset(name for layer in self.layers if layer.explicit for name in layer.values)

    def source_of(self, name: str) -> str:
        """The layer the value of ``name`` comes from (:data:`DEFAULT_SOURCE` when none sets it)."""
        return next((layer.source for layer in reversed(self.layers) if name in layer.values), DEFAULT_SOURCE)


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a trial that is not the method: data, budget, device.

    A profile sets these (and method fields); ``--set``/search axes override them.
    Fields marked ``key`` change what a trial computes and enter its key; the others (data
    location, device, speed switches) do not: the same trial on another machine or in
    another folder is the same trial. Method, dataset, category and seed enter the key
    on their own.
    """

    method: str = "rd4ad"
    dataset: str = "synthetic"
    data_root: str | None = None
    category: str | None = None
    image_size: int = field(default=128, metadata=_KEY)
    epochs: int = field(default=8, metadata=_KEY)
    batch_size: int = field(default=16, metadata=_KEY)
    eval_batch_size: int = field(default=32, metadata=_KEY)
    seed: int = 0
    device: str = "auto"
    max_train_images: int | None = field(default=None, metadata=_KEY)
    val_fraction: float = field(default=0.1, metadata=_KEY)
    split_seed: int = field(default=0, metadata=_KEY)
    #: How images and masks are resized: ``opencv_area`` (kdsearch's), ``rd4ad_code`` or
    #: ``mrkd_code`` (as those authors' code does; :data:`kdsearch.data.decode.PREPROCESSINGS`).
    preprocessing: str = field(default="opencv_area", metadata=_KEY)
    #: Validate every N epochs and after the last one. Not a key: validation draws on its own
    #: random stream, so the trained model and the test metrics are the same at any N.
    val_every: int = 1
    compile: bool = False
    prefetch: int | None = None
    precision: str = "auto"
    memory_format: str = "auto"
    cache_dir: str | None = None
    #: The frozen teacher's features of each clean training image, computed once and reused
    #: every later epoch (:mod:`kdsearch.teacher_cache`): ``auto`` (on where it applies, off
    #: with ``compile``), ``on`` or ``off`` (YAML's and ``--set``'s true and false, as YAML
    #: reads on and off, spell them too). Not a key: the trained weights are bit-identical.
    teacher_cache: bool | str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.teacher_cache, bool):
            object.__setattr__(self, "teacher_cache", "on" if self.teacher_cache else "off")

    def validate(self) -> None:
        """Raise :class:`UserError` on a value that cannot run."""
        from kdsearch.catalog import DATASETS
        from kdsearch.data.decode import check_preprocessing
        from kdsearch.numerics import MEMORY_FORMATS, PRECISIONS

        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        if self.data_root is not None and self.dataset == "synthetic":
            raise UserError("--data-root names a real dataset's folder, and the built-in synthetic dataset reads none; "
                            "drop --data-root, or pass --dataset (e.g. --dataset mvtec) to train on that folder")
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise UserError(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"device must be auto, cpu or cuda, got {self.device!r}")
        # Whether CUDA is there is checked where the trial runs (runtime.resolve_device), not
        # here: a sweep is planned on a cluster's head node, which may have no GPU.
        if self.prefetch is not None and self.prefetch < 0:
            raise UserError(f"prefetch must be >= 0 (batches made ahead; 0 = none; unset = 2 on CUDA, 0 on a "
                            f"CPU), got {self.prefetch}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_preprocessing(self.preprocessing)
        if self.memory_format not in MEMORY_FORMATS:
            raise UserError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        if self.teacher_cache not in TEACHER_CACHE_SETTINGS:
            raise UserError(f"teacher_cache must be auto, on or off, got {self.teacher_cache!r}")
        if self.val_every < 1:
            raise UserError(f"val_every must be >= 1 (validate every N epochs and after the last), got {self.val_every}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1) (0: train on every image, no validation), "
                            f"got {self.val_fraction}")


@dataclass(frozen=True)
class Trial:
    """One trial, fully resolved: what runs, on what, with which anomalies.

    Attributes:
        train: data, budget and device; ``category`` is always set.
        method_config: the method's config (the paper's defaults with every setting applied).
        synthesis: the synthetic anomalies training makes: what the method's config asks
            for with the ``synthesis`` section applied; ``None`` when it makes none.
        settings: the layers it was resolved from, for ``--explain`` (``None`` when built
            directly).
    """

    train: TrainConfig
    method_config: MethodConfig
    synthesis: SynthesisConfig | None
    #: Where each value came from (:mod:`kdsearch.settings`); not part of what the trial is.
    settings: Settings | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """The flat configuration a trial's key hashes (and ``config_json`` stores).

        Every key training field, the full method config and every synthesis field the
        trial's ``synthesis`` section may set (``None`` when it makes no anomalies; the
        fields the method decides follow from its config). Files count by content, not by
        where they lie: the same weights or textures elsewhere are the same trial, and a
        changed file is a new one. Keys of this rule are :data:`kdsearch.results.keys.KEY_VERSION`;
        :mod:`kdsearch.key_migration` rewrites rows keyed by an earlier rule.
        """
        from kdsearch.config import to_dict
        from kdsearch.nn.backbones import weights_fingerprint
        from kdsearch.synthesis.textures import texture_fingerprint

        method_cfg = to_dict(self.method_config)
        if method_cfg.get("texture_root") is not None:
            method_cfg["texture_root"] = texture_fingerprint(method_cfg["texture_root"])
        if method_cfg.get("pretrained") not in (None, "none", "auto"):
            method_cfg["pretrained"] = weights_fingerprint(method_cfg["pretrained"])
        return self.identity_with(method_cfg)

    def identity_with(self, method_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """:attr:`identity` with the method's config as given (its files already fingerprinted:
        a stored row's, which :mod:`kdsearch.key_migration` rebuilds a trial from)."""
        from kdsearch.config import to_dict
        from kdsearch.synthesis import method_synthesis_fields

        train_part = {f.name: getattr(self.train, f.name) for f in dataclasses.fields(TrainConfig) if f.metadata.get("key")}
        synthesis = None if self.synthesis is None else {
            k: v for k, v in to_dict(self.synthesis).items() if k not in method_synthesis_fields()}
        return {"method": self.train.method, **train_part, **method_cfg, "synthesis": synthesis}

    @functools.cached_property
    def training_identity(self) -> dict[str, Any]:
        """What decides the trained weights: :attr:`identity` less the fields that act only
        at inference (:meth:`MethodConfig.inference_fields`) and those this configuration
        makes inert, in the method's one spelling (:meth:`MethodConfig.training_spelling`).
        Two trials with equal training identities (and method, dataset, category, seed) train
        the same model; ``training_key`` hashes it."""
        return self.training_identity_of(self.identity)

    def training_identity_of(self, identity: Mapping[str, Any]) -> dict[str, Any]:
        """:attr:`training_identity` of this trial's ``identity`` (as :meth:`identity_with` gives it)."""
        from kdsearch.synthesis import inert_synthesis_fields

        inert = self.inert_settings | self.category_inert_settings
        dropped = set(self.method_config.inference_fields()) | {name for name in inert if "." not in name}
        kept = {k: v for k, v in identity.items() if k not in dropped}
        if kept.get("synthesis") is not None and self.synthesis is not None:
            # As the category trains it: a texture's foreground is the whole image.
            ignored = inert_synthesis_fields(self.synthesis.for_category(self.category_kind))
            kept["synthesis"] = {k: v for k, v in kept["synthesis"].items()
                                 if f"synthesis.{k}" not in inert and k not in ignored}
        return self.method_config.training_spelling(kept)

    @functools.cached_property
    def category_inert_settings(self) -> dict[str, str]:
        """Method fields this trial's category makes inert (DMDD's ``fas`` on a texture)."""
        return self.method_config.category_inert_fields(self.category_kind)

    @functools.cached_property
    def category_kind(self) -> str | None:
        """``texture`` or ``object`` (:func:`kdsearch.catalog.category_kind`); None where the catalog
        cannot tell (a category only its own folder could name)."""
        from kdsearch.catalog import category_kind

        return category_kind(self.train.dataset, self.train.category)

    @property
    def scoring(self) -> dict[str, Any]:
        """The inference-only fields' values: what tells apart rows that share a training."""
        return {k: v for k, v in self.identity.items() if k in self.method_config.inference_fields()}

    @functools.cached_property
    def inert_settings(self) -> dict[str, str]:
        """Settings this trial ignores, each with the reason (what makes it inert).

        The method's own inert fields by their bare names, synthesis fields as
        ``synthesis.<field>``, and ``teacher_cache`` where nothing can be cached.
        """
        from kdsearch.synthesis import inert_synthesis_fields

        inert = dict(self.method_config.inert_fields())
        if self.method_config.teacher_cache_input() is None:
            inert["teacher_cache"] = f"{self.train.method} has no frozen teacher that sees the clean training image here"
        elif self.synthesis is not None and self.synthesis.normal_rotation > 0:
            inert["teacher_cache"] = "synthesis.normal_rotation rotates the clean images anew every epoch"
        if self.synthesis is None:
            reason = f"{self.train.method} makes no synthetic anomalies with these settings"
            inert.update({f"synthesis.{name}": reason for name in _synthesis_fields()})
        else:
            inert.update({f"synthesis.{name}": why for name, why in inert_synthesis_fields(self.synthesis).items()})
        return inert


def _synthesis_fields() -> list[str]:
    from kdsearch.synthesis import SynthesisConfig, method_synthesis_fields

    return [f.name for f in dataclasses.fields(SynthesisConfig) if f.name not in method_synthesis_fields()]


def _train_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != "method"]


def _method_fields(method: str) -> list[str]:
    from kdsearch.methods import get_method_class

    return [f.name for f in dataclasses.fields(get_method_class(method).config_class)]


def _unknown(key: str, method: str) -> UserError:
    """An unknown setting: its section's fields (every section's, for a bare name) and close matches."""
    section, dot, _ = key.partition(".")
    fields = {"train": [f"train.{f}" for f in _train_fields()],
              "method": [f"method.{f}" for f in _method_fields(method)],
              "synthesis": [f"synthesis.{f}" for f in _synthesis_fields()]}
    if dot and section in fields:
        candidates, known = fields[section], f"{section} fields: {', '.join(fields[section])}"
    else:
        candidates = [*_train_fields(), *_method_fields(method), *fields["synthesis"]]
        known = (f"training fields: {', '.join(_train_fields())}; {method} fields: {', '.join(_method_fields(method))}; "
                 f"synthesis fields: {', '.join(fields['synthesis'])}")
    # Matched on the field part: a shared "synthesis." would make every name look close.
    by_field = {c.partition(".")[2] or c: c for c in candidates}
    name = key.partition(".")[2] or key
    starting = [f for f in by_field if f.startswith(name)]
    close = [by_field[f] for f in dict.fromkeys([*starting, *difflib.get_close_matches(name, by_field, n=3, cutoff=0.6)])][:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return UserError(f"unknown setting {key!r}{hint} ({known})")


def canonical_settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with every key in its one spelling, checked.

    Training and method fields become bare names (``train.epochs`` → ``epochs``),
    synthesis fields ``synthesis.<field>``; a section given as a mapping (YAML
    ``synthesis: {perlin_threshold: 0.3}``) is flattened. ``seeds`` and ``categories``
    pass through.

    Raises:
        UserError: a key that names no field of its section, or a synthesis field the
            method decides itself (its kind, foreground, probability, textures).
    """
    from kdsearch.synthesis import method_synthesis_fields

    train_fields, method_fields = set(_train_fields()), set(_method_fields(method))
    out: dict[str, Any] = {}
    for key, value in settings.items():
        section, dot, name = key.partition(".")
        if not dot and key in SECTIONS and isinstance(value, Mapping):
            out.update(canonical_settings(method, {f"{key}.{k}": v for k, v in value.items()}))
            continue
        if not dot:
            section, name = ("run" if key in RUN_KEYS else "train" if key in train_fields
                             else "method" if key in method_fields else ""), key
        if section == "run":
            out[name] = value
        elif section == "train" and name in train_fields or section == "method" and name in method_fields:
            out[name] = value
        elif section == "synthesis" and name in method_synthesis_fields():
            raise UserError(f"synthesis.{name} is decided by {method}'s own fields (it follows the paper's "
                            f"method); set the method field that chooses it instead")
        elif section == "synthesis" and name in _synthesis_fields():
            out[key] = value
        else:
            raise _unknown(key, method)
    return out


def explicit_names(method: str, settings: Mapping[str, Any]) -> set[str]:
    """The canonical names of settings given explicitly (``--set``, an axis's values)."""
    return set(canonical_settings(method, settings))


def resolve(settings: Settings) -> Trial:
    """The trial ``settings`` describe (:func:`kdsearch.settings.settings_for`): the training,
    method and synthesis configs built from the merged layers, every field's name, type and
    value checked before any data is loaded.

    Whether an explicit setting changes anything is judged by the caller, over every row of
    its run at once (:func:`check_explicit_settings`); :func:`single_trial` does it for one.

    Raises:
        UserError: a bad value, or method fields that clash with training fields.
    """
    from kdsearch.config import apply_overrides
    from kdsearch.methods import build_config

    method = settings.method
    clash = set(_train_fields()) & set(_method_fields(method))
    if clash:  # a bare name would be ambiguous, and the flat identity would lose one of them
        raise UserError(f"method {method!r} has config fields {sorted(clash)} that clash with training fields")
    merged = settings.values
    train_fields = set(_train_fields())
    train_settings = {k: v for k, v in merged.items() if k in train_fields}
    synthesis_settings = {k.partition(".")[2]: v for k, v in merged.items() if k.startswith("synthesis.")}
    method_settings = {k: v for k, v in merged.items() if k not in train_fields and not k.startswith("synthesis.")}
    train = apply_overrides(TrainConfig(method=method), train_settings, what="training")
    train.validate()
    method_config = build_config(method, method_settings)
    method_config.validate(train.image_size)
    synthesis = method_config.synthesis()
    if synthesis is not None and synthesis_settings:
        synthesis = apply_overrides(synthesis, synthesis_settings, what="synthesis")
    return Trial(train=train, method_config=method_config, synthesis=synthesis, settings=settings)


def check_explicit_settings(rows: Sequence[tuple[str, Trial, Collection[str]]]) -> list[str]:
    """Refuse settings that change nothing; return warnings for those only some rows ignore.

    A setting is explicit when the user or the search space asked for it (``--set``, an
    axis's ``fixed`` values, an axis row); defaults and profile values are not, so a
    default that a configuration ignores stays silent.

    Args:
        rows: one entry per distinct row of a run: (row label, the row's trial, the
            canonical names (:func:`explicit_names`) of the settings given for that row).

    Returns:
        One warning per explicit setting that some rows use and others ignore.

    Raises:
        UserError: an explicit setting that every row setting it ignores, naming what
            makes it inert.
    """
    inert = {label: trial.inert_settings for label, trial, _ in rows}
    names = list(dict.fromkeys(name for _, _, explicit in rows for name in explicit))
    notes = []
    for name in names:
        setting = [label for label, _, explicit in rows if name in explicit]
        ignoring = [label for label in setting if name in inert[label]]
        if not ignoring:
            continue
        if len(ignoring) == len(setting):
            where = "" if len(setting) == len(rows) else f" (in rows {', '.join(setting)})"
            raise UserError(f"{name} is set{where} but nothing uses it: {inert[ignoring[0]][name]}; "
                            f"remove the {name} setting or change the one that makes it inert")
        reasons = sorted({inert[label][name] for label in ignoring})
        notes.append(f"{name} is ignored by row{'s' if len(ignoring) > 1 else ''} {', '.join(ignoring)}: "
                     f"{'; '.join(reasons)}")
    return notes
