"""Turn the Sphinx roles of puma's docstrings into links of the site.

puma's docstrings are written for ``help()`` too, so they say
``:class:`~puma.Runner``` and ``:meth:`start```.  This griffe extension
rewrites each role, before mkdocstrings renders the docstring, into a
cross-reference to the public name it means (``puma.Runner.start``), when
that name is on the site's API reference, and into plain code otherwise
(a private helper, a module of the library's inside).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import griffe

# An RST literal block: "text::", a blank line, an indented block.
_LITERAL = re.compile(
    r"^(?P<indent>[ ]*)(?P<text>\S[^\n]*?)::\n\n(?P<code>(?:(?P=indent)[ ]{4}[^\n]*\n|[ ]*\n)+)", re.M
)
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj):`(~?)([^`]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the puma package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "puma":
            return
        # The public namespaces: puma itself, and its modules puma/<name>.py not named "_...".
        folder = Path(str(pkg.filepath)).parent
        names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
        self._namespaces = ["puma", *(f"puma.{name}" for name in names if name in pkg.members)]
        public: dict[str, str] = {}  # canonical path -> public path
        known: set[str] = set()  # every public path the reference shows (names and their members)
        for namespace in self._namespaces:
            module = pkg if namespace == "puma" else pkg.members[namespace.split(".")[1]]
            if module.is_alias:
                module = module.final_target
            known.add(namespace)
            for name in module.exports or ():
                if name not in module.members:
                    continue
                path = f"{namespace}.{name}"
                obj = module.members[name]
                target = obj.final_target if obj.is_alias else obj
                public.setdefault(target.path, path)
                known.add(path)
                if target.is_class:
                    for member, value in target.all_members.items():
                        if not member.startswith("_") and value.docstring is not None:  # rendered
                            known.add(f"{path}.{member}")
        self._public, self._known = public, known
        self._visit(pkg, seen=set())

    def _visit(self, obj: griffe.Object | griffe.Alias, seen: set[str]) -> None:
        if obj.is_alias or obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            text = _LITERAL.sub(_fence, obj.docstring.value + "\n").rstrip("\n")
            obj.docstring.value = _ROLE.sub(lambda m: self._link(obj, m.group(1) == "~", m.group(2)), text)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)

    def _scopes(self, obj: griffe.Object) -> list[str]:
        """Public paths a relative name in ``obj``'s docstring is looked up in, nearest first."""
        scopes = []
        node: griffe.Object | None = obj
        while node is not None:
            if node.path in self._public:
                scopes.append(self._public[node.path])
            node = node.parent
        return [*scopes, *self._namespaces]

    def _link(self, obj: griffe.Object, short: bool, target: str) -> str:
        target = target.strip().removesuffix("()")
        shown = target.rsplit(".", 1)[-1] if short else target
        candidates = [target] if target.startswith("puma.") else []
        candidates += [f"{scope}.{target}" for scope in self._scopes(obj)]
        for path in candidates:
            if path in self._known:
                return f"[`{shown}`][{path}]"
        return f"`{shown}`"


def _fence(match: re.Match[str]) -> str:
    """An RST literal block as a fenced Python block; the line before it keeps one colon."""
    indent, text = match["indent"], match["text"]
    code = textwrap.dedent(match["code"]).strip("\n")
    lines = [f"{indent}{line}" if line else "" for line in ["```python", *code.splitlines(), "```"]]
    return f"{indent}{text}:\n\n" + "\n".join(lines) + "\n\n"
