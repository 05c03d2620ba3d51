"""GLCCL (Global-Local Contrastive Consistency Learning; official code JingXiaolun/GLCCL)."""

from methods.glccl.method import GLCCL, GLCCLParams

__all__ = ["GLCCL", "GLCCLParams"]
