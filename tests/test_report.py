"""Charts that read well anywhere: DVC's specs drawn by the real Vega engine (vl-convert), with no network.

The end-to-end report and offline `dvc plots show` run in tests/test_pipeline.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import vl_convert
from dvc_render import VegaRenderer

from cifar10.errors import StageError
from cifar10.report import PAGE, post_comment, render_png
from tests.conftest import ROOT


def _tick_labels(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]+)</text>", svg)


def test_the_learning_rate_chart_starts_at_zero_in_exponent_notation():
    """A rate that decays from 1e-3 by 0.005% must look flat, not like a cliff over nine-decimal ticks."""
    points = [{"step": s, "learning_rate": 1e-3 / (1 + 1e-6 * 625 * s), "rev": "workspace"} for s in range(80)]
    renderer = VegaRenderer(
        points,
        "Learning rate",
        template="learning_rate",
        template_dir=str(ROOT / ".dvc" / "plots"),
        x="step",
        y="learning_rate",
        x_label="Epoch",
        y_label="learning_rate",
    )
    spec = renderer.get_filled_template()
    labels = _tick_labels(vl_convert.vegalite_to_svg(spec))
    rate_ticks = [t for t in labels if re.fullmatch(r"\d\.\de[+-]\d+", t)]
    assert "0.0e+0" in rate_ticks and len(rate_ticks) >= 3, labels
    assert not [t for t in labels if re.fullmatch(r"0\.0{4,}\d+", t)], labels  # no 0.000999955-style ticks


def test_the_offline_page_keeps_dvcs_placeholders_and_carries_its_scripts():
    # DVC's placeholders stay, its CDN `{scripts}` goes: the page carries the bundle instead, as UTF-8.
    assert "{plot_divs}" in PAGE and "{refresh_tag}" in PAGE and "{scripts}" not in PAGE
    assert '<meta charset="utf-8">' in PAGE and "src=" not in PAGE


def test_a_chart_that_would_load_a_url_is_refused_not_fetched():
    spec = {
        "data": {"url": "data/cars.json"},  # relative: Vega would resolve it against vega-datasets online
        "mark": "point",
        "encoding": {"x": {"field": "Horsepower", "type": "quantitative"}},
    }
    with pytest.raises(StageError, match=r"^cannot draw a chart \("):
        render_png(spec)


def _stand_in_cml(folder: Path, exit_code: int) -> Path:
    """An executable named cml that records its arguments (CML itself is not in this machine's npm registry)."""
    folder.mkdir()
    script = folder / "cml"
    record = "open(sys.argv[0] + '.args', 'w').write(' '.join(sys.argv[1:]))"
    script.write_text(f"#!{sys.executable}\nimport sys\n{record}\nsys.exit({exit_code})\n")
    script.chmod(0o755)
    return script


def test_the_report_is_posted_with_cml_comment_create_and_stays_a_file_without_cml(tmp_path: Path, monkeypatch):
    report = tmp_path / "report.md"
    report.write_text("## Metrics\n")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert post_comment(report) == (
        "report: CML is not installed (npm install -g @dvcorg/cml); the report is in the file above"
    )
    cml = _stand_in_cml(tmp_path / "bin", 0)
    monkeypatch.setenv("PATH", f"{cml.parent}{os.pathsep}{os.environ['PATH']}")
    assert post_comment(report) == f"report: posted {report} with cml comment create"
    assert Path(f"{cml}.args").read_text() == f"comment create {report}"


def test_a_failing_cml_raises_the_error_that_main_reports_in_one_line(tmp_path: Path, monkeypatch):
    cml = _stand_in_cml(tmp_path / "bin", 3)
    monkeypatch.setenv("PATH", f"{cml.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(subprocess.CalledProcessError):
        post_comment(tmp_path / "report.md")
