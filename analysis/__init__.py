"""Rebuild the papers' ablation tables from a kdsearch results tree (reads Parquet only)."""
