"""The documents point at each other by heading: every such link lands on a heading that exists."""

import re

from tldr_core.paths import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_heading_lands_on_one():
    headings = {doc.name: {anchor(h) for h in re.findall(r"^#+ (.*)$", doc.read_text(), re.M)} for doc in DOCS}
    broken = []
    for doc in DOCS:
        for target, name in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", doc.read_text()):
            file = target.rsplit("/", 1)[-1] or doc.name
            if file in headings and name not in headings[file]:
                broken.append(f"{doc.name} -> {file}#{name}")
    assert not broken
