"""DiCoSA (Text-Video Retrieval with Disentangled Conceptualization and Set-to-Set Alignment; official code
jpthu17/DiCoSA)."""

from methods.dicosa.method import DiCoSA, DiCoSAParams

__all__ = ["DiCoSA", "DiCoSAParams"]
