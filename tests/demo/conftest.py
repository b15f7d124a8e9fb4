"""The calm day: ``mrx demo``'s day with seed `SEED`, played once for the session.

test_demo.py checks it; test_chaos.py plays the same day through faulty
links with nodes killed, and compares what the borders decided with it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mrx.node import demo

SEED = 7
CONTAINERS = 12


@pytest.fixture(scope="session")
def calm_day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, demo.DayResult]:
    """The corridor's directory after the calm day (its nodes stopped), and what the day came to."""
    base = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    result = demo.run_day(base, seed=SEED, containers=CONTAINERS, out=out)
    print(out.getvalue())
    return base, result
