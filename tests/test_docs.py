"""The README and docs/robustness.md name the tests behind their promises: every name must exist."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _defined_tests() -> set[str]:
    return {
        m for path in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"^def (test_\w+)", path.read_text(), re.M)
    }


@pytest.mark.parametrize("doc", ["README.md", "docs/robustness.md"])
def test_every_test_a_document_names_exists(doc):
    # Not tests: the archive member, and the metrics of metrics/evaluate.json.
    named = set(re.findall(r"\b(test_\w+)\b", (ROOT / doc).read_text())) - {"test_batch", "test_accuracy", "test_loss"}
    named = {n for n in named if not (ROOT / "tests" / f"{n}.py").exists()}  # file names are fine too
    assert named, doc  # the document does name tests
    assert named <= _defined_tests(), sorted(named - _defined_tests())
