"""End to end: real `dvc repro`, `dvc exp run` and `dvc metrics diff` in a throwaway git repo,
downloading the synthetic archive from a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar10.archive import load_test
from cifar10.classifier import class_names_of
from cifar10.dataset import CLASS_NAMES
from cifar10.devices import cpu_bfloat16_unit
from cifar10.framework import keras
from tests.conftest import (
    PER_BATCH,
    TEST_IMAGES,
    TINY_TRAIN,
    dvc,
    git,
    make_project,
    run,
    set_params,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow
STAGES = ("download", "normalize", "train", "evaluate", "gate", "export", "preview")
AFTER_TRAIN = {"train", "evaluate", "gate", "export"}  # what a new model reruns


def ran(output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '(\w+)'", output))


def restored(output: str) -> set[str]:
    """The stages whose outputs DVC's run cache restored instead of running them."""
    return set(re.findall(r"Stage '(\w+)' is cached - skipping run, checking out outputs", output))


def up_to_date(repo: Path) -> bool:
    return "Data and pipelines are up to date." in dvc("status", cwd=repo).stdout


def _serve_and_configure(project: Path, archive, base: str, root: Path) -> None:
    """Point the project at the synthetic archive on the local HTTP server, with tiny params, and commit."""
    path, md5 = archive
    shutil.copy(path, root / "cifar-10-python.tar.gz")
    set_params(
        project,
        {
            "download": {"url": f"{base}/cifar-10-python.tar.gz", "md5": md5, "retries": 0},
            "normalize": {"val_size": 20},
            "train": {**TINY_TRAIN, "mixed_precision": "auto"},  # as committed: the stage picks by hardware
            "evaluate": {"batch_size": 7},
        },
    )
    git("commit", "-qam", "tiny params on the local archive", cwd=project)


@dataclass(frozen=True)
class Reproduced:
    """A copy of one served project after its first `dvc repro`, and what that repro printed."""

    repo: Path
    first: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def _reproduced_template(tmp_path_factory: pytest.TempPathFactory, archive) -> tuple[Path, Path]:
    """One served project's first `dvc repro`, run once per test session and shared by the pytest-xdist workers
    (a file lock in their common temporary folder): every walk below starts from that state, so the suite pays
    for the first repro once instead of once per walk. Returns (project folder, folder of the repro's output)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp()
    if worker is not None:
        shared = shared.parent  # the workers' folders sit side by side in this run's folder
    home = shared / "reproduced-pipeline"
    with open(shared / "reproduced-pipeline.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (home / "done").exists():
            shutil.rmtree(home, ignore_errors=True)  # a half-built one from a worker that died
            home.mkdir()
            project = home / "project"
            make_project(project)
            server, base, www = start_server(home / "www")
            try:
                _serve_and_configure(project, archive, base, www)
                first = dvc("repro", cwd=project)
            finally:
                stop_server(server)
            (home / "stdout.txt").write_text(first.stdout)
            (home / "stderr.txt").write_text(first.stderr)
            (home / "done").touch()
    return home / "project", home


@pytest.fixture()
def reproduced(_reproduced_template: tuple[Path, Path], tmp_path: Path) -> Reproduced:
    """A private copy of the reproduced project (git repo, DVC cache, run cache and outputs): a test may change it.

    The copy's download URL points at a server that is gone: nothing here changes download's params, so DVC never
    fetches again (a download would fail the test)."""
    template, home = _reproduced_template
    repo = tmp_path / "project"
    # .dvc/tmp holds DVC's locks and its state for the template's own folder; the copy builds its own.
    shutil.copytree(
        template, repo, symlinks=True, ignore=lambda folder, names: ["tmp"] if folder.endswith("/.dvc") else []
    )
    first = subprocess.CompletedProcess(
        ["dvc", "repro"], 0, (home / "stdout.txt").read_text(), (home / "stderr.txt").read_text()
    )
    return Reproduced(repo, first)


def test_repro_produces_every_output_and_caches(reproduced: Reproduced, archive):
    repo, first = reproduced.repo, reproduced.first
    assert ran(first.stdout) == set(STAGES)
    # Quiet success: none of TensorFlow's start-up logging (cuInit "errors" on a machine without a GPU).
    noisy = [line for line in first.stderr.splitlines() if re.search(r"error|E0000|W0000|I0000|absl|cuda", line, re.I)]
    assert noisy == [], noisy

    # Normalize: the split and the statistics; only what later stages read (the test batch stays in the archive).
    stats = json.loads((repo / "data/normalized/stats.json").read_text())
    assert stats["counts"] == {"train": 5 * PER_BATCH - 20, "val": 20}
    assert sorted(p.name for p in (repo / "data/normalized").iterdir()) == [
        "stats.json",
        "x_train.npy",
        "x_val.npy",
        "y_train.npy",
        "y_val.npy",
    ]
    assert np.load(repo / "data/normalized/x_train.npy").dtype == np.float32

    # Train: the three model files, DVCLive's per-epoch files, metrics/train.json: three figures, no timings.
    for name in ("model.keras", "model.json", "model.weights.h5", "meta.json"):
        assert (repo / "models" / name).is_file(), name
    train_metrics = json.loads((repo / "metrics/train.json").read_text())
    assert set(train_metrics) == {"val_accuracy", "epochs", "train_minutes"}
    assert train_metrics["epochs"] == 1 and 0 <= train_metrics["val_accuracy"] <= 1
    training = json.loads((repo / "models/meta.json").read_text())["training"]  # speed travels with the model
    assert training["images_per_second"] > 0 and training["wall_seconds"] > 0
    assert train_metrics["train_minutes"] == pytest.approx(training["wall_seconds"] / 60, abs=0.01)
    with (repo / "dvclive/plots/metrics/val/accuracy.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 1 and float(rows[0]["accuracy"]) == pytest.approx(train_metrics["val_accuracy"])
    meta = json.loads((repo / "models/meta.json").read_text())
    assert meta["seed"] == 42 and meta["train"]["widths"] == [4, 8, 8] and meta["class_names"] == list(CLASS_NAMES)
    # params.yaml says mixed_precision "auto": the record holds what this machine chose (a CPU, so by its flags).
    chosen = "bfloat16" if cpu_bfloat16_unit() else "none"
    assert meta["train"]["mixed_precision"] == training["mixed_precision"] == chosen

    # Evaluate: two metrics, consistent with the per-image predictions the confusion plot reads.
    scores = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(scores) == {"test_accuracy", "test_loss"}
    with (repo / "metrics/per_class.csv").open() as f:
        per_class = {r["class"]: r for r in csv.DictReader(f)}
    assert list(per_class) == list(CLASS_NAMES)
    with (repo / "metrics/predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == TEST_IMAGES
    assert sum(r["actual"] == r["predicted"] for r in rows) / len(rows) == pytest.approx(scores["test_accuracy"])

    # The confusion matrix's diagonal over its total is the accuracy.
    counts = np.zeros((10, 10), int)
    for r in rows:
        counts[CLASS_NAMES.index(r["actual"]), CLASS_NAMES.index(r["predicted"])] += 1
    assert np.trace(counts) / counts.sum() == pytest.approx(scores["test_accuracy"])
    for cls, i in zip(CLASS_NAMES, range(10)):
        if counts[i].sum():
            assert float(per_class[cls]["recall"]) == pytest.approx(counts[i, i] / counts[i].sum(), abs=1e-4)
        assert int(per_class[cls]["images"]) == counts[i].sum()

    # The pictures: PNGs that DVC declares as image plots.
    for name in (
        "plots/evaluate/confusion.png",
        "plots/evaluate/first_predictions.png",
        "plots/evaluate/mistakes.png",
        "plots/augmented.png",
    ):
        assert (repo / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with Image.open(repo / "plots/augmented.png") as aug:
        assert aug.width > aug.height  # 6 images, each beside 7 augmented copies
    shown = json.loads(dvc("plots", "show", "--json", cwd=repo).stdout)["data"]
    assert set(shown) >= {
        "plots/augmented.png",
        "plots/evaluate/mistakes.png",
        "plots/evaluate/confusion.png",
        "plots/evaluate/first_predictions.png",
        "Loss",
        "Accuracy",
        "Learning rate",
        "Confusion matrix (test set)",
        "metrics/per_class.csv",  # drawn as the per-class recall chart (dvc.yaml)
        "Per-class precision (test set)",
    }
    # The Vega confusion matrix has the PNG's orientation: true classes in rows, predicted in columns.
    confusion = shown["Confusion matrix (test set)"][0]["content"]["spec"]["encoding"]
    assert confusion["x"]["field"] == "predicted" and confusion["y"]["field"] == "actual"
    assert len(shown) == 10  # each chart once: the per-class file is not drawn a second time as a line
    recall_chart = shown["metrics/per_class.csv"][0]["content"]
    assert recall_chart["title"]["text"] == "Per-class recall (test set)" and recall_chart["mark"]["type"] == "bar"
    bars = recall_chart["data"]["values"]
    assert {b["class"]: float(b["recall"]) for b in bars} == {c: float(r["recall"]) for c, r in per_class.items()}
    # The learning rate on an axis from 0 in exponent notation: a flat schedule looks flat.
    rate_axis = shown["Learning rate"][0]["content"]["encoding"]["y"]
    assert rate_axis["scale"] == {"zero": True} and rate_axis["axis"]["format"] == ".1e"
    points = shown["Loss"][0]["content"]["data"]["values"]
    assert {p["filename"] for p in points} == {"train/loss.tsv", "val/loss.tsv"}  # both curves on one chart
    val_point = next(p for p in points if p["filename"] == "val/loss.tsv")
    assert float(val_point["loss"]) == pytest.approx(training["val_loss"])

    # The saved model takes raw uint8 images, and the tutorial's json + weights give the same predictions.
    # Its last layer carries the class names (cifar10.classifier.ClassNames, registered by that import).
    test = load_test(archive[0])
    model = keras.models.load_model(repo / "models/model.keras", compile=False)
    assert class_names_of(model) == CLASS_NAMES
    probabilities = model.predict(test.images, verbose=0)
    assert CLASS_NAMES[int(probabilities[0].argmax())] == rows[0]["predicted"]
    twin = keras.models.model_from_json((repo / "models/model.json").read_text())
    twin.load_weights(repo / "models/model.weights.h5")
    assert np.allclose(twin.predict(test.images, verbose=0), probabilities, atol=1e-6)

    # Nothing changed: nothing runs.
    second = dvc("repro", cwd=repo)
    assert ran(second.stdout) == set()
    assert all(f"Stage '{s}' didn't change, skipping" in second.stdout for s in STAGES)


def test_changing_params_reruns_exactly_the_affected_stages_and_old_params_come_from_the_run_cache(
    reproduced: Reproduced,
):
    repo = reproduced.repo
    set_params(repo, {"train": {"epochs": 2}})
    assert ran(dvc("repro", cwd=repo).stdout) == AFTER_TRAIN
    two_epochs = json.loads((repo / "metrics/train.json").read_text())
    assert two_epochs["epochs"] == 2

    # normalize.val_size 0 ("train on all, as the tutorial did") end to end: tests/test_backends.py.

    # The gate reruns only if the scores changed: the batch size of inference may change the last bits.
    set_params(repo, {"evaluate": {"batch_size": 3}})
    assert ran(dvc("repro", cwd=repo).stdout) - {"gate"} == {"evaluate"}

    set_params(repo, {"train": {"rotation_deg": 5.0}})  # augmentation: its preview and training rerun
    assert ran(dvc("repro", cwd=repo).stdout) == {"preview"} | AFTER_TRAIN

    # Back to params that ran before: DVC's run cache restores every stage's outputs; nothing trains.
    set_params(repo, {"train": {"rotation_deg": 15.0}, "evaluate": {"batch_size": 7}})
    back = dvc("repro", cwd=repo).stdout
    assert ran(back) == {"gate"}  # no outputs, so nothing to restore: it checks the restored scores again
    assert restored(back) == {"train", "evaluate", "export", "preview"}, back
    assert json.loads((repo / "metrics/train.json").read_text()) == two_epochs  # the first run's file, restored
    assert up_to_date(repo)

    # Where a run goes (resources: GPUs, strategy) is no stage's dependency: DVC has nothing to rerun.
    set_params(repo, {"resources": {"devices": [0], "strategy": "mirrored"}})
    assert up_to_date(repo)
    set_params(repo, {"resources": {"devices": [], "strategy": "one"}})

    # The gate: a floor above the accuracy reached stops `dvc repro` with the stage's one line; nothing else runs.
    set_params(repo, {"gate": {"min_test_accuracy": 1.0}})
    stopped = dvc("repro", cwd=repo, check=False)
    assert stopped.returncode != 0 and ran(stopped.stdout) == {"gate"}
    gate_lines = [line for line in stopped.stderr.splitlines() if line.startswith("error: gate:")]
    assert len(gate_lines) == 1 and gate_lines[0].endswith("is below gate.min_test_accuracy 1.0000"), stopped.stderr


def test_experiments_and_metrics_diff_across_commits(reproduced: Reproduced):
    repo = reproduced.repo
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline run", cwd=repo)

    exp = dvc("exp", "run", "-S", "train.epochs=2", cwd=repo)
    assert ran(exp.stdout) == AFTER_TRAIN
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    experiments = [e for commit in shown for e in (commit.get("experiments") or [])]
    assert experiments, shown
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    assert data["metrics"]["metrics/train.json"]["data"]["epochs"] == 2
    assert set(data["metrics"]["metrics/evaluate.json"]["data"]) == {"test_accuracy", "test_loss"}

    # The README's `exp show` fits a terminal: the metrics and the changed param, no dependency hashes.
    table = dvc("exp", "show", "--only-changed", "--drop", "Created|.*/", "--keep", "(val|test)_accuracy", cwd=repo)
    header = next(line for line in table.stdout.splitlines() if "Experiment" in line).split()
    # train_minutes is rounded to 0.01 min: on a fast machine the 1- and 2-epoch runs can tie, and
    # --only-changed then drops the column, as it should.
    assert [name for name in header if name != "train_minutes"] == [
        "Experiment",
        "val_accuracy",
        "epochs",
        "test_accuracy",
        "test_loss",
        "train.epochs",
    ]
    assert max(len(line.rstrip()) for line in table.stdout.splitlines()) <= 160

    # The experiment's results are in the workspace: metrics diff against the committed baseline.
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)
    assert diff["metrics/train.json"]["epochs"] == {"old": 1, "new": 2, "diff": 1}

    # plots diff draws the committed curves and the workspace's on one chart.
    plots = json.loads(dvc("plots", "diff", "HEAD", "--json", cwd=repo).stdout)["data"]
    points = plots["Accuracy"][0]["content"]["data"]["values"]
    assert {p["rev"] for p in points} == {"HEAD", "workspace"}
    assert len([p for p in points if p["rev"] == "workspace" and p["filename"] == "val/accuracy.tsv"]) == 2

    # The review report: both diffs as Markdown tables and the key charts drawn to PNG, offline.
    run([sys.executable, "-m", "cifar10.report", "--rev", "HEAD"], cwd=repo)
    report = (repo / "report.md").read_text()
    assert "## Metrics (workspace against `HEAD`)" in report
    assert re.search(r"\| metrics/train\.json\s+\| epochs\s+\| 1\s+\| 2\s+\| 1\s+\|", report), report
    assert re.search(r"\| params\.yaml\s+\| train\.epochs\s+\| 1\s+\| 2\s+\|", report), report
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert images[:3] == ["report-images/accuracy.png", "report-images/loss.png", "report-images/per-class-recall.png"]
    for image in images:
        with Image.open(repo / image) as picture:
            assert picture.format == "PNG" and picture.width > 200, image

    # Offline plots: the page `dvc plots show` writes carries Vega inline and loads nothing from the network.
    run([sys.executable, "-m", "cifar10.report", "--offline-plots"], cwd=repo)
    page_uri = dvc("plots", "show", cwd=repo).stdout.strip().splitlines()[-1]
    page = Path(page_uri.removeprefix("file://")).read_text()
    assert "window.vegaEmbed=" in page and "vegaEmbed(" in page
    assert not re.search(r"<script[^>]+src=", page), "a script still loads from elsewhere"


def test_cached_runs_survive_exp_run_exp_apply_git_checkout_and_a_fresh_clone(reproduced: Reproduced, tmp_path: Path):
    """Whatever ran once is never trained again: an experiment rerun with the same params, `dvc exp apply`,
    `git checkout` + `dvc checkout`, and a fresh clone after `dvc pull`."""
    repo = reproduced.repo
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "one epoch", cwd=repo)
    one_epoch = git("rev-parse", "HEAD", cwd=repo).stdout.strip()

    first = dvc("exp", "run", "-n", "two", "-S", "train.epochs=2", cwd=repo)
    assert ran(first.stdout) == AFTER_TRAIN
    metrics = json.loads((repo / "metrics/train.json").read_text())
    git("reset", "-q", "--hard", cwd=repo)  # back to the one-epoch commit, then the same experiment again
    dvc("checkout", cwd=repo)
    again = dvc("exp", "run", "-n", "two-again", "-S", "train.epochs=2", cwd=repo)
    assert ran(again.stdout) == {"gate"} and restored(again.stdout) == {"train", "evaluate", "export"}, again.stdout
    assert json.loads((repo / "metrics/train.json").read_text()) == metrics

    # Back to the commit, then apply the experiment: its outputs come from the cache, nothing is stale.
    git("reset", "-q", "--hard", cwd=repo)
    dvc("checkout", cwd=repo)
    assert up_to_date(repo)
    dvc("exp", "apply", "two", cwd=repo)
    assert json.loads((repo / "metrics/train.json").read_text()) == metrics
    assert up_to_date(repo) and ran(dvc("repro", cwd=repo).stdout) == set()
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "two epochs", cwd=repo)
    git("tag", "-a", "cifar10-classifier@v1.0.0", "-m", "two epochs", cwd=repo)  # a registry version (GTO's tag)
    dvc("push", cwd=repo)
    trained_model = (repo / "models/model.keras").read_bytes()

    # An older commit: git checkout + dvc checkout gives its outputs back, up to date, nothing reruns.
    git("checkout", "-q", one_epoch, cwd=repo)
    dvc("checkout", cwd=repo)
    assert json.loads((repo / "metrics/train.json").read_text())["epochs"] == 1
    assert up_to_date(repo) and ran(dvc("repro", cwd=repo).stdout) == set()

    # The model of another revision, by name: the registry's latest version, and cifar10-predict --rev.
    got = tmp_path / "artifact.keras"
    dvc("artifacts", "get", str(repo), "cifar10-classifier", "-o", str(got), cwd=tmp_path)
    assert got.read_bytes() == trained_model
    by_version = tmp_path / "v1.keras"
    dvc("artifacts", "get", str(repo), "cifar10-classifier", "--rev", "v1.0.0", "-o", str(by_version), cwd=tmp_path)
    assert by_version.read_bytes() == trained_model
    samples = [sys.executable, "-m", "cifar10.predict", "--test-samples", "5", "--json"]
    by_rev = run([*samples, "--rev", "main"], cwd=repo / "metrics").stdout  # from a subfolder, too
    assert by_rev == run([*samples, "--model", str(got)], cwd=repo).stdout
    assert by_rev != run(samples, cwd=repo).stdout  # the workspace holds the one-epoch model

    # A fresh clone on another machine: pull, and the pipeline is up to date; repro trains nothing.
    clone = tmp_path / "laptop"
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    git("checkout", "-q", "main", cwd=clone)
    dvc("pull", "models", cwd=clone)  # a laptop that only wants the model gets it, and nothing else
    assert (clone / "models/model.keras").read_bytes() == trained_model
    assert not (clone / "data/normalized").exists()
    dvc("pull", cwd=clone)
    status = dvc("status", cwd=clone).stdout
    assert "Data and pipelines are up to date." in status, status
    assert ran(dvc("repro", cwd=clone).stdout) == set()
    assert json.loads((clone / "metrics/train.json").read_text()) == metrics
