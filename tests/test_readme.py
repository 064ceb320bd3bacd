"""The front door cannot rot: the README's usage block runs, and every relative link in the
README and in docs/ points to a file (and heading) that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")


def section(text: str, title: str) -> str:
    """The body of the level-2 section ``## title`` (up to the next level-2 heading)."""
    _, found, rest = text.partition(f"\n## {title}\n")
    assert found, f"README.md has no '## {title}' section"
    return rest.split("\n## ", 1)[0]


def fenced_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where link syntax is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub generates for a page's headings (lowercase, punctuation dropped,
    spaces to hyphens, ``-1``, ``-2`` ... for repeats)."""
    anchors: set[str] = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        candidate, repeat = slug, 0
        while candidate in anchors:
            repeat += 1
            candidate = f"{slug}-{repeat}"
        anchors.add(candidate)
    return anchors


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: — not checked offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == []


def test_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Present heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[a](missing.md) [b](other.md#absent) [c](other.md#present-heading)\n"
                    "`[not a link](nowhere.md)`\n", encoding="utf-8")
    assert [entry.split(":")[0] for entry in broken_links(page)] == ["missing.md", "other.md#absent"]


def test_docs_index_lists_every_page():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for target in LINK.findall(index)}
    unlisted = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in linked]
    assert unlisted == []


def test_ci_runs_the_readme_test_command():
    commands = fenced_blocks(section(README.read_text(encoding="utf-8"), "Quick start"), "bash")
    test_command = commands[-1].strip()
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for step in test_command.split(" && "):
        assert step in ci_lines, f"README test step {step!r} is not a line of .ci/run"


def test_readme_usage_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = fenced_blocks(section(README.read_text(encoding="utf-8"), "Usage"), "python")
    assert len(blocks) == 1, "the README's Usage section should hold exactly one python block"
    monkeypatch.chdir(tmp_path)  # the block saves to a relative out/ folder
    exec(compile(blocks[0], "README.md (Usage)", "exec"), {"__name__": "readme_usage"})
    assert (tmp_path / "out" / "resnet18-arma" / "model.safetensors").is_file()
