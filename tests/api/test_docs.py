"""docs/api.md's examples run as written: every ```python block, each in its own namespace
(including the manual-keying example of docs/wfp.md rewritten in the Pythonic API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_the_doc_has_its_examples() -> None:
    assert len(BLOCKS) >= 4
    assert any("create_context" in b and "outbound(packet)" in b for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_python_block_of_docs_api_runs(block: str, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    exec(compile(block, str(DOC), "exec"), {"__name__": "docs_api"})  # noqa: S102 - our docs
    out = capsys.readouterr().out
    assert "key" not in out.replace('"encryption"', "")  # a view never prints a key
