"""The repository carries the data its code and tests need (issue 10).

The Windows specification tables are package data (``src/ipsecsa/data/``, provenance in its
README.md), loaded through ``importlib.resources``; nothing in ``src/`` or ``tests/`` reaches for a
file outside the repository, so a fresh clone runs every test.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from ipsecsa import data
from ipsecsa.ndis.constants import Oid
from ipsecsa.ndis.structs import LAYOUTS

ROOT = Path(__file__).resolve().parents[2]


def test_layouts_load_and_hold_the_offload_structures() -> None:
    """The codecs agree with the shipped table (field by field: tests/ndis/test_layouts.py)."""
    layouts = data.windows_layouts()
    assert "mingw" in layouts["about"]
    assert layouts["structs"]["OFFLOAD_IPSEC_ADD_SA"]["size"] == LAYOUTS["OFFLOAD_IPSEC_ADD_SA"].size
    oid = layouts["constants"]["OID_TCP_TASK_IPSEC_ADD_SA"]
    assert int(oid["value"], 16) == Oid.TCP_TASK_IPSEC_ADD_SA


def test_wfp_filters_load_with_their_provenance() -> None:
    wfp = data.wfp_filters()
    assert "mingw" in wfp["about"] and "crosscheck" in wfp
    assert wfp["layers"] and wfp["conditions"]


def test_each_load_is_a_fresh_copy_and_unknown_names_are_refused() -> None:
    a = data.windows_layouts()
    a["structs"].clear()
    assert data.windows_layouts()["structs"]
    with pytest.raises(ValueError, match="no package data file"):
        data.load_json("../../etc/passwd")


def test_readme_names_the_files_and_their_hashes() -> None:
    readme = resources.files("ipsecsa.data").joinpath("README.md").read_text()
    assert "about" in readme and "mingw-w64" in readme
    for name in data.FILES:
        body = resources.files("ipsecsa.data").joinpath(name).read_bytes()
        assert f"{hashlib.sha256(body).hexdigest()}  {name}" in readme, name


def test_the_files_are_declared_package_data() -> None:
    """So that a wheel carries them, not only a checkout."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["tool"]["setuptools"]["package-data"]["ipsecsa.data"]
    assert "*.json" in declared and "README.md" in declared


OUTSIDE = re.compile(r"parents\[\d+\]\.parent\b|ROOT\.parent\b|\.\./shared|/work/shared"
                     r"|Path\([^)]*\"shared/|/ \"shared\"")


def test_no_code_or_test_reads_files_outside_the_repository() -> None:
    offenders = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"),
                 *ROOT.glob("benchmarks/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE.search(line) and path.name != Path(__file__).name:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
