"""Data-parallel training (resources.strategy) on CPU: two devices in one process and two processes on 127.0.0.1,
under TensorFlow and under JAX, each matching one device on the same global batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar10.dataset import CLASS_NAMES
from cifar10.normalized import Stats, write_normalized
from cifar10.params import as_dict
from tests.conftest import ROOT, TINY_TRAIN, stage_env, train_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WITHOUT_TENSORFLOW = ROOT / "tests" / "without_tensorflow"
QUICK_XLA = "--xla_backend_optimization_level=0"  # a tiny network compiles in seconds (see test_backends.py)
# No dropout: under tf.distribute each replica draws its own dropout masks, so with dropout the runs agree in
# distribution, not number for number. Everything else (augmentation included) is the same computation.
PARAMS = {**TINY_TRAIN, "epochs": 2, "batch_size": 16, "dropout": [0.0, 0.0, 0.0]}

# Trains on 70 training and 20 validation images (the last batch of each epoch: 6 images, 3 per replica) and prints
# what the run logged and what its model predicts. argv: strategy, train params as JSON.
TRAIN = """
import json, sys
strategies = sys.argv[1].split(",")  # run one after the other in this process: one TensorFlow start for all
if "mirrored" in strategies:  # two logical CPU devices, as on a 2-GPU machine; before TensorFlow starts
    import tensorflow as tf
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from cifar10.distribution import configure_distribution
from cifar10.normalized import Stats
from cifar10.params import TrainParams, parse_section
from cifar10.training import configure_runtime, train_model
params = parse_section(TrainParams, "train", json.loads(sys.argv[2]))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(90, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 90).astype(np.uint8)
arrays = {"x_train": x[:70], "y_train": y[:70], "x_val": x[70:], "y_val": y[70:]}
images = np.random.default_rng(1).integers(0, 3, (4, 32, 32, 3), np.uint8)  # pixels 0..2: the training data's scale
for strategy in strategies:
    distribution = configure_distribution(strategy)
    configure_runtime(params, 5)  # the same initial weights for every run
    result = train_model(arrays, Stats((0.0,), (1.0,), 1e-7), params, 5, distribution=distribution)
    probabilities = result.model.predict(images, verbose=0)
    print(json.dumps({"replicas": distribution.replicas, "workers": distribution.workers,
                      "worker": distribution.worker, "history": result.history,
                      "probabilities": probabilities.tolist()}))
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen) -> str:
    try:
        out, err = process.communicate(timeout=300)  # a worker whose peer died waits for it: never forever
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err[-4000:]}"
    return out


def _assert_same_training(run: dict, reference: dict) -> None:
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert np.allclose(run["history"][name], reference["history"][name], atol=1e-4), name
    # The replicas' sums meet in a different order than one device's; RMSprop divides each step by the root of
    # the squared gradients, so on weights with gradients near zero that rounding becomes visible: 8e-4 after
    # 10 steps here, with or without a second process; without synchronized batch norm the losses differ already.
    gap = np.abs(np.subtract(run["probabilities"], reference["probabilities"])).max()
    assert gap < 2e-3, gap


def test_tensorflow_mirrored_on_two_devices_and_multi_worker_on_two_processes_match_one_device(tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    params = json.dumps(as_dict(train_params(**PARAMS)))
    env = stage_env(import_root=True)
    cluster = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    workers = [
        _start(
            [str(script), "multi_worker", params],
            tmp_path,
            {**env, "TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}})},
        )
        for i in range(2)
    ]
    single = _start([str(script), "one,mirrored", params], tmp_path, env)
    one, mirrored = (json.loads(line) for line in _finish(single).splitlines() if line.startswith('{"replicas"'))
    multi = [json.loads(_finish(p).splitlines()[-1]) for p in workers]

    assert one["replicas"] == 1 and one["history"]["loss"][0] != one["history"]["loss"][1]  # two real epochs
    assert (mirrored["replicas"], mirrored["workers"]) == (2, 1)
    _assert_same_training(mirrored, one)
    assert [(m["replicas"], m["workers"], m["worker"]) for m in multi] == [(2, 2, 0), (2, 2, 1)]
    for run in multi:  # both workers hold the same model: the one a single device trains on the same batches
        _assert_same_training(run, one)


def _project(folder: Path, strategy: str) -> Path:
    """A folder with tiny normalized data and params.yaml for `python -m stages.train` under `strategy`."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 90).astype(np.uint8)
    arrays = {"x_train": x[:70], "y_train": y[:70], "x_val": x[70:], "y_val": y[70:]}
    write_normalized(folder / "data", arrays, Stats((0.0,), (1.0,), 1e-7), "global", CLASS_NAMES)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(PARAMS)
    params["resources"]["strategy"] = strategy
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


STAGE = ["-m", "stages.train", "data", "models", "dvclive", "train.json", "checkpoints"]


def _epochs(folder: Path) -> dict[str, list[float]]:
    """The per-epoch figures the stage logged with DVCLive."""
    curves = {}
    for name in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        rows = (folder / "dvclive/plots/metrics" / f"{name}.tsv").read_text().splitlines()[1:]
        curves[name] = [float(row.split("\t")[-1]) for row in rows]
    return curves


def test_jax_multi_process_train_stage_matches_one_process_and_workers_must_agree(tmp_path: Path):
    env = stage_env(import_root=True)
    env.update(KERAS_BACKEND="jax", XLA_FLAGS=QUICK_XLA)
    env["PYTHONPATH"] = f"{WITHOUT_TENSORFLOW}{os.pathsep}{env['PYTHONPATH']}"  # as on the GPU machines
    (port,) = _free_ports(1)
    cluster = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    folders = [_project(tmp_path / name, "multi_worker") for name in ("worker0", "worker1")]
    workers = [
        _start(STAGE, folder, {**env, **cluster, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)})
        for i, folder in enumerate(folders)
    ]
    single = _start(STAGE, _project(tmp_path / "one", "one"), env)
    outputs = [_finish(p) for p in workers]
    _finish(single)

    for i, out in enumerate(outputs):
        assert f"train: each batch split over 2 devices in 2 processes, this is worker {i}" in out, out
    reference = _epochs(tmp_path / "one")
    assert reference["train/loss"][0] != reference["train/loss"][1]
    for folder in folders:
        for name, values in _epochs(folder).items():
            assert np.allclose(values, reference[name], atol=1e-4), (folder.name, name)
        meta = json.loads((folder / "models/meta.json").read_text())["training"]
        assert meta["replicas"] == 2

    # Run again: each worker resumes its finished run from its checkpoint and trains nothing. With another seed
    # on worker 1 the two would train different runs: both stop in one line before training.
    (port,) = _free_ports(1)  # a new coordinator port for each launch: the last one may still be closing
    cluster["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = f"127.0.0.1:{port}"
    again = [
        _start(STAGE, folder, {**env, **cluster, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)})
        for i, folder in enumerate(folders)
    ]
    for out in map(_finish, again):
        assert "train: resuming after epoch 2 of 2" in out and "Epoch " not in out, out
    params = yaml.safe_load((folders[1] / "params.yaml").read_text())
    params["seed"] += 1
    (folders[1] / "params.yaml").write_text(yaml.safe_dump(params))
    (port,) = _free_ports(1)
    cluster["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = f"127.0.0.1:{port}"
    differing = [
        _start(STAGE, folder, {**env, **cluster, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)})
        for i, folder in enumerate(folders)
    ]
    for process in differing:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 1, out + err
        assert err.strip().splitlines()[-1] == (
            "error: the 2 workers of this multi_worker run disagree (different params, seed, data or code and "
            "checkpoints at epochs [0, 2]); run the same commit and params everywhere, and remove checkpoints/ "
            "on every worker to start over"
        ), err


def test_jax_multi_worker_without_its_cluster_is_refused_in_one_line_before_jax_starts(monkeypatch):
    pytest.importorskip("jax")
    from cifar10.distribution import _jax_distribution
    from cifar10.errors import StageError

    for name in ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(f"KERAS_DISTRIBUTION_{name}", raising=False)
    with pytest.raises(StageError) as info:
        _jax_distribution("multi_worker")  # the check comes before jax.distributed would wait for peers
    assert str(info.value) == (
        "resources.strategy multi_worker under JAX needs KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES "
        "and _PROCESS_ID in the environment; missing: KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID"
    )
