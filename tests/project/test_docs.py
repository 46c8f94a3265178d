"""The README and docs are true from a fresh clone (issue 10).

* The README's Python example runs as written (in a scratch directory, as a subprocess of the
  installed package), asserts included.
* Every relative link in README.md and docs/*.md points at a file of the repository, and an
  ``#anchor`` at a heading of it; a ``docs/….md`` named in backticks exists too.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it"):]
    m = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert m, "README has no Python example under 'Using it'"
    return m[1]


def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _readme_example()], cwd=tmp_path, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SaCounters(packets=1" in proc.stdout
    assert stat.S_IMODE((tmp_path / "sas.json").stat().st_mode) == 0o600


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    body = CODE_BLOCK.sub("", path.read_text())
    return {_slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", body, re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    body = CODE_BLOCK.sub("", doc.read_text())
    broken = []
    for target in LINK.findall(body):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        outside = not dest.exists() or ROOT not in (dest, *dest.parents)
        if outside or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
            broken.append(target)
    for name in re.findall(r"`(docs/[\w.-]+\.md)`", body):
        if not (ROOT / name).exists():
            broken.append(name)
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def test_the_link_check_catches_a_missing_file(tmp_path: Path) -> None:
    """The check above is not vacuous: a page with a dead link fails it."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n[gone](missing.md) [ok](#title) [bad](#nowhere)\n")
    body = page.read_text()
    targets = LINK.findall(body)
    assert targets == ["missing.md", "#title", "#nowhere"]
    assert _anchors(page) == {"title"}
    assert _slug("Our readings") == "our-readings" and _slug("`ipsecsa.config` — x") == \
        "ipsecsaconfig--x"
