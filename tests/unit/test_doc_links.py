"""Every link in README.md and docs/**/*.md resolves inside the repository.

Checks inline links and images (``[text](target)``, ``![alt](target)``) and reference
definitions (``[id]: target``) outside fenced code blocks, inline code and HTML comments:

- ``http://``, ``https://`` and ``mailto:`` targets are external and not checked;
- any other target is a path relative to the file that holds the link (``/path`` is
  relative to the repository root); it must exist and stay inside the repository;
- a ``#fragment`` on a Markdown target (``file.md#section``, or ``#section`` in the same
  file) must be the GitHub anchor of one of that file's headings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = ("http://", "https://", "mailto:")
MARKDOWN = (".md", ".markdown")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# [text](target "title") and ![alt](target); the text may hold one level of brackets
# (an image inside a link). The target is <...> or has no spaces (balanced parentheses ok).
_INLINE = re.compile(
    r"(?<!\\)!?\[(?P<text>(?:[^\[\]\\]|\\.|\[(?:[^\[\]\\]|\\.)*\])*)\]"
    r"\(\s*(?P<target><[^<>\n]*>|(?:[^\s()<>]|\((?:[^\s()<>])*\))+)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"
)
_DEFINITION = re.compile(
    r"^ {0,3}\[(?P<label>[^\]^][^\]]*)\]:[ \t]*(?P<target><[^<>\n]*>|\S+)", re.MULTILINE
)
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*?\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Link:
    line: int
    target: str


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blank(match: re.Match[str]) -> str:
    """The match replaced by spaces, newlines kept (line numbers stay right)."""
    return re.sub(r"[^\n]", " ", match.group(0))


def prose(text: str, *, code_spans: bool = True) -> str:
    """The Markdown with fenced code, HTML comments and (unless ``code_spans`` is False)
    inline code blanked out."""
    lines = text.split("\n")
    fence: str | None = None
    for index, line in enumerate(lines):
        found = _FENCE.match(line)
        if fence is None:
            if found:
                fence = found.group(1)
                lines[index] = ""
        else:
            lines[index] = ""
            # A closing fence: the same character, at least as long, nothing after it.
            if (
                found
                and found.group(1)[0] == fence[0]
                and len(found.group(1)) >= len(fence)
                and not line.strip().lstrip(fence[0])
            ):
                fence = None
    text = _COMMENT.sub(_blank, "\n".join(lines))
    return _CODE_SPAN.sub(_blank, text) if code_spans else text


def links(text: str) -> list[Link]:
    """Inline links, images (also inside link text) and reference definitions."""
    body = prose(text)
    found: list[Link] = []

    def scan(chunk: str, offset: int) -> None:
        for match in _INLINE.finditer(chunk):
            start = offset + match.start()
            found.append(Link(body.count("\n", 0, start) + 1, match.group("target").strip("<>")))
            scan(match.group("text"), offset + match.start("text"))

    scan(body, 0)
    for match in _DEFINITION.finditer(body):
        found.append(
            Link(body.count("\n", 0, match.start()) + 1, match.group("target").strip("<>"))
        )
    return sorted(found, key=lambda link: link.line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercased, punctuation other than '-'
    and '_' dropped, spaces turned into hyphens."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", heading)  # images add no text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_, not snake_case
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor GitHub gives the headings of ``path`` (duplicates get -1, -2, …),
    plus explicit ``<a name=…>``/``id=…`` anchors."""
    body = prose(path.read_text(encoding="utf-8"), code_spans=False)
    lines = body.split("\n")
    headings = []
    for index, line in enumerate(lines):
        atx = _ATX.match(line)
        if atx:
            headings.append(atx.group(2) or "")
        elif (
            index
            and _SETEXT.match(line)
            and lines[index - 1].strip()
            and not _ATX.match(lines[index - 1])
            and not (
                line.strip().startswith("-")
                and lines[index - 1].lstrip()[:1] in ("-", "*", "+", "|")
            )
        ):
            headings.append(lines[index - 1].strip())
    seen: dict[str, int] = {}
    result = set(_HTML_ANCHOR.findall(body))
    for heading in headings:
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return frozenset(result)


def problem(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) does not resolve in the repository, or None."""
    if target.lower().startswith(EXTERNAL):
        return None
    if _SCHEME.match(target) or target.startswith("//"):
        return "not a repository path (only http, https and mailto links may leave it)"
    path_part, _, fragment = target.partition("#")
    path_part = unquote(path_part.split("?", 1)[0])
    if not path_part:  # an anchor in the same file
        resolved = source
    elif path_part.startswith("/"):
        resolved = (ROOT / path_part.lstrip("/")).resolve()
    else:
        resolved = (source.parent / path_part).resolve()
    if not resolved.is_relative_to(ROOT):
        return "resolves outside the repository"
    if not resolved.exists():
        return f"no such file or directory: {resolved.relative_to(ROOT)}"
    if fragment and resolved.is_file() and resolved.suffix.lower() in MARKDOWN:
        anchor = unquote(fragment)
        if anchor not in anchors(resolved):
            return f"no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(path: Path) -> None:
    failures = []
    for link in links(path.read_text(encoding="utf-8")):
        why = problem(path, link.target)
        if why is not None:
            failures.append(f"{path.relative_to(ROOT)}:{link.line}: link to {link.target!r}: {why}")
    assert not failures, "broken links:\n" + "\n".join(failures)


def test_the_walk_covers_readme_and_docs() -> None:
    names = {str(p.relative_to(ROOT)) for p in doc_files()}
    assert {"README.md", "docs/api.md"} <= names
    assert any(links((ROOT / "README.md").read_text(encoding="utf-8")))


# ------------------------------------------------------------ the checker itself
SAMPLE = """\
# Title: the *API* (v1)

See [a](docs/x.md), ![img](img/a.png "alt") and [![badge](b.svg)](https://example.com).
`[not](a-link.md)` and [wrapped
text](wrapped.md)

```md
[inside](fence.md)
```

~~~
[also inside](tilde.md)
~~~

[ref]: <refs/target.md> "title"
<!-- [hidden](comment.md) -->

## `job_id` and _emphasis_
## Title: the *API* (v1)
Setext heading
--------------
"""


def test_links_are_extracted_outside_code_and_comments() -> None:
    assert [(link.line, link.target) for link in links(SAMPLE)] == [
        (3, "docs/x.md"),
        (3, "img/a.png"),
        (3, "https://example.com"),
        (3, "b.svg"),
        (4, "wrapped.md"),
        (15, "refs/target.md"),
    ]


def test_github_slugs(tmp_path: Path) -> None:
    assert slug("Title: the *API* (v1)") == "title-the-api-v1"
    assert slug("`job_id` and _emphasis_") == "job_id-and-emphasis"
    assert slug("Errors & [status codes](x.md)") == "errors--status-codes"
    doc = tmp_path / "sample.md"
    doc.write_text(SAMPLE, encoding="utf-8")
    assert anchors(doc) == {
        "title-the-api-v1",
        "job_id-and-emphasis",
        "title-the-api-v1-1",
        "setext-heading",
    }


def test_targets_outside_the_repository_fail() -> None:
    readme = ROOT / "README.md"
    assert problem(readme, "https://example.com/x") is None
    assert problem(readme, "docs/") is None
    assert problem(readme, "../README.md") == "resolves outside the repository"
    assert "no such file" in problem(readme, "docs/missing.md")
    assert "no heading" in problem(readme, "#no-such-section")
    assert "not a repository path" in problem(readme, "file:///etc/passwd")


_TEST_CITE = re.compile(r"\b(tests/[\w/]+\.py)(?:::(\w+))?")


def cited_tests() -> list[tuple[str, str, str | None]]:
    """(file citing it, test file, test name or None) for every ``tests/…py`` path, with
    an optional ``::name``, cited in README.md, docs/ or setup.cfg."""
    found = []
    for path in [*doc_files(), ROOT / "setup.cfg"]:
        for match in _TEST_CITE.finditer(path.read_text()):
            found.append((path.relative_to(ROOT).as_posix(), match.group(1), match.group(2)))
    return found


@pytest.mark.parametrize(("where", "test_file", "name"), cited_tests())
def test_every_cited_test_exists(where: str, test_file: str, name: str | None) -> None:
    """A test a document names as proof is there: the file, and the test in it."""
    path = ROOT / test_file
    assert path.is_file(), f"{where} cites {test_file}, which does not exist"
    if name is not None:
        assert re.search(rf"^(?:async )?def {name}\b|^class {name}\b", path.read_text(), re.M), (
            f"{where} cites {test_file}::{name}, which is not in it"
        )


def test_every_image_the_docs_show_is_refreshed_by_the_screenshot_script() -> None:
    """``python -m tests.browser.screenshots`` copies each image README.md and docs/ show
    from the browser test that takes it: none can go stale unnoticed."""
    from tests.browser.screenshots import SHOTS

    shown = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        shown |= set(re.findall(r"!\[[^\]]*\]\((?:docs/)?img/([^)]+)\)", path.read_text()))
    assert shown and shown == set(SHOTS)
    assert all((ROOT / "docs" / "img" / name).is_file() for name in SHOTS)
