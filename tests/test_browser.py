"""`dvc plots show`'s offline page, opened in a real headless browser (Debian's Chromium), draws every chart.

Skipped where no Chromium is installed (`apt-get install chromium`; .ci/run installs it when it can).
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cifar10.dataset import CLASS_NAMES
from tests.conftest import ROOT, dvc, git, run


def _chromium() -> str | None:
    """Debian's Chromium, if one runs here (Ubuntu's `chromium-browser` can be a stub that asks for a snap)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path and subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0:
            return path
    return None


CHROMIUM = _chromium()
# Headless, no sandbox (CI runs as root), and none of the background connections a closed network refuses.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",  # ms of page time for Vega's asynchronous drawing before the DOM is printed
]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)"),
]

# Each chart of dvc.yaml by the id DVC gives its <div>, and texts it must draw: axis titles and labels.
CHARTS = {
    "Confusion_matrix__test_set_": ["Predicted class", "True class", *CLASS_NAMES],
    "Per-class_precision__test_set_": ["Class", "Precision (share of the images given the class that belong to it)"],
    "metrics_per_class_csv": ["Class", "Recall (share of the class's test images classified right)"],
    "Loss": ["Epoch", "loss"],
    "Accuracy": ["Epoch", "accuracy"],
    "Learning_rate": ["Epoch", "0.0e+0", "1.0e-3"],
}


def _write_plot_data(repo: Path) -> None:
    """Six epochs of curves as DVCLive writes them, and the per-image and per-class CSVs evaluate writes."""
    for name in ("train/loss", "val/loss", "train/accuracy", "val/accuracy", "learning_rate"):
        metric = name.rsplit("/", 1)[-1]
        path = repo / "dvclive/plots/metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        values = {"loss": lambda s: 2.0 - 0.2 * s, "accuracy": lambda s: 0.3 + 0.1 * s}.get(
            metric, lambda s: 1e-3 / (1 + 1e-6 * 625 * s)
        )
        path.write_text(f"timestamp\tstep\t{metric}\n" + "".join(f"{s}\t{s}\t{values(s)}\n" for s in range(6)))
    (repo / "metrics").mkdir()
    with open(repo / "metrics/predictions.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["actual", "predicted"])
        rows.writerows([CLASS_NAMES[i % 10], CLASS_NAMES[(i * 7) % 10 if i % 3 == 0 else i % 10]] for i in range(100))
    with open(repo / "metrics/per_class.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["class", "images", "precision", "recall"])  # as evaluate writes it
        rows.writerows([name, 10, 0.5 + i / 40, 0.9 - i / 40] for i, name in enumerate(CLASS_NAMES))


def _chart_texts(dom: str, div_id: str) -> list[str]:
    """The <text> elements Vega drew as SVG inside the chart's <div> (empty if it drew nothing)."""
    start = dom.find(f'<div id="{div_id}"')
    assert start >= 0, f"no <div> for {div_id}"
    end = dom.find('<div id="', start + 1)
    chart = dom[start : end if end > 0 else len(dom)]
    if '<svg xmlns="http://www.w3.org/2000/svg"' not in chart or 'class="marks"' not in chart:
        return []
    return [re.sub(r"&#39;|&apos;", "'", t) for t in re.findall(r"<text[^>]*>([^<]+)</text>", chart)]


def test_the_offline_plots_page_draws_every_chart_in_a_headless_browser(tmp_path: Path):
    repo = tmp_path / "project"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")
    _write_plot_data(repo)
    run([sys.executable, "-m", "cifar10.report", "--offline-plots"], cwd=repo, import_root=True)
    page = Path(dvc("plots", "show", cwd=repo).stdout.strip().splitlines()[-1].removeprefix("file://"))
    assert not re.search(r"<script[^>]+src=", page.read_text()), "the page loads a script from elsewhere"

    # Chromium runs the page's scripts (no network: nothing to fetch) and prints the DOM they leave.
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for div_id, expected in CHARTS.items():
        texts = _chart_texts(dom, div_id)
        assert texts, f"{div_id}: Vega drew nothing"
        missing = [t for t in expected if t not in texts]
        assert not missing, f"{div_id}: {missing} not drawn; drawn: {texts}"
    # Rows are true classes, top to bottom in class order, as in confusion.png.
    confusion = _chart_texts(dom, "Confusion_matrix__test_set_")
    assert [t for t in confusion if t in CLASS_NAMES][:10] == list(CLASS_NAMES)
