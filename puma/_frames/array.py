"""The numpy array of a frame, whose refused writes say why."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from puma._frames.errors import FrameOwnershipError

__all__ = ["FrameArray"]


class FrameArray(np.ndarray):
    """The numpy array of a frame: an ordinary ndarray whose writes say why they are refused.

    Once its frame is released or handed over (and for a read-only share),
    the array and the views taken from it are read-only, and assigning into
    them raises :class:`FrameOwnershipError` naming the frame and what
    happened to it.  Results of arithmetic on it are plain ndarrays.
    """

    _puma_frame: Any  # the Frame it belongs to (None for a plain copy)

    def __array_finalize__(self, obj: Any) -> None:
        frame = getattr(obj, "_puma_frame", None)
        self._puma_frame = frame
        if frame is not None:
            frame._views.append(weakref.ref(self))

    def _refusal(self) -> FrameOwnershipError:
        frame = self._puma_frame
        return FrameOwnershipError(frame._why() if frame is not None else "this frame array is read-only")

    def __setitem__(self, key: Any, value: Any) -> None:
        if not self.flags.writeable:
            raise self._refusal()
        super().__setitem__(key, value)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out is not None:
            for target in out:
                if isinstance(target, FrameArray) and not target.flags.writeable:
                    raise target._refusal()
            kwargs["out"] = tuple(t.view(np.ndarray) if isinstance(t, FrameArray) else t for t in out)
        args = [x.view(np.ndarray) if isinstance(x, FrameArray) else x for x in inputs]
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None and len(out) == 1:
            return out[0]  # in place: the caller's own array
        return result

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.view(np.ndarray).__reduce_ex__(protocol)  # a copy travels as a plain array
