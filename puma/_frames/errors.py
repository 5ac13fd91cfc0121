"""The errors of frames: a frame used by a holder that no longer has it."""

from __future__ import annotations

from puma._core.errors import PumaError

__all__ = ["FrameDropped", "FrameOwnershipError"]


class FrameOwnershipError(PumaError, ValueError):
    """A frame (or its array) was used by a holder that no longer owns it, or a read-only share was written."""


class FrameDropped(FrameOwnershipError):
    """A frame received from a drop-oldest pool was dropped before it arrived (see :attr:`Frame.dropped`)."""
