"""The public surface: small, documented, typed, and presented as ``puma.X``."""

from __future__ import annotations

import inspect

import puma


def test_every_public_name_exists_is_documented_and_lives_in_puma() -> None:
    for name in puma.__all__:
        obj = getattr(puma, name)
        if name == "__version__":
            continue
        assert inspect.getdoc(obj), f"puma.{name} has no docstring"
        module = getattr(obj, "__module__", "puma")
        assert module == "puma" or not module.startswith("puma._"), f"puma.{name} shows as {module}"


def test_all_is_sorted_and_unique() -> None:
    names = [n for n in puma.__all__ if n != "__version__"]
    assert len(names) == len(set(names))


def test_public_methods_are_documented() -> None:
    for cls in (puma.Runner, puma.Runnable, puma.Buffer, puma.Publisher, puma.Subscription):
        for attr, value in vars(cls).items():
            if attr.startswith("_") or (not callable(value) and not isinstance(value, property)):
                continue
            assert inspect.getdoc(value), f"{cls.__name__}.{attr} has no docstring"


def test_py_typed_ships() -> None:
    from pathlib import Path

    assert (Path(puma.__file__).parent / "py.typed").exists()


def test_the_surface_is_small_and_namespaces_hold_the_rest() -> None:
    assert len(puma.__all__) <= 32, "puma.__all__ is meant to stay small: put specialised names in a namespace"
    for namespace in (puma.attributes, puma.environments, puma.logging):
        assert namespace.__doc__, f"{namespace.__name__} has no docstring"


def test_a_name_that_moved_says_where_it_went() -> None:
    import pytest

    with pytest.raises(AttributeError, match=r"puma.copied is puma.attributes.copied"):
        puma.copied
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        puma.nothing_here
