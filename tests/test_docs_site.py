"""The docs site as a reader sees it: build it with mkdocs and read the HTML.

Snippet includes (``--8<-- "path"``) must render as the included file: no page may show a
snippet marker, and every line of every included file must appear in its page. (A code
formatter once rewrote ``--8<--`` as ``--8 < --``; the build still passed and the tutorial
showed that literal line instead of the plugin's code.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"

# a snippet line, also in the forms a formatter may rewrite it to (``--8 < --"path"``)
SNIPPET_LINE = re.compile(r'^\s*-\s*-\s*8\s*<\s*-\s*-\s*"([^"]+)"\s*$', flags=re.M)
MARKER = re.compile(r"-\s*-\s*8\s*<\s*-\s*-")


class _Text(HTMLParser):
    """The text of a page (what a reader sees), scripts and styles left out."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(html: Path) -> str:
    parser = _Text()
    parser.feed(html.read_text())
    return "".join(parser.parts)


def built_page(site: Path, md: Path) -> Path:
    """The HTML file mkdocs writes for a Markdown source (``use_directory_urls``)."""
    rel = md.relative_to(DOCS).with_suffix("")
    if rel.name in ("index", "README"):
        return site / rel.parent / "index.html"
    return site / rel / "index.html"


def snippet_includes() -> dict[Path, list[str]]:
    """Markdown page -> the paths its snippet lines include."""
    found = {}
    for md in sorted(DOCS.rglob("*.md")):
        paths = SNIPPET_LINE.findall(md.read_text())
        if paths:
            found[md] = paths
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        check=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return out


def test_the_tutorial_includes_the_plugin_and_its_tests():
    """The check below is not vacuous: the tutorial includes these files."""
    includes = snippet_includes()[DOCS / "plugins" / "tutorial.md"]
    assert includes == [
        "docs/examples/ar-zigzag/pyproject.toml",
        "docs/examples/ar-zigzag/src/ar_zigzag/__init__.py",
        "docs/examples/ar-zigzag/tests/test_zigzag.py",
    ]


def test_no_page_shows_a_snippet_marker(site: Path):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    shown = [str(p.relative_to(site)) for p in pages if MARKER.search(page_text(p))]
    assert not shown, f"literal snippet marker (--8<--) in {shown}"


def test_included_files_appear_in_their_pages(site: Path):
    tutorial = page_text(built_page(site, DOCS / "plugins" / "tutorial.md"))
    for distinctive in (
        "def register_orderings",
        "class ZigZag",
        "def test_",
        "[project.entry-points.ar]",
    ):
        assert distinctive in tutorial, distinctive
    for md, paths in snippet_includes().items():
        text = page_text(built_page(site, md))
        for path in paths:
            lines = [line.strip() for line in (ROOT / path).read_text().splitlines()]
            missing = [line for line in lines if line and line not in text]
            assert not missing, f"{md.relative_to(ROOT)}: {path} lines not shown: {missing[:3]}"


def _gen_reference():
    sys.path.insert(0, str(DOCS))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(DOCS))
    return gen_reference


def test_every_package_has_a_reference_page_in_the_nav():
    gen = _gen_reference()
    members = {p.name for p in [*ROOT.glob("packages/*"), *ROOT.glob("apps/*")] if p.is_dir()}
    assert set(gen.PACKAGES) == members
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in gen.PACKAGES:
        page = DOCS / "reference" / f"{name}.md"
        assert page.read_text() == gen.render(name), "run: uv run python docs/gen_reference.py"
        assert f"reference/{name}.md" in nav, name
    assert "design/contracts.md" in nav


def test_reference_pages_document_the_public_api(site: Path):
    """Every name of a package's ``__all__`` (or every public module) has its own entry."""
    gen = _gen_reference()
    for name, path in gen.PACKAGES.items():
        package = ROOT / path / "src" / name.replace("-", "_")
        html = (site / "reference" / name / "index.html").read_text()
        names = gen.exported(package / "__init__.py")
        ids = (
            [f"{package.name}.{n}" for n in names]
            if names is not None
            else gen.public_modules(package)
        )
        assert ids
        missing = [i for i in ids if f'id="{i}"' not in html]
        assert not missing, f"{name}: no reference entry for {missing}"


def test_the_built_site_has_no_broken_internal_links(site: Path):
    sys.path.insert(0, str(DOCS))
    try:
        import check_links
    finally:
        sys.path.remove(str(DOCS))
    assert check_links.broken_links(site) == []


def test_benchmarks_page_is_generated_from_the_stored_json():
    sys.path.insert(0, str(DOCS))
    try:
        import gen_benchmarks
    finally:
        sys.path.remove(str(DOCS))
    page = gen_benchmarks.PAGE.read_text()
    assert page == gen_benchmarks.render(page), "run: uv run python docs/gen_benchmarks.py"
    stored = sorted(gen_benchmarks.RESULTS.glob("*.json"))
    assert stored, "no benchmark results under docs/benchmarks/"
    for path in stored:
        one = json.loads(path.read_text())
        part = one.get("part")  # a part of a benchmark, run on its own: NAME-PART.json
        name = path.stem.removesuffix(f"-{part}") if part else path.stem
        assert one["benchmark"] == name and (not part or path.stem == f"{name}-{part}")
        assert one["command"].startswith(f"uv run ar bench {name}")
        assert one["machine"] and one["date"] and one["result"]
        assert f"### `{name}`" + (f" ({part})" if part else "") in page
