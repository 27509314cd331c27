"""Feast imported after the package has no import-time type instrumentation (recs_pipeline/_feast_typechecks.py)."""

import subprocess
import sys

PROBE = """
import sys
{first}
from feast import Field
from feast.types import Int64
try:
    Field(name=123, dtype=Int64)  # a wrong type that typeguard's instrumentation rejects
except Exception as error:
    print(type(error).__name__)
else:
    print("unchecked")
"""


def _probe(first: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_feast_imported_after_the_package_skips_typeguard_instrumentation():
    assert _probe("import recs_pipeline") == "unchecked"


def test_feast_imported_alone_keeps_its_checks():
    # the probe can fail: without the package first, Feast's decorator does reject the wrong type
    assert _probe("") == "TypeCheckError"
