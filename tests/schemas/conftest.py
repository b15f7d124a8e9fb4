"""Fixtures for the message-layer tests: the vectors and two validators that are not mrx."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import xmlschema

from mrx.schemas.xml import MESSAGE_TYPE_NAMES, XSD_DIR

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


@dataclass(frozen=True)
class Vector:
    path: Path
    message_type: str  # from the file name, <MessageType>--<case>.xml
    case: str

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def comment(self) -> str:
        """The first XML comment: what the vector breaks and how mrx must refuse it."""
        match = re.search(r"<!--(.*?)-->", self.path.read_text(encoding="utf-8"), re.S)
        return match.group(1) if match else ""

    def __str__(self) -> str:
        return self.path.name


def vectors(kind: str) -> list[Vector]:
    found = []
    for path in sorted((EXAMPLES / kind).glob("*.xml")):
        message_type, _, case = path.stem.partition("--")
        found.append(Vector(path, message_type, case))
    return found


@dataclass(frozen=True)
class Verdict:
    valid: bool
    exit_code: int
    output: str


class Xmllint:
    """libxml2's command-line validator, exactly as a partner would run it."""

    def __init__(self, executable: str) -> None:
        self.executable = executable

    def validate(self, document: Path, message_type: str) -> Verdict:
        schema = XSD_DIR / f"{message_type}.xsd"
        run = subprocess.run(
            [self.executable, "--noout", "--nonet", "--schema", str(schema), str(document)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Verdict(run.returncode == 0, run.returncode, run.stdout + run.stderr)


@pytest.fixture(scope="session")
def xmllint() -> Xmllint:
    executable = shutil.which("xmllint")
    if executable is None:
        pytest.fail(
            "xmllint is not installed, and the XSDs and vectors must be checked with it as partners will: "
            "apt-get install libxml2-utils",
            pytrace=False,
        )
    return Xmllint(executable)


@pytest.fixture(scope="session")
def xmlschema_validators() -> dict[str, xmlschema.XMLSchema10]:
    """The message XSDs compiled by xmlschema: a pure-Python XSD 1.0 implementation, independent of libxml2."""
    return {name: xmlschema.XMLSchema10(str(XSD_DIR / f"{name}.xsd")) for name in MESSAGE_TYPE_NAMES}
