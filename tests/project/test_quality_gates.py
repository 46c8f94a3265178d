"""The configured quality gates are also run (issue 10).

``scripts/test.sh`` (the README's test command, and CI's through ``.ci/run``) installs ruff and
mypy through the dev extra and runs both before pytest, so a lint or type error fails CI; pytest
turns warnings into errors so a normal run prints none; the package metadata uses the SPDX
license string that setuptools >= 77 expects (the table form warns on every install).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _commands(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_test_script_runs_ruff_and_mypy_before_pytest() -> None:
    lines = _commands((ROOT / "scripts/test.sh").read_text())
    joined = "\n".join(lines)
    ruff = joined.index("-m ruff check src tests benchmarks")
    mypy = joined.index("-m mypy")
    pytest_ = joined.index(".venv/bin/python -m pytest")  # then scripts/sanitize.sh (full runs)
    install = joined.index("pip install -q -e '.[dev]'")
    assert install < ruff < mypy < pytest_
    assert "set -euo pipefail" in lines  # a failing gate stops the script


def test_ci_runs_the_readme_test_command() -> None:
    assert "bash scripts/test.sh" in _commands((ROOT / ".ci/run").read_text())
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text()


def test_dev_extra_installs_the_gates() -> None:
    dev = " ".join(PYPROJECT["project"]["optional-dependencies"]["dev"])
    for tool in ("pytest", "ruff", "mypy"):
        assert re.search(rf"\b{tool}\b", dev), tool
    # scripts/sanitize.sh builds with the venv's setuptools, which must read the SPDX license.
    assert "setuptools>=77" in dev
    assert PYPROJECT["tool"]["mypy"]["files"] == ["src/ipsecsa"]
    assert PYPROJECT["tool"]["ruff"]["line-length"] == 100


def test_warnings_are_errors_and_the_license_is_an_spdx_string() -> None:
    assert PYPROJECT["tool"]["pytest"]["ini_options"]["filterwarnings"][0] == "error"
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    requires = PYPROJECT["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    assert int(re.search(r">=(\d+)", setuptools)[1]) >= 77  # type: ignore[index]
