"""The documentation site builds with ``mkdocs build --strict`` and is complete and offline.

Needs the docs extra (mkdocs-material, mkdocstrings[python]); skipped with the reason when it is
not installed. One build (about 5-10 s) serves every test of this module.
"""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
FIGURES = ROOT / "figures"

for _module, _what in (
    ("mkdocs", "mkdocs"),
    ("material", "mkdocs-material"),
    ("mkdocstrings", "mkdocstrings"),
    ("mkdocstrings_handlers.python", "mkdocstrings-python"),
):
    pytest.importorskip(_module, reason=f"{_what} is not installed (pip install '.[docs]')")


def public_names() -> list[str]:
    """clipped_trip.__all__, read without importing the package."""
    tree = ast.parse((ROOT / "clipped_trip" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError("clipped_trip/__init__.py has no __all__")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
        + ["-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def html_pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_build_is_strict_clean(site):
    assert (site / "index.html").is_file()
    assert (site / "reference" / "index.html").is_file()
    assert (site / "gallery" / "index.html").is_file()


def test_every_public_name_has_an_api_entry(site):
    ids = set()
    for page in (site / "reference").rglob("*.html"):
        ids.update(re.findall(r'id="(clipped_trip\.[A-Za-z0-9_]+)"', page.read_text()))
    missing = [n for n in public_names() if f"clipped_trip.{n}" not in ids]
    assert not missing, f"no API reference entry for {missing}"


def test_every_public_name_is_sorted_into_a_reference_page():
    """The build adds unsorted names to reference/index.md; this says which to sort."""
    text = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^:::\s*clipped_trip\.(\w+)\s*$", text, re.M))
    missing = [n for n in public_names() if n not in documented]
    assert not missing, f"add `::: clipped_trip.NAME` to a docs/reference page for {missing}"


def test_no_sphinx_roles_leak_into_the_reference(site):
    for page in (site / "reference").rglob("*.html"):
        text = page.read_text()
        leaked = re.findall(r":(?:class|func|meth|attr|mod):", text)
        assert not leaked, f"{page.relative_to(site)}: Sphinx roles rendered literally"


def test_gallery_shows_every_committed_figure(site):
    pngs = sorted(p.stem for p in FIGURES.glob("*.png"))
    assert pngs, "no committed figures"
    gallery = (site / "gallery" / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", gallery))  # code blocks are split into spans
    for name in pngs:
        assert (site / "figures" / f"{name}.png").is_file(), name
        assert f'src="../figures/{name}.png"' in gallery, f"gallery lacks {name}.png"
        assert f"clipped-trip reproduce {name}" in text, f"gallery lacks the command of {name}"


def test_every_example_is_rendered_in_the_docs():
    """Each examples/ file is pulled into a page by a pymdownx.snippets line (the strict build
    fails if the file is missing)."""
    text = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    included = set(re.findall(r'^\s*--8<--\s+"examples/([^"]+)"', text, re.M))
    files = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".toml")}
    assert files, "no examples"
    assert files <= included, f"not rendered in the docs: {sorted(files - included)}"


class _Resources(HTMLParser):
    """Collects what a browser would fetch by itself (not the links a reader may click)."""

    FETCHED = {
        "script": ("src",),
        "link": ("href",),
        "img": ("src", "srcset"),
        "iframe": ("src",),
        "source": ("src", "srcset"),
        "video": ("src", "poster"),
        "audio": ("src",),
        "embed": ("src",),
        "object": ("data",),
    }

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and name in self.FETCHED.get(tag, ()):
                self.urls.append((tag, value))
            if name == "style" and value and "url(" in value:
                self.urls.append((tag, value))


EXTERNAL = re.compile(r"^\s*(?:https?:)?//", re.I)


def test_no_network_when_reading_the_pages(site):
    for page in html_pages(site):
        parser = _Resources()
        parser.feed(page.read_text())
        external = [(t, u) for t, u in parser.urls if EXTERNAL.match(u) or "url(http" in u]
        assert not external, f"{page.relative_to(site)} fetches {external}"
    for css in site.rglob("*.css"):
        text = css.read_text(errors="replace")
        assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", text), css.relative_to(site)
        assert not re.search(r"@import\s+(?:url\()?\s*['\"]?(?:https?:)?//", text), css
    for page in html_pages(site):
        assert "fonts.googleapis.com" not in page.read_text(), page.relative_to(site)


def test_gallery_commands_are_reproduce_ids(capsys):
    """Each committed figure is made by ``clipped-trip reproduce NAME`` (the gallery says so)."""
    from clipped_trip import cli

    assert cli.main(["reproduce", "--list"]) == 0
    listed = set(re.findall(r"^([A-Za-z0-9_-]+)\b", capsys.readouterr().out, re.M))
    missing = sorted(p.stem for p in FIGURES.glob("*.png") if p.stem not in listed)
    assert not missing, f"not a `clipped-trip reproduce` id: {missing}"
