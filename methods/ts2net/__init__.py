"""TS2-Net (Token Shift and Selection; official code yuqi657/ts2_net)."""

from methods.ts2net.method import TS2Net, TS2NetParams

__all__ = ["TS2Net", "TS2NetParams"]
