"""X-CLIP (multi-grained contrastive learning; official code xuguohai/X-CLIP)."""

from methods.xclip.method import XCLIP, XCLIPParams

__all__ = ["XCLIP", "XCLIPParams"]
