"""The LICENSE file and pyproject.toml's license metadata agree."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# sha256 of the Apache License 2.0 text as published at https://www.apache.org/licenses/LICENSE-2.0.txt
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_pyproject_names_an_spdx_license_and_its_file():
    project = _project()
    assert project["license"] == "Apache-2.0"  # PEP 639 SPDX expression (setuptools >= 77)
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # PEP 639 forbids both
    files = project["license-files"]
    assert files == ["LICENSE"] and all((ROOT / f).is_file() for f in files)


def test_license_file_is_the_full_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert re.search(r"Apache License\s+Version 2\.0, January 2004", text)
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    for n, title in enumerate(
        [
            "Definitions",
            "Grant of Copyright License",
            "Grant of Patent License",
            "Redistribution",
            "Submission of Contributions",
            "Trademarks",
            "Disclaimer of Warranty",
            "Limitation of Liability",
            "Accepting Warranty or Additional Liability",
        ],
        start=1,
    ):
        assert f"{n}. {title}." in text, title
    assert "END OF TERMS AND CONDITIONS" in text
    assert hashlib.sha256(text.encode()).hexdigest() == APACHE_2_SHA256  # word for word
