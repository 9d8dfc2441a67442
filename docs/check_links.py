"""Check the internal links and anchors of a built site: ``python docs/check_links.py SITE``.

Every ``href`` of an ``<a>`` and every ``src`` of an ``<img>`` in every HTML page of SITE
that stays on the site (no scheme, not protocol-relative) must name a file that exists,
and its ``#fragment``, if any, an ``id`` (or ``<a name>``) of that page. Prints each broken
link as ``page: href (reason)`` and exits 1 if there is one. Standard library only.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if found.get(key):
                self.ids.add(str(found[key]))
        if tag == "a" and found.get("href") is not None:
            self.links.append(str(found["href"]))
        if tag == "img" and found.get("src") is not None:
            self.links.append(str(found["src"]))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _target(site: Path, page: Path, path: str) -> Path:
    """The file a (decoded) link path names, relative to the page's folder or the root."""
    base = site if path.startswith("/") else page.parent
    target = (base / path.lstrip("/")).resolve()
    if target.is_dir() or path.endswith("/"):
        target = target / "index.html"
    return target


def broken_links(site: Path) -> list[str]:
    """Every broken internal link of the site, as ``page: href (reason)``."""
    site = site.resolve()
    pages = {path.resolve(): _parse(path) for path in sorted(site.rglob("*.html"))}
    problems = []
    for path, page in pages.items():
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("//"):
                continue  # off the site (http:, https:, mailto:, ...): not checked here
            target = _target(site, path, unquote(parts.path)) if parts.path else path
            where = f"{path.relative_to(site)}: {href}"
            if not target.is_relative_to(site):
                problems.append(f"{where} (outside the site)")
            elif not target.is_file():
                problems.append(f"{where} (no file {target.relative_to(site)})")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{where} (no anchor #{parts.fragment})")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/check_links.py SITE_DIR", file=sys.stderr)
        return 2
    site = Path(argv[0])
    problems = broken_links(site)
    for problem in problems:
        print(problem)
    pages = [_parse(path) for path in site.rglob("*.html")]
    links = sum(len(page.links) for page in pages)
    print(f"{len(problems)} broken of {links} links in {len(pages)} pages of {site}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
