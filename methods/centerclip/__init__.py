"""CenterCLIP (Token Clustering for Efficient Text-Video Retrieval; official code mzhaoshuai/CenterCLIP)."""

from methods.centerclip.method import CenterCLIP, CenterCLIPParams

__all__ = ["CenterCLIP", "CenterCLIPParams"]
