"""Anomaly-detection methods, one module each, plugged into a registry.

Every module of this package is imported here, so a method file dropped into
``kdsearch/methods/`` registers itself (``@register_method``). Methods kept outside the
package are named in ``$KDSEARCH_METHODS`` (comma-separated importable modules): the
registry imports them on first use in every process, Ray workers included, since they
inherit the environment.
"""
import importlib
import pkgutil

from kdsearch.methods._registry import (
    METHODS_ENV,
    build_config,
    create_method,
    get_method_class,
    list_methods,
    register_method,
)
from kdsearch.methods.base import AnomalyMethod, Batch, MethodConfig, SynthesisConfig, TrainingPhase

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AnomalyMethod", "Batch", "MethodConfig", "SynthesisConfig", "TrainingPhase", "METHODS_ENV",
    "build_config", "create_method", "get_method_class", "list_methods", "register_method",
]
