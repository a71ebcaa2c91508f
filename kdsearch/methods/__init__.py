"""Anomaly-detection methods, one module each, plugged into a registry."""
from kdsearch.methods._registry import (
    build_config,
    check_explicit_settings,
    create_method,
    get_method_class,
    list_methods,
    register_method,
)
from kdsearch.methods.base import AnomalyMethod, Batch, MethodConfig, SynthesisConfig

# Importing a method module registers it.
from kdsearch.methods import rd4ad  # noqa: E402,F401
from kdsearch.methods import adps  # noqa: E402,F401
from kdsearch.methods import dskd  # noqa: E402,F401
from kdsearch.methods import dmdd  # noqa: E402,F401
from kdsearch.methods import mrkd  # noqa: E402,F401

__all__ = [
    "AnomalyMethod", "Batch", "MethodConfig", "SynthesisConfig",
    "build_config", "check_explicit_settings", "create_method", "get_method_class", "list_methods", "register_method",
]
