"""The README is a front page and the docs hold together: its length, its first commands, its glossary, links
that resolve, and no development history (commit hashes, issue numbers, notes on when something was measured)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "bench" / "RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HASH_LIKE = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
HISTORY = re.compile(r"\bissues? #?\d+|\b1\d[a-e]\b|this session|measured on|\(was[: ]|; was: ", re.IGNORECASE)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_the_readme_is_a_front_page_of_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_the_readme_starts_with_the_two_set_up_commands() -> None:
    lines = README.read_text().splitlines()
    first = [x for x in lines if x.strip()][:5]
    assert first == ["# ocycle_dist", "```bash", "make demo", "make test", "```"]


def test_the_glossary_has_at_most_15_terms() -> None:
    text = README.read_text()
    assert "\n## Glossary\n" in text
    section = text.split("\n## Glossary\n", 1)[1].split("\n## ", 1)[0]
    rows = [x for x in section.splitlines() if x.startswith("| ") and not x.startswith("| term ")]
    assert 8 <= len(rows) <= 15, rows


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_points_at_a_file_that_exists_and_its_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = page.parent / path if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{rel(page)}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_commit_hashes_issue_numbers_or_history_notes(page: Path) -> None:
    text = page.read_text()
    assert not HASH_LIKE.findall(text), rel(page)
    assert not HISTORY.findall(text), rel(page)


def test_the_checks_would_catch_what_they_look_for() -> None:
    assert HASH_LIKE.findall("merged at 3ed29f1, see 5010c72a")
    assert not HASH_LIKE.findall("a 2,000 chunk run, file_3fa9c1d2.flac, 1234567 bytes, deadbeef")
    assert HISTORY.findall("issue 12 (batching), 12a: drain") and HISTORY.findall("exit 1 (was: exit 0)")
    assert LINK.findall("see [the archive](docs/archive.md#files)") == ["docs/archive.md#files"]
