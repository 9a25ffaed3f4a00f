"""The documentation: README.md and docs/*.md (GitHub-rendered Markdown).

- every relative link resolves to a file or folder of the repository, and a `#anchor` into a
  Markdown page names one of its headings (GitHub's slug rules);
- every docs page is linked from the README;
- no file of the repository cites the project's internal notes, which live outside it (users
  cannot follow such a reference);
- the README stays within 300 lines (`wc -l`).
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300

# Built from parts, so that this file does not itself contain the names it looks for.
INTERNAL_NOTES = tuple(stem + ".md" for stem in ("REFERENCE", "DESIGN", "STYLE"))

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
# [text](target) and ![alt](target); the text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HTML_ATTR = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HTML_ID = re.compile(r"""<a\s[^>]*\b(?:name|id)\s*=\s*["']([^"']+)["']""", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with HTML comments blanked."""
    text = HTML_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) <= {fence[0]}:
                fence = None
            continue
        out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): its rendered text lower-cased; everything
    but letters, marks, decimal digits, connector punctuation (_), spaces and hyphens dropped
    (superscripts too); each space a hyphen."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(ch for ch in text if ch in " -" or unicodedata.category(ch)[0] in "LM"
                   or unicodedata.category(ch) in ("Nd", "Pc"))
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page's headings (and explicit <a name/id>) give, duplicates numbered."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        found.update(HTML_ID.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a page, outside code blocks and code spans."""
    out = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        for pattern in (INLINE_LINK, REFERENCE_DEF, HTML_ATTR):
            out += [(number, t.strip("<>")) for t in pattern.findall(line)]
    return out


def resolve(page: Path, target: str) -> tuple[Path | None, str]:
    """The file a relative link points at (None for a link to another site) and its anchor."""
    if SCHEME.match(target) or target.startswith("//"):
        return None, ""
    path, _, anchor = target.partition("#")
    path = unquote(path.split("?", 1)[0])
    if not path:
        return page, unquote(anchor)
    base = ROOT if path.startswith("/") else page.parent
    return (base / path.lstrip("/")).resolve(), unquote(anchor)


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in links(page):
        path, anchor = resolve(page, target)
        if path is None:
            continue
        where = f"{page.relative_to(ROOT)}:{number}: ({target})"
        if not path.is_relative_to(ROOT):
            problems.append(f"{where} points outside the repository")
        elif not path.exists():
            problems.append(f"{where} {path.relative_to(ROOT)} does not exist")
        elif anchor and path.suffix.lower() == ".md" and anchor.lower() not in anchors(path):
            problems.append(f"{where} {path.relative_to(ROOT)} has no heading with anchor #{anchor}")
    return problems


def test_docs_pages_exist():
    assert README.is_file()
    assert list(DOCS.glob("*.md")), "docs/ holds no Markdown page"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    problems = broken_links(page)
    if problems:
        pytest.fail(f"{len(problems)} broken link(s):\n" + "\n".join(problems), pytrace=False)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {resolve(README, target)[0] for _, target in links(README)}
    missing = [str(p.relative_to(ROOT)) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    if missing:
        pytest.fail(f"README.md does not link to: {', '.join(missing)}", pytrace=False)


def repository_files() -> list[Path]:
    """The tracked files (`git ls-files`), plus the README and docs pages tracked or not."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout ({err})")
    files = {ROOT / name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name}
    files.update(pages())
    return sorted(p for p in files if p.is_file() and ".git" not in p.relative_to(ROOT).parts)


def test_no_file_cites_the_internal_notes():
    hits = []
    for path in repository_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", "replace")
        if not any(name in text for name in INTERNAL_NOTES):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if any(name in line for name in INTERNAL_NOTES):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:160]}")
    if hits:
        pytest.fail(
            f"{len(hits)} line(s) cite {', '.join(INTERNAL_NOTES)}, which are not part of the repository; "
            "carry the fact into docs/ (with its published source) and cite that instead:\n" + "\n".join(hits),
            pytrace=False,
        )


def test_readme_is_short():
    lines = README.read_bytes().count(b"\n")  # what `wc -l` counts
    if lines > MAX_README_LINES:
        pytest.fail(f"README.md has {lines} lines (at most {MAX_README_LINES}); move detail into docs/", pytrace=False)


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("`make pretrain`", "make-pretrain"),
        ("Where the floor's error lies, and what bounds a fix", "where-the-floors-error-lies-and-what-bounds-a-fix"),
        ("Can the operator be rolled out?", "can-the-operator-be-rolled-out"),
        ("`bench_pipeline.py`", "bench_pipelinepy"),
        ("Units: 10⁻² Å² (S2T)", "units-10-å-s2t"),
        ("MD17 / MD22", "md17--md22"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str):
    assert slug(heading) == anchor
