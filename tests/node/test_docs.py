"""The problem codes in docs/api.md are exactly the ones the node can return."""

from __future__ import annotations

import re
from pathlib import Path

from mrx.node.problems import CATALOGUE

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_api_doc_lists_every_problem_code_with_its_status() -> None:
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\d{3}) \|", (DOCS / "api.md").read_text(), re.M)
    assert {code: int(status) for code, status in rows} == {c: k.status for c, k in CATALOGUE.items()}
