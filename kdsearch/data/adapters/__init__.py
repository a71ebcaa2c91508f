"""Dataset adapters, one module each, plugged into a registry.

Every module of this package is imported here, as :mod:`kdsearch.methods` imports its
methods, so an adapter file dropped into ``kdsearch/data/adapters/`` registers itself
(``@register_dataset``); no list names them. Its dataset's facts come from
:data:`kdsearch.catalog.CATALOG`.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
