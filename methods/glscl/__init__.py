"""GLSCL (Text-Video Retrieval with Global-Local Semantic Consistent Learning; official code zchoi/GLSCL)."""

from methods.glscl.method import GLSCL, GLSCLParams

__all__ = ["GLSCL", "GLSCLParams"]
