"""Scoped attributes (issue #4): the same observable behaviour in a thread and in processes.

Every behaviour runs on each environment (thread, fork, forkserver, spawn).  The
child is looked at through commands (``read`` and friends run in the child and
return what it sees), the parent directly.
"""

from __future__ import annotations

import ast
import functools
import gc
import importlib
import inspect
import os
import pickle
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import puma
import puma.attributes
from puma import _attributes
from puma.attributes import (
    AttributeScopeError,
    ProcessAction,
    ThreadAction,
    child_only,
    copied,
    factory,
    manually_managed,
    parent_only,
    per_scope_value,
    python_default,
    scope_specific,
    unmanaged,
)

pytestmark = pytest.mark.timeout(60)


# --- runnables and helpers (module level: spawn and forkserver children import them) --------------
def _seen(value: Any) -> Any:
    """What a command sends back about a value: a copy if it is plain data, else its type's name."""
    try:
        return _copy_plain(value)
    except TypeError:
        return f"<{type(value).__name__}>"


def _copy_plain(value: Any) -> Any:
    """A copy of plain data (so a thread child does not hand its own list to the test); TypeError otherwise."""
    if isinstance(value, list):
        return [_copy_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy_plain(v) for k, v in value.items()}
    if isinstance(value, int | str | float | type(None)):
        return value
    raise TypeError(type(value).__name__)


class Probing(puma.Runnable):
    """Waits for commands until stopped; the commands look at its attributes from inside the child."""

    def execute(self) -> None:
        self.wait_for_stop()

    @puma.run_in_child_scope
    def read(self, name: str) -> tuple[str, Any]:
        """("ok", what the child sees) or (the error's type name, its message)."""
        try:
            return ("ok", _seen(getattr(self, name)))
        except AttributeError as exc:
            return (type(exc).__name__, str(exc))

    @puma.run_in_child_scope
    def append(self, name: str, item: Any) -> None:
        getattr(self, name).append(item)

    @puma.run_in_child_scope
    def assign(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    @puma.run_in_child_scope
    def where(self) -> tuple[int, str]:
        return os.getpid(), threading.current_thread().name


class CopiedBox(Probing):
    items = copied[list[int]]()
    nested = copied[dict[str, list[int]]]()

    def __init__(self) -> None:
        super().__init__("copied-box")
        self.items = [1]
        self.nested = {"a": [1]}

    @puma.run_in_child_scope
    def grow_nested(self) -> None:
        self.nested["a"].append(2)


class ChildOnlyBox(Probing):
    secret = child_only[list[int]]()
    never_set = child_only[int]()

    def __init__(self) -> None:
        super().__init__("child-only-box")
        self.secret = [7]


class ParentOnlyBox(Probing):
    window = parent_only[Any]()

    def __init__(self) -> None:
        super().__init__("parent-only-box")
        self.window = threading.Lock()  # does not pickle: fine, it never goes to the child


class ReadsWindow(puma.Runnable):
    """Its execute reads a parent_only attribute: the runnable fails with the scope error."""

    window = parent_only[Any]()

    def __init__(self) -> None:
        super().__init__("reads-window")
        self.window = threading.Lock()

    def execute(self) -> None:
        print(self.window)


class Defaults(Probing):
    shared = unmanaged[list[int]]()
    same = python_default[list[int]]()

    def __init__(self) -> None:
        super().__init__("defaults")
        self.shared = [1]
        self.same = [1]
        self.plain = [1]  # unannotated: Python's default, like unmanaged
        self.rebound = 0


class ManualSharedCopied(Probing):
    value = manually_managed[list[int]](thread=ThreadAction.SHARED, process=ProcessAction.COPIED)

    def __init__(self) -> None:
        super().__init__("manual-shared-copied")
        self.value = [1]


class ManualCopiedNone(Probing):
    value = manually_managed[Any](thread=ThreadAction.COPIED, process=ProcessAction.SET_TO_NONE)

    def __init__(self, value: Any) -> None:
        super().__init__("manual-copied-none")
        self.value = value


class ManualRefused(Probing):
    value = manually_managed[Any](thread=ThreadAction.NOT_ALLOWED, process=ProcessAction.NOT_ALLOWED)

    def __init__(self, value: Any) -> None:
        super().__init__("manual-refused")
        self.value = value


class PerScope(Probing):
    log = copied[list[str]]()

    def __init__(self) -> None:
        super().__init__("per-scope")
        self.log = per_scope_value(["start"])


class Where:
    """Made by a factory: remembers the process and thread that made it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.thread = threading.current_thread().name


def open_report(path: str) -> Any:
    """A child factory that opens a resource: a file, noting who opened it."""
    handle = open(path, "a")  # noqa: SIM115 - closed by the runnable
    handle.write(f"opened {os.getpid()} {threading.current_thread().name}\n")
    return handle


class WritesReport(puma.Runnable):
    report = child_only[Any]()
    where = copied[Where]()

    def __init__(self, path: str) -> None:
        super().__init__("writes-report")
        self.report = factory(functools.partial(open_report, path))
        self.where = factory(Where)

    def execute(self) -> None:
        self.report.write(f"hello from {self.where.pid} {self.where.thread}\n")
        self.report.close()


def child_lock() -> Any:
    return threading.Lock()


class ScopeSpecific(Probing):
    lock = copied[Any]()

    def __init__(self) -> None:
        super().__init__("scope-specific")
        self.lock = scope_specific(threading.RLock(), child_lock)  # an RLock does not pickle either


def failing_factory() -> Any:
    raise OSError("device busy")


class FactoryFails(puma.Runnable):
    device = child_only[Any]()

    def __init__(self) -> None:
        super().__init__("factory-fails")
        self.device = factory(failing_factory)

    def execute(self) -> None:
        pass


class LambdaFactory(puma.Runnable):
    device = child_only[Any]()

    def __init__(self) -> None:
        super().__init__("lambda-factory")
        self.device = factory(lambda: 1)

    def execute(self) -> None:
        pass


class CopiesALock(puma.Runnable):
    lock = copied[Any]()

    def __init__(self) -> None:
        super().__init__("copies-a-lock")
        self.lock = threading.Lock()

    def execute(self) -> None:
        pass


class HoldsALock(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("holds-a-lock")
        self.lock = threading.Lock()  # unannotated: shared in threads, cannot go to a process

    def execute(self) -> None:
        pass


class Unannotated(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("unannotated")
        self.sock = factory(object)  # type: ignore[var-annotated]

    def execute(self) -> None:
        pass


def make_handle(name: str) -> list[Any]:
    return [name, os.getpid()]


class Device:
    """A plain class (not a runnable) using scoped attributes, held by a runnable."""

    handle = child_only[list[Any]]()
    gui = parent_only[Any]()
    settings = copied[dict[str, int]]()

    def __init__(self, name: str) -> None:
        self.name = name
        self.handle = factory(functools.partial(make_handle, name))
        self.gui = threading.Lock()
        self.settings = {"gain": 1}
        self.owner: Any = None


class Rig(Probing):
    """Holds devices directly, in a list, in a dict and in a copied attribute; with cycles."""

    spare = copied[Device]()

    def __init__(self) -> None:
        super().__init__("rig")
        self.main = Device("main")
        self.main.owner = self  # a cycle through the runnable
        self.devices = [self.main, Device("aux")]
        self.by_name = {"main": self.main}
        self.loop: list[Any] = []
        self.loop.append(self.loop)  # a cycle through a container
        self.spare = Device("spare")

    @puma.run_in_child_scope
    def look(self) -> dict[str, Any]:
        main = self.main
        try:
            main.gui
            gui = "readable"
        except AttributeScopeError as exc:
            gui = str(exc)
        main.settings["gain"] = 5
        return {
            "handles": [d.handle for d in self.devices] + [self.spare.handle],
            "same main": self.devices[0] is main and self.by_name["main"] is main,
            "owner is the child's runnable": main.owner is self,
            "loop": self.loop[0] is self.loop,
            "gui": gui,
        }


class PublishesThroughCopied(puma.Runnable):
    outs = copied[dict[str, puma.Buffer[int]]]()

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("publishes", outputs=[out])
        self.outs = {"main": out}

    def execute(self) -> None:
        with self.publisher(self.outs["main"]) as pub:
            pub.publish_many([1, 2, 3])


class Drain(puma.Runnable):
    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("drain")
        self.inp = inp

    def execute(self) -> None:
        self.send_status("values", list(self.inp.subscribe()))


class Callbacks(Probing):
    """A bound method kept as an attribute calls the child's object, not the parent's."""

    count = copied[int]()

    def __init__(self) -> None:
        super().__init__("callbacks")
        self.count = 0
        self.on_tick = self.tick

    def tick(self) -> None:
        self.count += 1

    @puma.run_in_child_scope
    def fire(self) -> int:
        self.on_tick()
        return self.count


class MakesThingsInTheChild(Probing):
    """Objects made inside the child are the child's; runnables made there are handles for a nested Runner."""

    def __init__(self) -> None:
        super().__init__("makes-things")

    @puma.run_in_child_scope
    def make_device(self) -> tuple[Any, str]:
        device = Device("made")  # made in the child: its child factory runs now, here
        try:
            device.gui
            gui = "readable"
        except AttributeScopeError as exc:
            gui = str(exc)
        return device.handle, gui

    @puma.run_in_child_scope
    def run_nested(self) -> tuple[str, Any]:
        inner = CopiedBox()
        with puma.Runner(puma.ThreadEnvironment()) as runner:
            runner.start_blocking(inner)
            inner.append("items", 5)
            return inner.read("items")


class OldStyle(Probing):
    """Drops an unpicklable attribute itself, the way it was done before scoped attributes."""

    def __init__(self) -> None:
        super().__init__("old-style")
        self.lock: Any = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["lock"] = None
        return state


class MakesItself:
    """Has its own __new__: its objects are not born as a view, they are re-typed once constructed."""

    secret = child_only[int]()

    def __new__(cls) -> MakesItself:
        return super().__new__(cls)

    def __init__(self) -> None:
        self.secret = 3


class HoldsMakesItself(Probing):
    def __init__(self) -> None:
        super().__init__("holds-makes-itself")
        self.thing = MakesItself()

    @puma.run_in_child_scope
    def secret(self) -> int:
        return self.thing.secret


CHILD_REFS: list[weakref.ref[Any]] = []


class Remembers(puma.Runnable):
    """In a thread, hands weak references to its clone and its values out to the test."""

    data = copied[Where]()
    made = child_only[Where]()

    def __init__(self) -> None:
        super().__init__("remembers")
        self.data = Where()
        self.made = factory(Where)
        self.box = Device("box")

    def execute(self) -> None:
        CHILD_REFS.extend(weakref.ref(x) for x in (self, self.data, self.made, self.box))


# --- each kind, thread and processes alike ---------------------------------------------------------
def test_copied_gives_the_child_its_own_deep_copy(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        box = runner.start_blocking(CopiedBox())
        box.append("items", 2)
        box.grow_nested()
        assert box.read("items") == ("ok", [1, 2])
        assert box.read("nested") == ("ok", {"a": [1, 2]})
        assert box.items == [1]  # the child's mutations never show in the parent...
        assert box.nested == {"a": [1]}
        box.items.append(3)  # ...and the reverse
        assert box.read("items") == ("ok", [1, 2])


def test_child_only_is_readable_in_the_child_and_raises_in_the_parent(env: puma.Environment) -> None:
    box = ChildOnlyBox()
    with pytest.raises(AttributeScopeError, match=r"ChildOnlyBox\.secret is child_only.*parent cannot read it"):
        box.secret  # constructed: already out of the parent's reach
    with puma.Runner(env) as runner:
        runner.start_blocking(box)
        assert box.read("secret") == ("ok", [7])
        box.append("secret", 8)
        assert box.read("secret") == ("ok", [7, 8])
        with pytest.raises(AttributeScopeError, match=r"secret is child_only"):
            box.secret
        assert not hasattr(box, "secret")  # an AttributeError: hasattr and getattr(..., default) see it absent
        kind, message = box.read("never_set")
        assert kind == "AttributeError" and "never_set" in message


def test_parent_only_stays_in_the_parent_and_raises_in_the_child(env: puma.Environment) -> None:
    box = ParentOnlyBox()
    lock = box.window
    with puma.Runner(env) as runner:
        runner.start_blocking(box)  # the lock does not pickle, but it is never sent
        kind, message = box.read("window")
        assert kind == "AttributeScopeError"
        assert "ParentOnlyBox.window is parent_only" in message and "child cannot read it" in message
        box.assign("window", "child's")  # there is no such attribute in the child: the value is dropped
        assert box.read("window")[0] == "AttributeScopeError"
        assert box.window is lock


def test_reading_a_parent_only_attribute_in_execute_fails_the_runnable(env: puma.Environment) -> None:
    with pytest.raises(AttributeScopeError, match=r"ReadsWindow\.window is parent_only"):
        with puma.Runner(env) as runner:
            runner.start(ReadsWindow())
            runner.join()


def test_unmanaged_and_unannotated_are_pythons_default(env: puma.Environment) -> None:
    box = Defaults()
    with puma.Runner(env) as runner:
        runner.start_blocking(box)
        for name in ("shared", "same", "plain"):
            box.append(name, 2)
            assert box.read(name) == ("ok", [1, 2])
            # the documented difference: the same list in a thread, a copy in a process
            assert getattr(box, name) == ([1] if env.is_process else [1, 2])
        box.assign("rebound", 5)  # re-binding happens on the child's object, in threads too
        assert box.read("rebound") == ("ok", 5)
        assert box.rebound == 0


def test_manually_managed_shared_in_threads_copied_in_processes(env: puma.Environment) -> None:
    box = ManualSharedCopied()
    with puma.Runner(env) as runner:
        runner.start_blocking(box)
        box.append("value", 2)
        assert box.read("value") == ("ok", [1, 2])
        assert box.value == ([1] if env.is_process else [1, 2])


def test_manually_managed_copied_in_threads_none_in_processes(env: puma.Environment) -> None:
    box = ManualCopiedNone([1])
    with puma.Runner(env) as runner:
        runner.start_blocking(box)
        if env.is_process:
            assert box.read("value") == ("ok", None)
        else:
            box.append("value", 2)
            assert box.read("value") == ("ok", [1, 2])
        assert box.value == [1]


def test_manually_managed_not_allowed_refuses_to_start_while_it_holds_a_value(env: puma.Environment) -> None:
    where = "process" if env.is_process else "thread"
    with puma.Runner(env) as runner:
        with pytest.raises(
            puma.PumaError, match=rf"manual-refused\.value is manually_managed with {where}=NOT_ALLOWED"
        ):
            runner.start(ManualRefused([1]))
        box = runner.start_blocking(ManualRefused(None))  # nothing to send: allowed
        assert box.read("value") == ("ok", None)


# --- value sources ---------------------------------------------------------------------------------
def test_per_scope_value_gives_each_scope_the_same_initial_value(env: puma.Environment) -> None:
    box = PerScope()
    box.log.append("parent, before start")
    with puma.Runner(env) as runner:
        runner.start_blocking(box)
        assert box.read("log") == ("ok", ["start"])
        box.append("log", "child")
        assert box.read("log") == ("ok", ["start", "child"])
    assert box.log == ["start", "parent, before start"]


def test_a_factory_opens_a_resource_in_the_child(env: puma.Environment, tmp_path: Path) -> None:
    path = tmp_path / "report.txt"
    runnable = WritesReport(str(path))
    with pytest.raises(AttributeScopeError, match="report is child_only"):
        runnable.report
    assert not path.exists()  # nothing opened in the parent
    with puma.Runner(env) as runner:
        runner.start(runnable)
        runner.join()
        child_pid = runner.pid(runnable)
    opened, hello = path.read_text().splitlines()
    _, pid, thread = opened.split()
    assert int(pid) == child_pid
    assert thread == ("MainThread" if env.is_process else "puma:writes-report")
    # a copied factory: one fresh value per scope; the child's was made in the child...
    assert hello == f"hello from {pid} {thread}"
    # ...and the parent's is made in the parent, on its first read there
    assert (runnable.where.pid, runnable.where.thread) == (os.getpid(), threading.current_thread().name)


def test_scope_specific_keeps_the_parent_value_and_makes_the_childs(env: puma.Environment) -> None:
    box = ScopeSpecific()
    parent_lock = box.lock
    assert type(parent_lock).__name__ == "RLock"
    with puma.Runner(env) as runner:
        runner.start_blocking(box)  # the RLock is not sent (it would not pickle)
        assert box.read("lock") == ("ok", "<lock>")
        assert box.lock is parent_lock


# --- nested objects --------------------------------------------------------------------------------
def test_objects_held_by_a_runnable_are_scoped_recursively_once_each(env: puma.Environment) -> None:
    rig = Rig()
    with pytest.raises(AttributeScopeError, match=r"Device\.handle is child_only"):
        rig.main.handle
    assert type(rig.devices[1].gui).__name__ == "lock"
    with puma.Runner(env) as runner:
        runner.start_blocking(rig)
        seen = rig.look()
        pid = runner.pid(rig)
    assert seen["handles"] == [["main", pid], ["aux", pid], ["spare", pid]]  # each factory ran once, in the child
    assert seen["same main"] is True  # one object, one clone, however it is reached
    assert seen["owner is the child's runnable"] is True
    assert seen["loop"] is True
    assert "Device.gui is parent_only" in seen["gui"]
    assert rig.main.settings == {"gain": 1}  # copied: the child's change stays there


def test_buffers_inside_copied_attributes_are_channels_not_copies(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        buffer = env.buffer(int, 10, "numbers")
        drain = runner.start(Drain(buffer))
        runner.start(PublishesThroughCopied(buffer))
        runner.join()
    assert drain.status("values") == [1, 2, 3]


def test_a_bound_method_attribute_calls_the_childs_object(env: puma.Environment) -> None:
    box = Callbacks()
    with puma.Runner(env) as runner:
        runner.start_blocking(box)
        assert box.fire() == 1
        assert box.fire() == 2
        assert box.count == 0


def test_objects_made_in_the_child_are_the_childs_and_runnables_stay_handles(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        maker = runner.start_blocking(MakesThingsInTheChild())
        handle, gui = maker.make_device()
        assert handle == ["made", runner.pid(maker)]
        assert "Device.gui is parent_only" in gui
        assert maker.run_nested() == ("ok", [1, 5])


def test_a_class_with_its_own_new_is_scoped_too(env: puma.Environment) -> None:
    holder = HoldsMakesItself()
    with pytest.raises(AttributeScopeError, match=r"MakesItself\.secret is child_only"):
        holder.thing.secret
    with puma.Runner(env) as runner:
        runner.start_blocking(holder)
        assert holder.secret() == 3


def test_a_runnables_own_getstate_still_applies_in_processes(env: puma.Environment) -> None:
    box = OldStyle()
    with puma.Runner(env) as runner:
        runner.start_blocking(box)  # the lock does not pickle: its __getstate__ leaves it out
        assert box.read("lock") == ("ok", None if env.is_process else "<lock>")


def test_reassigning_in_the_parent_before_start_is_what_the_child_gets(env: puma.Environment) -> None:
    per_scope, secret, box = PerScope(), ChildOnlyBox(), CopiedBox()
    per_scope.log = ["replaced"]
    secret.secret = [9]
    box.items = [4]
    with puma.Runner(env) as runner:
        for runnable in (per_scope, secret, box):
            runner.start_blocking(runnable)
        assert per_scope.read("log") == ("ok", ["replaced"])
        assert secret.read("secret") == ("ok", [9])
        assert box.read("items") == ("ok", [4])
        box.assign("items", [0])
        secret.assign("secret", [0])
        assert box.items == [4]
        with pytest.raises(AttributeScopeError):
            secret.secret


# --- errors before the child starts ----------------------------------------------------------------
def test_a_copied_value_that_cannot_be_copied_is_named_before_start(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        with pytest.raises(puma.NotPicklableError, match=r"copies-a-lock\.lock \(lock\)"):
            runner.start(CopiesALock())


def test_a_value_that_cannot_cross_into_a_process_is_named_before_start(process_env: puma.Environment) -> None:
    with puma.Runner(process_env) as runner:
        with pytest.raises(puma.NotPicklableError, match=r"holds-a-lock\.lock \(lock\)"):
            runner.start(HoldsALock())
        with pytest.raises(puma.NotPicklableError, match=r"lambda-factory\.device \(its child factory\)"):
            runner.start(LambdaFactory())


def test_a_failing_child_factory_fails_the_runnable_naming_the_attribute(env: puma.Environment) -> None:
    with pytest.raises(OSError, match="device busy") as info:
        with puma.Runner(env) as runner:
            runner.start(FactoryFails())
            runner.join()
    assert any("child factory of FactoryFails.device" in note for note in info.value.__notes__)


def test_a_value_source_in_an_unannotated_attribute_is_refused_at_start(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        with pytest.raises(
            TypeError, match=r"Unannotated\.sock holds puma\.attributes\.factory\(\.\.\.\) but is not a scoped"
        ):
            runner.start(Unannotated())


def test_misused_value_sources_are_refused_at_construction() -> None:
    class BothSidesOfChildOnly(puma.Runnable):
        sock = child_only[object]()

        def __init__(self) -> None:
            super().__init__("both")
            self.sock = scope_specific(object(), object)

        def execute(self) -> None:
            pass

    with pytest.raises(
        TypeError, match=r"sock is child_only: puma\.attributes\.scope_specific\(\) gives a value to both"
    ):
        BothSidesOfChildOnly()
    with pytest.raises(TypeError, match="ThreadAction"):
        manually_managed(thread="shared", process=ProcessAction.COPIED)  # type: ignore[arg-type]


def test_child_side_handles_of_a_runnable_stay_in_the_parent() -> None:
    """Runnable._puma_record is puma's own parent_only attribute: a clone has none."""
    box = CopiedBox()
    clone = _attributes.for_thread(box)
    assert "_puma_record" not in vars(clone)
    with pytest.raises(AttributeScopeError, match="_puma_record is parent_only.*used from the parent"):
        clone._puma_record
    assert box._puma_record is None


# --- cost and leaks --------------------------------------------------------------------------------
def test_reads_are_plain_instance_reads() -> None:
    """Nothing on any class at a usable name, no __getattribute__/__getattr__: reads are plain (no timing here)."""
    cases = [
        (CopiedBox(), ["items", "nested"]),
        (ParentOnlyBox(), ["window"]),
        (_attributes.for_thread(CopiedBox()), ["items", "nested"]),
        (_attributes.for_thread(ChildOnlyBox()), ["secret"]),
        (_attributes.for_process(ChildOnlyBox()), ["secret"]),
    ]
    for obj, names in cases:
        cls = type(obj)
        assert cls.__getattribute__ is object.__getattribute__
        assert not hasattr(cls, "__getattr__")
        for name in names:
            assert all(name not in vars(klass) for klass in cls.__mro__), (cls, name)
            getattr(obj, name)
    # where an attribute may not be used, a guard stands in a view of the class (same name, a subclass)
    parent, child = ChildOnlyBox(), _attributes.for_thread(ParentOnlyBox())
    assert type(parent).__name__ == "ChildOnlyBox" and isinstance(parent, ChildOnlyBox)
    assert type(child).__name__ == "ParentOnlyBox" and isinstance(child, ParentOnlyBox)
    assert type(parent).__dict__["secret"].__class__.__name__ == "_Guard"
    assert type(child).__dict__["window"].__class__.__name__ == "_Guard"


def test_runnables_clones_and_values_are_collected_after_use(env: puma.Environment) -> None:
    CHILD_REFS.clear()
    runnable = Remembers()
    refs = [weakref.ref(x) for x in (runnable, runnable.data, runnable.box, runnable.box.gui)]
    with puma.Runner(env) as runner:
        runner.start(runnable)
        runner.join()
    del runner, runnable
    gc.collect()
    assert [r() for r in refs] == [None] * 4
    if not env.is_process:
        assert len(CHILD_REFS) == 4
        assert [r() for r in CHILD_REFS] == [None] * 4
    CHILD_REFS.clear()


def test_no_class_level_cache_keeps_classes_alive() -> None:
    cls = type("Temporary", (puma.Runnable,), {"value": copied[int](), "execute": lambda self: None})
    instance = cls("temporary")
    instance.value = 1
    _attributes.for_thread(instance)
    ref = weakref.ref(cls)
    del cls, instance
    gc.collect()
    assert ref() is None


# --- typing ----------------------------------------------------------------------------------------
TYPED = """
import puma
from puma.attributes import ScopedAttribute, child_only, copied, factory

class Camera(puma.Runnable):
    exposure = copied[float]()
    frames: ScopedAttribute[list[int]] = child_only()

    def __init__(self) -> None:
        super().__init__("camera")
        self.exposure = 1.0
        self.frames = factory(list)

    def execute(self) -> None:
        reveal_type(self.exposure)
        reveal_type(self.frames)
        self.exposure = "bright"
"""


@pytest.mark.timeout(180)
def test_type_checkers_see_the_attributes_type(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    source = tmp_path / "typed_camera.py"
    source.write_text(TYPED)
    args = [str(source), "--strict", "--ignore-missing-imports", "--no-error-summary"]
    # In a process of its own: mypy leaves some 750,000 objects behind in the process that runs
    # it, which every later test's garbage collection would walk.
    run = subprocess.run(
        [sys.executable, "-m", "mypy", *args, "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path,  # not the repository's configuration
        env={**os.environ, "MYPYPATH": str(Path(puma.__file__).resolve().parent.parent)},
        capture_output=True,
        text=True,
        timeout=170,
    )
    out = run.stdout
    lines = [line for line in out.splitlines() if "typed_camera.py" in line]
    assert any(re.search(r'Revealed type is "(builtins\.)?float"', line) for line in lines), out
    assert any(re.search(r'Revealed type is "(builtins\.)?list\[(builtins\.)?int\]"', line) for line in lines), out
    assert any("Incompatible types in assignment" in line and '"str"' in line for line in lines), out


# --- the public namespace -------------------------------------------------------------------------
PUBLIC = [
    "AttributeScopeError",
    "ProcessAction",
    "ScopedAttribute",
    "ThreadAction",
    "ValueSource",
    "child_only",
    "copied",
    "factory",
    "manually_managed",
    "parent_only",
    "per_scope_value",
    "python_default",
    "scope_specific",
    "unmanaged",
]


def test_puma_attributes_exports_exactly_the_scoped_attribute_names() -> None:
    assert sorted(puma.attributes.__all__) == sorted(PUBLIC)
    assert len(set(puma.attributes.__all__)) == len(puma.attributes.__all__)
    assert inspect.getdoc(puma.attributes), "puma.attributes has no docstring"
    for name in PUBLIC:
        obj = getattr(puma.attributes, name)
        assert inspect.getdoc(obj), f"puma.attributes.{name} has no docstring"
        assert obj.__module__ == "puma.attributes", f"puma.attributes.{name} shows as {obj.__module__}"
    assert puma.attributes.python_default is puma.attributes.unmanaged


def test_puma_attributes_names_pickle_by_their_public_name() -> None:
    """What crosses into a spawn child by reference (an action, a factory function) names puma.attributes."""
    for obj in (ThreadAction.SHARED, ProcessAction.SET_TO_NONE, copied, factory):
        data = pickle.dumps(obj)
        assert b"puma.attributes" in data, obj
        assert pickle.loads(data) is obj


# --- the documentation's examples ------------------------------------------------------------------
DOC = Path(__file__).resolve().parent.parent / "docs" / "attributes.md"


def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def doc_modules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ModuleType]]:
    """Each example of docs/attributes.md as an importable module (spawn children import it by name)."""
    folder = tmp_path_factory.mktemp("attributes_doc")
    names = []
    for index, block in enumerate(_doc_blocks()):
        (folder / f"attributes_doc_{index}.py").write_text(block)
        names.append(f"attributes_doc_{index}")
    sys.path.insert(0, str(folder))
    try:
        yield [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(folder))
        for name in names:
            sys.modules.pop(name, None)


def test_the_documentation_has_an_example_per_kind() -> None:
    text = "".join(_doc_blocks())
    for name in ("copied", "child_only", "parent_only", "unmanaged", "manually_managed"):
        assert re.search(rf"\b{name}\[", text), name
    for name in ("per_scope_value", "factory", "scope_specific"):
        assert re.search(rf"\b{name}\(", text), name


def test_the_documentation_spells_scoped_attributes_as_puma_attributes() -> None:
    """The examples import what they use from puma.attributes; nothing says ``puma.copied`` and the like."""
    old = re.compile(r"\bpuma\.(" + "|".join(PUBLIC) + r")\b")
    for index, block in enumerate(_doc_blocks()):
        tree = ast.parse(block)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in PUBLIC}
        imported = {
            alias.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module == "puma.attributes"
            for alias in n.names
        }
        assert used == imported, f"example {index} uses {sorted(used)} and imports {sorted(imported)}"
        found = old.search(block)
        assert found is None, f"example {index} says {found[0]}"
    found = old.search(DOC.read_text())
    assert found is None, f"docs/attributes.md says {found[0]}"


@pytest.mark.parametrize("index", range(len(_doc_blocks())))
def test_the_documented_examples_behave_as_documented(
    env: puma.Environment, doc_modules: list[ModuleType], index: int
) -> None:
    doc_modules[index].demo(env)
