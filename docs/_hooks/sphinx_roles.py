"""Griffe extension: Sphinx roles in the docstrings -> Markdown cross-references.

The package's docstrings are written for ``help()`` and use Sphinx roles such as
``:class:`Problem``` and ``:func:`simulate```, which mkdocstrings would print literally. This
extension (mkdocs.yml: ``extensions: [docs/_hooks/sphinx_roles.py]``) rewrites them when the
docs are built, without touching the source:

- a role whose target is a public name (``clipped_trip.__all__``, optionally written
  ``clipped_trip.NAME`` or ``~NAME``) becomes a link to its API entry,
- a role naming a public name's member (``RiskPaths.stat``) links to that member,
- anything else (private helpers, bare method names) becomes inline code.

So no cross-reference can dangle, and ``mkdocs build --strict`` stays clean.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc):`~?([^`]+)`")
_INIT = Path(__file__).resolve().parents[2] / "clipped_trip" / "__init__.py"


def _public() -> set[str]:
    tree = ast.parse(_INIT.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return {ast.literal_eval(e) for e in node.value.elts}
    return set()


class SphinxRoles(griffe.Extension):
    def __init__(self) -> None:
        super().__init__()
        self.public = _public()

    def _link(self, match: re.Match, package) -> str:
        target = match.group(1).strip()
        if target.startswith("clipped_trip."):
            target = target[len("clipped_trip.") :]
        head, _, rest = target.partition(".")
        shown = target.rsplit(".", 1)[-1] if match.group(0).find("~") >= 0 else target
        if head in self.public and (not rest or self._has_member(package, head, rest)):
            return f"[`{shown}`][clipped_trip.{target}]"
        return f"`{shown}`"

    @staticmethod
    def _has_member(package, head: str, rest: str) -> bool:
        try:
            obj = package[head]
            for part in rest.split("."):
                obj = obj.members[part]
            return not part.startswith("_")
        except Exception:  # noqa: BLE001 - unresolvable: no link
            return False

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            package = obj.package
            obj.docstring.value = _ROLE.sub(lambda m: self._link(m, package), obj.docstring.value)
