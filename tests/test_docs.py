"""The README's documentation list matches docs/, and nothing cites notes outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_lists_every_doc_and_only_docs_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = readme.split("## Documentation", 1)[1]
    named = set(re.findall(r"^- (docs/[\w-]+\.md)", listed, flags=re.MULTILINE))
    on_disk = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert len(on_disk) >= 10
    assert named == on_disk


def test_nothing_cites_the_notes_outside_the_repository() -> None:
    # The repository's own notes are docs/protocols/acs.md and docs/protocols/realtime.md.
    outside = re.compile(
        r"\.\./shared|/work/shared|acs-protocol\.md|realtime-protocol\.md|performance-notes\.md"
    )
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    for folder in ("acs_trio", "bench", "examples", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".sh"}]
    assert len(files) > 50
    cited = [str(p.relative_to(ROOT)) for p in files if outside.search(p.read_text())]
    assert cited == []
