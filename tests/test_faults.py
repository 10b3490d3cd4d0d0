"""Faults the pipeline survives: a killed training resumes, a dropped download resumes,
parallel queued experiments keep to their own files."""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from cifar10.archive import load_train
from cifar10.download import download_archive, md5_of
from cifar10.normalized import write_normalized
from cifar10.preprocessing import split_and_normalize
from tests.conftest import ROOT, TINY_TRAIN, download_params, dvc, git, normalize_params, set_params, stage_env

# ---------------------------------------------------------------- kill and resume


@pytest.fixture()
def train_workdir(tmp_path: Path, archive) -> Path:
    """A folder with normalized arrays and a params.yaml for a tiny deterministic training of many epochs."""
    train = load_train(archive[0])
    arrays, stats = split_and_normalize(train.images, train.labels, normalize_params(val_size=20), seed=42)
    write_normalized(tmp_path / "data", arrays, stats, "global", train.class_names)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update({**TINY_TRAIN, "epochs": 8, "deterministic": True})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _train_cmd(name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stages.train",
        "data",
        f"{name}/models",
        f"{name}/live",
        f"{name}/train.json",
        f"{name}/checkpoints",
    ]


def _env() -> dict[str, str]:
    return stage_env(import_root=True)


def _weights(path: Path) -> list[np.ndarray]:
    arrays: list[np.ndarray] = []
    with h5py.File(path) as f:
        f.visititems(lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_killed_training_resumes_and_ends_with_the_same_model(train_workdir: Path):
    straight = subprocess.run(_train_cmd("straight"), cwd=train_workdir, env=_env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    state = train_workdir / "killed/checkpoints/state.json"
    proc = subprocess.Popen(
        _train_cmd("killed"), cwd=train_workdir, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # as `kill -9` or a lost node: no cleanup runs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = json.loads(state.read_text())["epochs_done"]
    assert 1 <= killed_at < 8
    assert not (train_workdir / "killed/models").exists()  # nothing half-written in place of the model

    resumed = subprocess.run(_train_cmd("killed"), cwd=train_workdir, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {killed_at} of 8" in resumed.stdout
    # The training record travels in models/meta.json; metrics/train.json keeps three figures.
    a = json.loads((train_workdir / "straight/models/meta.json").read_text())["training"]
    b = json.loads((train_workdir / "killed/models/meta.json").read_text())["training"]
    assert b["resumed_from_epoch"] == killed_at and b["epochs"] == 8
    assert b["loss"] > 0.1  # the last epoch trained on real data (an exhausted input logs a loss of 0.0)
    for key in ("accuracy", "loss", "val_accuracy", "val_loss"):
        assert a[key] == b[key], key  # to the last digit
    for x, y in zip(
        _weights(train_workdir / "straight/models/model.weights.h5"),
        _weights(train_workdir / "killed/models/model.weights.h5"),
    ):
        assert np.array_equal(x, y)
    # DVCLive's curves cover all 8 epochs, the resumed ones included, each with a real loss.
    rows = (train_workdir / "killed/live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    assert len(rows) == 8 and all(float(row.split("\t")[-1]) > 0.1 for row in rows)


@pytest.mark.slow
def test_changed_params_start_fresh_and_say_why(train_workdir: Path):
    params = yaml.safe_load((train_workdir / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (train_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    first = subprocess.run(_train_cmd("run"), cwd=train_workdir, env=_env(), capture_output=True, text=True)
    assert "no checkpoint, starting at epoch 1" in first.stdout, first.stderr
    # More epochs, same settings: continue from the checkpoint.
    params["train"]["epochs"] = 2
    (train_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    second = subprocess.run(_train_cmd("run"), cwd=train_workdir, env=_env(), capture_output=True, text=True)
    assert "resuming after epoch 1 of 2" in second.stdout, second.stderr
    # A different learning rate: the checkpoint no longer applies.
    params["train"]["lr_values"] = [0.01, 0.001]
    (train_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    third = subprocess.run(_train_cmd("run"), cwd=train_workdir, env=_env(), capture_output=True, text=True)
    assert "train params, seed, input data or code changed since the checkpoint, starting fresh" in third.stdout


# ---------------------------------------------------------------- flaky downloads


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file; drops the first connection halfway and answers 503 once; honours Range if allowed."""

    payload = b""
    allow_range = True
    events: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        events = type(self).events
        start = 0
        if self.allow_range and (rng := self.headers.get("Range")):
            start = int(rng.removeprefix("bytes=").split("-")[0])
        events.append(f"GET from {start}")
        if len(events) == 2:  # the second request gets a transient server error
            self.send_error(503)
            return
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if len(events) == 1:  # the first connection drops after half the bytes
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize("allow_range", [True, False])
def test_dropped_connection_retries_and_resumes(tmp_path: Path, archive, allow_range: bool):
    path, md5 = archive
    handler = type(
        "Handler", (_FlakyHandler,), {"payload": path.read_bytes(), "allow_range": allow_range, "events": []}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
        params = download_params(url=f"http://127.0.0.1:{server.server_address[1]}/c.tar.gz", md5=md5, retries=3)
        download_archive(params, dest, backoff_s=0.01)
    finally:
        server.shutdown()
        server.server_close()
    assert md5_of(dest) == md5
    half = len(handler.payload) // 2
    # drop at half, 503, then the rest: from where it stopped if the server allows ranges, else from 0
    assert handler.events == [
        "GET from 0",
        f"GET from {half}" if allow_range else "GET from 0",
        f"GET from {half}" if allow_range else "GET from 0",
    ]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------- parallel queued experiments


@pytest.mark.slow
def test_two_queued_experiments_run_in_parallel_without_touching_each_other(project: Path, archive, http_server):
    path, md5 = archive
    base, root = http_server
    shutil.copy(path, root / "cifar-10-python.tar.gz")
    set_params(
        project,
        {
            "download": {"url": f"{base}/cifar-10-python.tar.gz", "md5": md5},
            "normalize": {"val_size": 20},
            "train": TINY_TRAIN,
        },
    )
    git("commit", "-qam", "tiny", cwd=project)
    # The README's advice: the stages both experiments share run once, first. Two workers running the same stage
    # at once can fail in DVC's run cache (one lists the stage's entries while the other renames a temporary
    # file among them: "No such file or directory: '.dvc/cache/runs/....tmp'"), and would do the work twice.
    dvc("repro", "normalize", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "data", cwd=project)
    # The README's sweep syntax: one queued experiment per value; each pinned to GPU 0 (on this CPU: a note).
    dvc("exp", "run", "--queue", "-S", "train.epochs=1,2", "-S", "resources.devices=[0]", cwd=project)
    dvc("queue", "start", "-j", "2", cwd=project)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    dvc("queue", "stop", "--kill", cwd=project, check=False)
    assert status.count("Success") == 2, status
    names = [line.split()[1] for line in status.splitlines() if line.rstrip().endswith("Success")]
    assert len(names) == 2, status
    for name in names:  # neither worker ran the shared stages again
        log = dvc("queue", "logs", name, cwd=project).stdout
        assert "Stage 'normalize' didn't change, skipping" in log and "Running stage 'train'" in log, log
    shown = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    results = []
    for commit in shown:
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            params = data["params"]["params.yaml"]["data"]
            results.append((params["train"]["epochs"], data["metrics"]["metrics/train.json"]["data"]["epochs"]))
            assert params["resources"]["devices"] == [0]  # accepted by DVC and the stages, though no stage's dep
    assert sorted(results) == [(1, 1), (2, 2)]  # each experiment's metrics are its own
    # The workspace was not touched by either run.
    assert (
        not (project / "models").exists()
        and yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == 1
        and yaml.safe_load((project / "params.yaml").read_text())["resources"]["devices"] == []
    )


@pytest.mark.slow
def test_diverging_training_stops_with_one_line_and_writes_no_result(train_workdir: Path):
    params = yaml.safe_load((train_workdir / "params.yaml").read_text())
    params["train"].update({"optimizer": "sgd", "lr_boundaries": [], "lr_values": [1.0e6], "weight_decay": 0.0})
    (train_workdir / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(_train_cmd("nan"), cwd=train_workdir, env=_env(), capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: training diverged: loss is nan in epoch 1; "
        "lower train.lr_values or check train.optimizer and train.weight_decay"
    )
    assert not (train_workdir / "nan/train.json").exists() and not (train_workdir / "nan/models").exists()
