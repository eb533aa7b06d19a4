"""The code's comments point into this repository's docs, and what they cite exists there.

Conventions (docs/architecture.md, "Where comments point"): ``docs/<name>.md §N`` or
``hw/<name>.md §N`` cite a section; a bare ``§N`` in a room cites that room's reference page
(line → docs/v253.md, handset → hw/ag1171.md, speech and the DTMF detector → docs/audio.md);
``quirk #N`` is a row of docs/modem-quirks.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import appliance

ROOT = Path(appliance.__file__).parent.parent
SOURCES = sorted([*ROOT.joinpath("appliance").rglob("*.py"),
                  *ROOT.joinpath("appliance").rglob("*.toml")])
#: Which page a bare "§N" cites, by where the source lives.
BARE_SECTION_PAGES = {
    "appliance/line/": "docs/v253.md",
    "appliance/cli/modem.py": "docs/v253.md",
    "appliance/sim/modem/": "docs/v253.md",  # the emulator: the DCE side of the same link
    "appliance/handset/": "hw/ag1171.md",
    "appliance/speech/": "docs/audio.md",
    "appliance/audio/dtmf.py": "docs/audio.md",
}
CITATION = re.compile(r"((?:docs|hw)/[\w-]+\.md) ?((?:§ ?\d+(?:\.\d+)*(?:/§?\d+(?:\.\d+)*)*)?)")
BARE = re.compile(r"(?<![\w.)])§ ?(\d+(?:\.\d+)*)")
OUTSIDE = re.compile(r"DESIGN\.md|\.\./shared|reference/[a-z0-9-]+\.md|house-style|prior-art"
                     r"|law-gdpr|[Ii]ssue \d+ item")


def _sections(page: Path) -> set[str]:
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", line)
        if match:
            found.add(match.group(1))
    return found


def _lines() -> list[tuple[str, int, str]]:
    return [(str(path.relative_to(ROOT)), number, line)
            for path in SOURCES
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]


def test_sources_are_found() -> None:
    assert len(SOURCES) > 50


def test_no_comment_points_outside_the_repository() -> None:
    outside = [f"{where}:{n}: {line.strip()}" for where, n, line in _lines()
               if OUTSIDE.search(line)]
    assert outside == []


#: Everything else a reader meets in the repository: docs, tests, hardware notes, units, scripts.
OTHER_TEXTS = sorted(
    path for path in [*ROOT.joinpath("docs").rglob("*.md"), *ROOT.joinpath("tests").rglob("*.py"),
                      *ROOT.joinpath("hw").iterdir(), *ROOT.joinpath("systemd").iterdir(),
                      ROOT / "README.md", ROOT / "setup.sh", ROOT / ".ci" / "run"]
    if path.is_file() and path.name != Path(__file__).name)
#: A pointer at a file outside the repository (the founders' maps beside it).
OUTSIDE_FILE = re.compile(r"DESIGN\.md|\.\./shared|reference/[a-z0-9-]+\.md|house-style\.md"
                          r"|prior-art\.md|law-gdpr\.md")


def test_no_doc_test_or_script_points_outside_the_repository() -> None:
    outside = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
               for path in OTHER_TEXTS
               for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               if OUTSIDE_FILE.search(line)]
    assert len(OTHER_TEXTS) > 100
    assert outside == []


def test_every_cited_page_and_section_exists() -> None:
    missing = []
    for where, n, line in _lines():
        for match in CITATION.finditer(line):
            page = ROOT / match.group(1)
            if not page.exists():
                missing.append(f"{where}:{n}: {match.group(1)}")
                continue
            sections = _sections(page)
            missing += [f"{where}:{n}: {match.group(1)} §{s}"
                        for s in re.findall(r"\d+(?:\.\d+)*", match.group(2))
                        if s not in sections]
    assert missing == []


@pytest.mark.parametrize(("prefix", "page"), sorted(BARE_SECTION_PAGES.items()))
def test_bare_sections_exist_on_the_rooms_page(prefix: str, page: str) -> None:
    sections = _sections(ROOT / page)
    missing = []
    for where, n, line in _lines():
        if not where.startswith(prefix):
            continue
        for match in BARE.finditer(line):
            if re.search(r"(\.md|V\.25[03])\s*$", line[: match.start()]):
                continue  # an explicit citation, or the standard's own numbering
            if match.group(1) not in sections:
                missing.append(f"{where}:{n}: §{match.group(1)}")
    assert missing == []


def test_bare_sections_only_where_a_page_is_agreed() -> None:
    stray = []
    for where, n, line in _lines():
        if any(where.startswith(prefix) for prefix in BARE_SECTION_PAGES):
            continue
        for match in BARE.finditer(line):
            if not re.search(r"(\.md|V\.25[03])\s*$", line[: match.start()]):
                stray.append(f"{where}:{n}: {line.strip()}")
    assert stray == []


def test_quirk_numbers_are_rows_of_the_quirks_page() -> None:
    rows = set(re.findall(r"^\| (\d+) \|", ROOT.joinpath("docs/modem-quirks.md")
                          .read_text(encoding="utf-8"), flags=re.MULTILINE))
    unknown = [f"{where}:{n}: #{num}" for where, n, line in _lines()
               for num in re.findall(r"[Qq]uirks? #(\d+)", line) if num not in rows]
    assert unknown == []
