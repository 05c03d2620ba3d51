"""CLIP-ViP (Xue et al., ICLR 2023; official code microsoft/XPretrain, folder CLIP-ViP)."""

from methods.clipvip.method import CLIPViP, CLIPViPParams

__all__ = ["CLIPViP", "CLIPViPParams"]
