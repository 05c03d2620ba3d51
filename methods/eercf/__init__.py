"""EERCF (Efficient and Effective text-video Retrieval via Coarse-to-Fine; official code adxcreative/EERCF)."""

from methods.eercf.method import EERCF, EERCFParams

__all__ = ["EERCF", "EERCFParams"]
