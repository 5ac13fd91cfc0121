"""What a child gets for an attribute (an *action*, per attribute and environment), and the two sides.

A scope (:mod:`puma._attributes.scopes`) maps each environment to one action;
the crossing (:mod:`puma._attributes.crossing`) carries it out at launch.
The values are short strings, compared by equality, so they read well in a
debugger and cost nothing to look up.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CHILD", "COPY", "DROP", "FACTORY", "NONE", "PARENT", "REFUSE", "SHARE"]

# what the child gets, per attribute and environment
SHARE: Final = "share"
"""The same object (threads); in processes a copy, made by pickling or fork."""
COPY: Final = "copy"
"""A deep copy (threads); in processes a copy, made by pickling or fork."""
DROP: Final = "drop"
"""Nothing: the attribute does not exist in the child."""
NONE: Final = "none"
"""None."""
REFUSE: Final = "refuse"
"""The runnable may not be launched there while the attribute holds a value."""
FACTORY: Final = "factory"
"""(Held for the child) made by calling a factory in the child."""

# the side an object belongs to
PARENT: Final = "parent"
"""The code that creates and starts a runnable, and the objects it makes."""
CHILD: Final = "child"
"""The thread or process that runs a runnable, and the objects made for it or in it."""
