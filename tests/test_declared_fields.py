"""Trainings that one training key merges are the same training, bit for bit.

A row's training key (:attr:`kdsearch.trial.Trial.training_identity`) leaves out what each
method declares by hand: the fields a configuration makes inert (``inert_fields``), those a
category makes inert (``category_inert_fields``), those that act only when a trained model
scores images (``inference_fields``), and the one spelling of configurations that train alike
(``training_spelling``). A wrong entry would merge two different trainings across tables.

The cases are generated from those declarations for every registered method, so a new method
is covered without an edit here. A method's configurations are its defaults, each of its
fields moved alone to another value, and every row of its search space's grid axes; each
declaration is tested under the first configuration that makes it:

* a field declared inert (by the configuration, or by a category of that kind) trains the same
  weights, bit for bit (``torch.equal`` on every tensor of the trained state), at its value and
  at another valid one;
* an inference field trains the same weights, and the scoring differs: the anomaly maps, or
  the image scores made from them (ADPS's PSM map is never smoothed: σ acts on its score
  only). An inference field that changes neither is inert there and is to be declared so, as
  DMDD declares σ under the MSN;
* two configurations of one training identity that differ beyond the fields both leave out
  (what ``training_spelling`` merges) train the same weights.

Each training is the smoke profile made smaller still (32 px, two images, one step in each of
two epochs, fp32, one CPU thread), stopped before the test split is scored; the cases of one
configuration follow each other and share its training. Each method's first case among those
it declares itself runs by default, every case with ``-m slow``. The synthesis section's inert
fields (:func:`kdsearch.synthesis.inert_synthesis_fields`) are not a method's declarations and
are not generated here.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import typing
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import torch

from kdsearch import catalog
from kdsearch import data as data_lib
from kdsearch.errors import UserError
from kdsearch.evaluate import predict
from kdsearch.loop import fit_and_evaluate, load_trial_data
from kdsearch.methods import MethodConfig, get_method_class, list_methods
from kdsearch.runtime import build_method, build_numerics
from kdsearch.spaces import space_for_method
from kdsearch.settings import settings_for
from kdsearch.trial import Trial, resolve
from kdsearch.settings import single_trial

#: What every training here runs: one step per epoch (two images in one batch) for two epochs,
#: so an epoch boundary (scheduler, the validation between epochs, fresh batches) and Adam's
#: second step are inside it. 32 px is the smallest size every method accepts.
BUDGET = {"device": "cpu", "precision": "fp32", "image_size": 32, "epochs": 2, "batch_size": 2,
          "max_train_images": 2}

#: Fields whose other value no type rule finds, with the values to choose from. ``msn_synthesis``
#: is a plain string whose choices only DMDD's ``validate`` knows; ``pretrained`` is a keyword or
#: a file: ``auto`` is the other keyword (where the field is inert nothing loads it; where it is
#: not, ImageNet weights fail to load offline or change the weights, so the case cannot pass).
OTHER_VALUES: dict[str, tuple[Any, ...]] = {"msn_synthesis": ("own", "shared"), "pretrained": ("none", "auto")}

Settings = tuple[tuple[str, Any], ...]


def _frozen(settings: dict[str, Any]) -> Settings:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))


@functools.cache
def _profile(method: str) -> str | None:
    space = space_for_method(method)
    return "smoke" if space is not None and "smoke" in space.profiles else None


@functools.cache
def _base_category(method: str) -> str:
    space = space_for_method(method)
    categories = (space.profile("smoke").get("categories") if _profile(method) else None) or []
    dataset = single_trial(method, _profile(method), BUDGET).train.dataset
    return categories[0] if categories else data_lib.list_categories(dataset)[0]


@functools.cache
def _trial(method: str, settings: Settings, category: str | None = None) -> Trial:
    """The trial of ``settings`` at :data:`BUDGET`, set on purpose even where inert: the
    planner's path, which judges inert settings over a whole job (resolve alone refuses them)."""
    return resolve(settings_for(method, profile=_profile(method),
                                user={**BUDGET, **dict(settings), "category": category or _base_category(method)}))


def _candidates(value: Any, annotation: Any) -> list[Any]:
    """Other values of a field by its type: another choice, the other bool, a number doubled or
    halved (or moved by one or two), a tuple emptied or cut by one."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return [a for a in args if a != value]
    if annotation is bool:
        return [not value]
    if annotation is int:
        return [2 * value, value // 2, value + 1, value - 1, value + 2, value - 2]
    if annotation is float:
        return [2 * value, value / 2] if value else [0.5, 1.0]
    if origin is tuple:
        return [(), value[:-1], value[1:]]
    return []


def _other_values(method: str, settings: Settings, name: str, category: str | None = None) -> list[Any]:
    """Values of field ``name`` other than its value under ``settings``: :data:`OTHER_VALUES`'
    or the type rule's, in order, valid or not."""
    config = _trial(method, settings, category).method_config
    current = getattr(config, name)
    candidates = OTHER_VALUES.get(name) or _candidates(current, typing.get_type_hints(type(config))[name])
    return [c for c in candidates if c != current]


def _valid(method: str, settings: Settings, category: str | None = None) -> bool:
    try:
        _trial(method, settings, category)
    except UserError:
        return False
    return True


def _with(settings: Settings, name: str, value: Any) -> Settings:
    return _frozen({**dict(settings), name: value})


def _other_value(method: str, settings: Settings, name: str, category: str | None = None) -> tuple[Any] | None:
    """``(value,)``: the first valid value of field ``name`` other than its value under
    ``settings``; ``None`` when there is none."""
    for candidate in _other_values(method, settings, name, category):
        if _valid(method, _with(settings, name, candidate), category):
            return (candidate,)
    return None


def _method_fields(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_method_class(method).config_class)]


def configurations(method: str) -> list[Settings]:
    """The defaults, each field moved alone to its other value, each grid row of the search
    space (its method fields): every one that resolves, once, in that order."""
    found: list[dict[str, Any]] = [{}]
    for name in _method_fields(method):
        other = _other_value(method, (), name)
        if other is not None:
            found.append({name: other[0]})
    space = space_for_method(method)
    fields = set(_method_fields(method))
    for axis in (space.axes.values() if space is not None else []):
        if axis.is_grid:
            found += [{k: v for k, v in axis.overrides(label).items() if k in fields} for label in axis.rows]
    return list(dict.fromkeys(settings for settings in map(_frozen, found) if _valid(method, settings)))


@dataclass(frozen=True)
class Case:
    """Two trainings that must be bit-identical.

    Attributes:
        method: the method.
        kind: ``inert``, ``category`` (inert on ``category``), ``inference`` or ``merged``.
        name: the declared field, or the fields two merged configurations differ in.
        base: the configuration the field is declared under.
        other: the second training's settings; ``None`` when the field has no other valid value there.
        category: the category both train on.
        reason: the declaration's reason.
    """

    method: str
    kind: str
    name: str
    base: Settings
    other: Settings | None
    category: str
    reason: str = ""

    @property
    def id(self) -> str:
        def spelled(settings: Settings) -> str:
            return ",".join(f"{k}={v}" for k, v in settings) or "defaults"

        second = f"-{spelled(self.other)}" if self.kind == "merged" and self.other is not None else ""
        return f"{self.method}-{self.kind}-{self.name}-{spelled(self.base)}{second}"


def _field_case(method: str, kind: str, name: str, base: Settings, category: str, reason: str = "") -> Case:
    other = _other_value(method, base, name, category)
    return Case(method, kind, name, base, None if other is None else _with(base, name, other[0]), category, reason)


def _category_of_kind(dataset: str, kind: str) -> str | None:
    return next((c for c in data_lib.list_categories(dataset) if catalog.category_kind(dataset, c) == kind), None)


def _dropped(trial: Trial) -> set[str]:
    """The method fields ``trial``'s declarations leave out of its training identity."""
    return set(trial.method_config.inert_fields()) | set(trial.method_config.inference_fields()) | set(trial.category_inert_settings)


def cases(method: str) -> list[Case]:
    """Each declaration of ``method``'s configurations, under the first configuration that makes
    it (an inert field once per reason; a category-inert one once per reason and per set of
    phases that draw anomalies, since the category acts through them), then the merged pairs."""
    home = _base_category(method)
    dataset = _trial(method, ()).train.dataset
    home_kind = catalog.category_kind(dataset, home)
    found: dict[tuple, Case] = {}

    def add(key: tuple, kind: str, name: str, base: Settings, category: str, reason: str = "") -> None:
        if key not in found:
            found[key] = _field_case(method, kind, name, base, category, reason)

    configs = configurations(method)
    for base in configs:
        config = _trial(method, base).method_config
        inert = config.inert_fields()
        for name, reason in inert.items():
            add(("inert", name, reason), "inert", name, base, home, reason)
        synthesis = config.synthesis()
        phases = (synthesis.kind if synthesis is not None else None, tuple(config.phase_synthesis()))
        for kind in ("texture", "object"):
            category = home if home_kind == kind else _category_of_kind(dataset, kind)
            for name, reason in (config.category_inert_fields(kind) if category is not None else {}).items():
                if name not in inert:
                    add(("category", name, kind, reason, phases), "category", name, base, category, reason)
        for name in config.inference_fields():
            if name not in inert and name not in config.category_inert_fields(home_kind):
                add(("inference", name), "inference", name, base, home)
    # Two configurations of one training identity that differ in more than fields both leave
    # out: a merge no single declaration makes (training_spelling's).
    for first, second in itertools.combinations(configs, 2):
        a, b = _trial(method, first), _trial(method, second)
        if a.training_identity == b.training_identity:
            differ = {k for k in dict(first).keys() | dict(second).keys() if getattr(a.method_config, k) != getattr(b.method_config, k)}
            if not differ <= _dropped(a) & _dropped(b):
                found.setdefault(("merged", second), Case(method, "merged", "+".join(sorted(differ)), first, second, home))
    return list(found.values())


def _own(case: Case) -> bool:
    """Whether the method makes this declaration itself, not :class:`MethodConfig` for every method."""
    config = _trial(case.method, case.base).method_config
    if case.kind == "inert":
        return case.name not in MethodConfig.inert_fields(config)
    if case.kind == "inference":
        return case.name not in MethodConfig.inference_fields(config)
    return True


ALL_CASES = [case for method in list_methods() for case in cases(method)]
#: The default run: each method's first case among those it declares itself, else its first.
DEFAULT_RUN = {method: next((c for c in mine if _own(c)), mine[0])
               for method in list_methods() if (mine := [c for c in ALL_CASES if c.method == method])}


def _param(case: Case):
    marks = () if DEFAULT_RUN[case.method] is case else (pytest.mark.slow,)
    return pytest.param(case, id=case.id, marks=marks)


class _Trained(Exception):
    """Raised from the last epoch's callback: the weights are taken, the test split is not scored."""


#: The last few trainings' weights: cases of one configuration come one after the other, so its
#: training runs once (every weight of every training kept would take gigabytes).
_RECENT: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()


def trained_weights(trial: Trial) -> dict[str, torch.Tensor]:
    """The trained state (:meth:`~kdsearch.methods.AnomalyMethod.trained_state_dict`) of
    ``trial``'s training, as the loop runs it."""
    key = (trial.train, trial.method_config, trial.synthesis)
    if key not in _RECENT:
        taken: dict[str, torch.Tensor] = {}

        def on_epoch(record: dict[str, Any], state) -> None:
            if record["epoch"] == trial.train.epochs:
                taken.update({k: v.clone() for k, v in state()["model"].items()})
                raise _Trained

        try:
            outcome = fit_and_evaluate(trial, on_epoch=on_epoch, progress=False)
        except _Trained:
            pass
        else:
            pytest.fail(f"{trial.train.method} did not finish training: {outcome.status} {outcome.error}")
        _RECENT[key] = taken
        while len(_RECENT) > 4:
            _RECENT.popitem(last=False)
    _RECENT.move_to_end(key)
    return _RECENT[key]


def scoring(trial: Trial, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps and image scores of eight test images under ``trial``'s config, on the
    trial's own random stream (MRKD masks features at test time), as the loop evaluates."""
    numerics = build_numerics(trial.train)
    method = build_method(trial, numerics, {"model": weights})
    test = load_trial_data(trial.train).test
    images = test.images[:: max(1, len(test.images) // 8)][:8]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.train.seed)
        return predict(method, images, trial.train.eval_batch_size, numerics)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the same kernels for every training here, and no spinning threads on
    a shared machine (two threads made these trainings ten times slower on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _different(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("case", [_param(case) for case in ALL_CASES])
def test_a_declared_field_leaves_the_training_bit_identical(case: Case) -> None:
    if case.other is None:
        # Nothing to merge when the configuration refuses every other value of the field (DSKD's
        # dfe under t_e); a field no rule gives another value must get one in OTHER_VALUES.
        refused = _other_values(case.method, case.base, case.name, case.category)
        assert refused, f"{case.method}.{case.name} has no other value by its type: add its values to OTHER_VALUES"
        assert not any(_valid(case.method, _with(case.base, case.name, v), case.category) for v in refused)
        return
    first, second = _trial(case.method, case.base, case.category), _trial(case.method, case.other, case.category)
    # The key merges the two rows, and only the key: they stay two rows.
    assert first.training_identity == second.training_identity and first.identity != second.identity
    weights = trained_weights(first)
    assert _different(weights, trained_weights(second)) == [], (
        f"{case.method}: {case.name} is declared {case.kind} ({case.reason or 'inference only'}) under "
        f"{dict(case.base) or 'the defaults'} on {case.category}, but it changes the trained weights")
    initial = build_method(first, build_numerics(first.train)).trained_state_dict()
    assert _different(weights, initial), "the training changed nothing: the comparison would prove nothing"
    if case.kind == "inference":
        maps_a, scores_a = scoring(first, weights)
        maps_b, scores_b = scoring(second, weights)
        assert not (torch.equal(maps_a, maps_b) and torch.equal(scores_a, scores_b)), (
            f"{case.method}: inference field {case.name} changes neither the maps nor the image scores")


def test_every_method_has_a_case_in_the_default_run() -> None:
    assert set(DEFAULT_RUN) == set(list_methods())
    assert len({case.id for case in ALL_CASES}) == len(ALL_CASES)


def test_a_method_registered_later_gets_its_cases_with_no_edit(tmp_path, monkeypatch) -> None:
    from test_sixth_method import TOY_YAML, ToyAutoencoder

    from kdsearch.methods import _registry
    from kdsearch.spaces import SEARCH_SPACES_ENV

    (tmp_path / "toy.yaml").write_text(TOY_YAML)
    monkeypatch.setenv(SEARCH_SPACES_ENV, str(tmp_path))
    monkeypatch.setitem(_registry._METHODS, "toy", ToyAutoencoder)
    monkeypatch.setattr(ToyAutoencoder, "method_name", "toy", raising=False)
    # The toy declares nothing of its own: MethodConfig's lr_gamma (no milestones) and σ.
    assert [(c.kind, c.name, c.other) for c in cases("toy")] == [
        ("inert", "lr_gamma", (("lr_gamma", 0.2),)), ("inference", "gaussian_sigma", (("gaussian_sigma", 8.0),))]
