"""What the deploy tests share: the ``mrx`` command on the PATH, as an operator's install leaves it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shell_env(bin_dir: Path) -> dict[str, str]:
    """The environment of a shell where ``mrx`` and ``python`` are the ones under test (installed or not)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, command in (("mrx", f'"{sys.executable}" -m mrx.node.cli'), ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture
def operator_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return shell_env(tmp_path_factory.mktemp("bin"))
