"""Every relative link in the README and docs/ reaches a file, and every #anchor a heading of it
(GitHub's heading slugs), so a renamed section or moved report shows up here, not to a reader."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str):
    """The lines outside code fences."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_slug_follows_github():
    assert slug("The preset weight beside the confirmed one (`knee_ess_min_dose_sources`, `knee_ess_min_dose`)") \
        == "the-preset-weight-beside-the-confirmed-one-knee_ess_min_dose_sources-knee_ess_min_dose"
    assert slug("Does `decay_identity`'s gain carry over to another mixer? (`rescue_wla`)") \
        == "does-decay_identitys-gain-carry-over-to-another-mixer-rescue_wla"


def test_anchors_number_repeated_headings(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n## Setup\n```\n# not a heading\n```\n## Setup\n")
    assert anchors(page) == {"a", "setup", "setup-1"}


def broken_links(page: Path, root: Path = ROOT) -> list:
    broken = []
    for line in prose(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_relative_to(root):
                broken.append(f"{target} (outside the repository)")
            elif not dest.exists():
                broken.append(f"{target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(root)})")
    return broken


def test_broken_links_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("## Real heading\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](docs/b.md#real-heading) [web](https://x.org/#y) [self](#top)\n# Top\n"
                    "[gone](docs/c.md) [anchor](docs/b.md#renamed) [out](../shared/PAPER.md)\n"
                    "```\n[in a fence](nowhere.md)\n```\n")
    assert broken_links(page, tmp_path) == ["docs/c.md (no such file)",
                                            "docs/b.md#renamed (no heading #renamed in docs/b.md)",
                                            "../shared/PAPER.md (outside the repository)"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
