"""Dataset adapters; importing this package registers every one of them."""
from kdsearch.data.adapters import btad, ksdd, ksdd2, mpdd, mtd, mvtec, mvtec3d, synthetic

__all__ = ["btad", "ksdd", "ksdd2", "mpdd", "mtd", "mvtec", "mvtec3d", "synthetic"]
