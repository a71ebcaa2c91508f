"""kdsearch: reproduce, ablate and tune knowledge-distillation anomaly detectors."""
from kdsearch._torchvision_compat import install_import_hook

install_import_hook()

__version__ = "0.1.0"
