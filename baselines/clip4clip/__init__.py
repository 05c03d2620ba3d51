"""CLIP4Clip heads (Luo et al., Neurocomputing 2022; official code ArrowLuo/CLIP4Clip)."""

from baselines.clip4clip.meanp import MeanP
from baselines.clip4clip.sequential import SeqLSTM, SeqTransf
from baselines.clip4clip.tight import TightTransf

__all__ = ["MeanP", "SeqLSTM", "SeqTransf", "TightTransf"]
