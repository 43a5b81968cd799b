"""Every relative link in README.md, tests/README.md and docs/ names a file that exists, and a `#fragment` names a
heading of that file (GitHub's anchors), so moving or renaming a page or a section cannot leave a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", REPO / "tests" / "README.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")       # [text](target) and ![alt](target)
FENCE = re.compile(r"^(```|~~~)")


def prose(text: str) -> str:
    """The page without its fenced code blocks and inline code, where brackets are code, not links."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def dead_links(page: Path) -> list[str]:
    dead = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):                  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            dead.append(f"{target}: no file {shown(file)}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
            dead.append(f"{target}: no heading #{fragment} in {shown(file)}")
    return dead


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    dead = dead_links(page)
    assert not dead, f"{page.relative_to(REPO)}: " + "; ".join(dead)


def test_the_check_finds_a_dead_file_and_a_dead_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, with commas\n")
    page.write_text("[ok](other.md#a-code-heading-with-commas) [gone](missing.md) [bad](other.md#nope) "
                    "`[code](not-a-link.md)` [web](https://example.com/x.md)\n```\n[fenced](missing2.md)\n```\n")
    assert [d.split(":")[0] for d in dead_links(page)] == ["missing.md", "other.md#nope"]
