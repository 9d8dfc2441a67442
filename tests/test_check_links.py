"""docs/check_links.py finds broken internal links and anchors (the docs session runs it)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "docs"))
try:
    import check_links
finally:
    sys.path.remove(str(ROOT / "docs"))


def _site(tmp_path: Path, links: str) -> Path:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<h2 id="there">A</h2><a name="old">x</a>')
    (tmp_path / "img.png").write_bytes(b"")
    (tmp_path / "index.html").write_text(f'<h1 id="top">Home</h1>{links}')
    return tmp_path


def test_good_links_pass(tmp_path: Path):
    links = (
        '<a href="a/">a</a><a href="a/index.html#there">a</a><a href="a/#old">old</a>'
        '<a href="#top">top</a><a href="/a/">abs</a><img src="img.png">'
        '<a href="https://example.com/nowhere#x">external</a><a href="mailto:x@y">m</a>'
    )
    assert check_links.broken_links(_site(tmp_path, links)) == []


def test_missing_pages_and_anchors_are_reported(tmp_path: Path):
    links = (
        '<a href="b/">b</a><a href="a/#nowhere">anchor</a><a href="#missing">self</a>'
        '<img src="gone.png"><a href="../../outside/">out</a>'
    )
    problems = check_links.broken_links(_site(tmp_path, links))
    assert len(problems) == 5, problems
    assert any("no anchor #nowhere" in p for p in problems)
    assert any("no anchor #missing" in p for p in problems)
    assert check_links.main([str(tmp_path)]) == 1
