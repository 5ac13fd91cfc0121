"""Per-process state in forked children: refreshed by the parts a process uses, whoever forks.

A part of puma registers its after-fork refresh when it is first used in a
process (see ``puma/_core/forking.py``), so these run in a fresh interpreter:
the test process itself has used every part already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import puma
    from puma._buffers import shared
    from puma._frames import registry

    def in_child(check):
        pid = os.fork()
        if pid == 0:
            try:
                ok = check()
            except BaseException as exc:
                print("child failed:", repr(exc), flush=True)
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0

    env = puma.ProcessEnvironment("fork")

    def first_use_in_child():
        # This process never made a buffer or a pool before the fork: no hook ran, and the
        # first use here must still see this process's pid.
        buf = env.buffer(int, 2, "b")
        sub = buf.subscribe()
        with buf.publisher() as pub:
            pub.publish(7)
            assert sub.receive(timeout=5) == 7
        pool = env.frame_pool((4,), np.uint8, 1, "p")
        with pool.borrow() as frame:
            frame.array[:] = 1
        assert shared._pid == os.getpid() and registry.pid == os.getpid()
        pool.close()
        return True

    assert in_child(first_use_in_child), "first use in a forked child"

    # Used here now: a child forked from here on is refreshed by the hooks, before any use.
    buf = env.buffer(int, 2, "here")
    pool = env.frame_pool((4,), np.uint8, 1, "here")
    assert in_child(lambda: shared._pid == os.getpid() and registry.pid == os.getpid()), "inherited use"
    # and a frame borrowed in such a child is that child's (the pool's ownership checks use the pid)
    def borrow_in_child():
        with pool.borrow(timeout=5) as frame:
            frame.array[:] = 2
            return bool(frame.held)
    assert in_child(borrow_in_child), "borrow in a forked child"
    pool.close()
    print("ok")
    """
)


def test_forked_children_keep_their_own_pid_in_buffers_and_pools() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")


def test_importing_puma_registers_only_the_signal_hook() -> None:
    """A program that imports puma and never uses a part pays nothing for it in the children it forks.

    (The signal watcher's hook stays: which thread is the main one must be right in every child.)
    """
    script = textwrap.dedent(
        """
        import gc, threading
        import puma
        import puma._environments.process, puma._buffers.process, puma._frames.arena  # noqa
        hooks = next(o for o in gc.get_objects() if isinstance(o, list) and any(x is threading._after_fork for x in o))
        print(sorted(h.__module__ for h in hooks if getattr(h, "__module__", "").startswith("puma")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['puma._core.signals']"
