"""Method registry: ``register_method`` decorates a class, ``create_method`` builds one."""
from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Mapping
from typing import Any

from kdsearch.config import apply_overrides
from kdsearch.errors import UserError
from kdsearch.methods.base import AnomalyMethod, MethodConfig

_METHODS: dict[str, type[AnomalyMethod]] = {}
#: Comma-separated modules outside the package that register methods when imported.
METHODS_ENV = "KDSEARCH_METHODS"
_imported_from_env: set[str] = set()


def _import_env_methods() -> None:
    for name in filter(None, (n.strip() for n in os.environ.get(METHODS_ENV, "").split(","))):
        if name in _imported_from_env:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"${METHODS_ENV} names {name!r}, which cannot be imported ({exc}); put its folder on "
                            f"PYTHONPATH or remove it from ${METHODS_ENV}") from exc
        _imported_from_env.add(name)


def register_method(name: str):
    """Class decorator adding a method under ``name`` (warns when it replaces one)."""
    def decorate(cls: type[AnomalyMethod]) -> type[AnomalyMethod]:
        if name in _METHODS and _METHODS[name] is not cls:
            warnings.warn(f"method {name!r} re-registered; replacing {_METHODS[name].__name__}", stacklevel=2)
        _METHODS[name] = cls
        cls.method_name = name
        return cls
    return decorate


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _import_env_methods()
    return sorted(_METHODS)


def get_method_class(name: str) -> type[AnomalyMethod]:
    """The class registered as ``name``; :class:`UserError` if there is none."""
    _import_env_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(list_methods())}") from None


def build_config(name: str, overrides: Mapping[str, Any] | None = None) -> MethodConfig:
    """The method's config dataclass with the paper's defaults and ``overrides`` applied."""
    cls = get_method_class(name)
    return apply_overrides(cls.config_class(), overrides or {}, what=f"{name} config")


def create_method(name: str, image_size: int, config: MethodConfig | Mapping[str, Any] | None = None) -> AnomalyMethod:
    """Build method ``name`` for ``image_size`` inputs.

    ``config`` is the method's config (a :class:`~kdsearch.trial.Trial`'s), or overrides of
    its defaults (``None``: the paper's defaults).
    """
    config = config if isinstance(config, MethodConfig) else build_config(name, config)
    return get_method_class(name)(config, image_size)
