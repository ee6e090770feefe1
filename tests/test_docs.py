"""README.md and docs/*.md: every relative link resolves (the file, and the heading when an anchor
is given), and the README stays a first screen: short, with the two commands near the top.
Default tier: reads Markdown only, no TensorFlow."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(INLINE_CODE.sub("", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text only, lowercase, punctuation other than '-' and '_'
    dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor GitHub gives a Markdown page (repeated headings get -1, -2, ...)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found |= set(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2).replace("`", ""))
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """The relative links of ``page`` (its text, or ``text`` as if it were the page's) that do not
    resolve: missing file, or an anchor that names no heading of the target Markdown page."""
    text = page.read_text() if text is None else text
    problems = []
    for target in LINK.findall("\n".join(_prose_lines(text))):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        if path and not dest.exists():
            problems.append(f"{page.name}: [{target}] -> {dest} does not exist")
            continue
        if anchor and dest.suffix == ".md":
            have = anchors(text if dest == page else dest.read_text())
            if unquote(anchor) not in have:
                problems.append(f"{page.name}: [{target}] -> no heading '#{anchor}' in {dest.name}")
    return problems


def test_every_relative_link_resolves():
    problems = [p for page in PAGES for p in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_the_checker_reports_a_broken_link():
    page = REPO / "docs" / "made_up.md"
    text = (
        "# A made-up page\n\n"
        "[fine](results.md#how-the-numbers-are-made-honest) and [fine too](#a-made-up-page)\n"
        "[gone](no_such_page.md) [bad anchor](results.md#no-such-heading) [bad self](#nowhere)\n"
        "[gone across\ntwo lines](no_such_page_2.md)\n"
        "`[in code](no_such_either.md)`\n"
        "```\n[in a block](no_such_either.md)\n```\n"
    )
    problems = broken_links(page, text)
    assert len(problems) == 4, problems
    assert any("no_such_page.md" in p for p in problems)
    assert any("no_such_page_2.md" in p for p in problems)
    assert any("no-such-heading" in p for p in problems)
    assert any("#nowhere" in p for p in problems)


def test_slug_follows_github():
    assert slug("The bundle schema (bundle.json, schema_version: 1)") == "the-bundle-schema-bundlejson-schema_version-1"
    assert slug("Small data: pretrain on generated data, then fine-tune") == \
        "small-data-pretrain-on-generated-data-then-fine-tune"


def test_readme_is_short_with_both_commands_on_the_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"
    first = lines[:40]
    assert any(re.search(r'pip install -e "\.\[test\]".*lepton-vision train ', line) for line in first), \
        "the install + train command must be in README.md's first 40 lines"
    assert any('python -m pytest -m "not slow and not browser"' in line for line in first), \
        "the test command must be in README.md's first 40 lines"
