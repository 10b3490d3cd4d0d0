"""Shared fixtures: small synthetic archives in the exact CIFAR-10 and CIFAR-100 layouts, a local HTTP server,
and a throwaway git + DVC copy of the project for end-to-end runs."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar10.params import DownloadParams, NormalizeParams, TrainParams, load_section_from

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20  # images in each of the 5 training batches of the synthetic archive
TEST_IMAGES = 30


def _coloured_rows(rng: np.random.Generator, colours: np.ndarray, labels: list[int]) -> np.ndarray:
    """uint8 rows of R, G, B planes (N, 3072): each image its class's colour plus noise of +-30."""
    planes = np.stack([np.full((3, 32, 32), colours[c][:, None, None]) for c in labels]).astype(np.int16)
    planes += rng.integers(-30, 31, size=planes.shape)
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def synthetic_batches(seed: int = 0, per_batch: int = PER_BATCH, test_images: int = TEST_IMAGES) -> dict:
    """Return {member name: dict} as in cifar-10-python.tar.gz: uint8 rows of R, G, B planes and int labels.

    Each class gets its own mean colour, so a tiny CNN can learn something in one epoch.
    """
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(10, 3))

    def batch(n: int, label: str) -> dict:
        labels = [int(i % 10) for i in rng.permutation(n)]
        data = _coloured_rows(rng, colours, labels)
        names = [f"img_{label}_{i}.png".encode() for i in range(n)]
        return {b"batch_label": label.encode(), b"labels": labels, b"data": data, b"filenames": names}

    members = {f"data_batch_{i}": batch(per_batch, f"training batch {i} of 5") for i in range(1, 6)}
    members["test_batch"] = batch(test_images, "testing batch 1 of 1")
    members["batches.meta"] = {
        b"label_names": [n.encode() for n in CLASS_NAMES],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    }
    return members


# CIFAR-100's layout: 100 fine classes in 20 coarse ones (here fine class c is in coarse class c // 5).
FINE_NAMES = [f"fine_{i:02d}" for i in range(100)]
COARSE_NAMES = [f"coarse_{i:02d}" for i in range(20)]
CIFAR100_TRAIN = 200  # images in cifar-100-python/train: 2 of each fine class
CIFAR100_TEST = 100  # images in cifar-100-python/test: 1 of each fine class


def synthetic_cifar100(seed: int = 0, train: int = CIFAR100_TRAIN, test: int = CIFAR100_TEST) -> dict:
    """Return {member name: dict} as in cifar-100-python.tar.gz: train and test, each with fine_labels (0..99),
    coarse_labels (0..19), data (uint8 rows of R, G, B planes), filenames and batch_label; and meta with
    fine_label_names and coarse_label_names (bytes, as Python 2 pickled them)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(100, 3))

    def batch(n: int, label: str) -> dict:
        fine = [int(i % 100) for i in rng.permutation(n)]
        return {
            b"filenames": [f"img_{label}_{i}.png".encode() for i in range(n)],
            b"batch_label": label.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [c // 5 for c in fine],
            b"data": _coloured_rows(rng, colours, fine),
        }

    return {
        "train": batch(train, "training batch 1 of 1"),
        "test": batch(test, "testing batch 1 of 1"),
        "meta": {
            b"fine_label_names": [n.encode() for n in FINE_NAMES],
            b"coarse_label_names": [n.encode() for n in COARSE_NAMES],
        },
    }


def write_archive(
    path: Path, members: dict, extra: dict[str, bytes] | None = None, folder: str = "cifar-10-batches-py"
) -> str:
    """Write a gzip tar with each member pickled under `folder`/; return its md5."""
    with tarfile.open(path, "w:gz") as tar:
        entries = {f"{folder}/{name}": pickle.dumps(obj, protocol=2) for name, obj in members.items()}
        entries.update(extra or {})
        for name, payload in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A valid synthetic archive and its md5."""
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    md5 = write_archive(path, synthetic_batches())
    return path, md5


@pytest.fixture(scope="session")
def archive100(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A valid synthetic CIFAR-100 archive (with the official one's stray `file.txt~` too) and its md5."""
    path = tmp_path_factory.mktemp("archive100") / "cifar-100-python.tar.gz"
    md5 = write_archive(path, synthetic_cifar100(), {"cifar-100-python/file.txt~": b""}, folder="cifar-100-python")
    return path, md5


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


def start_server(root: Path) -> tuple[http.server.ThreadingHTTPServer, str, Path]:
    """Serve a fresh folder `root` on 127.0.0.1 from a thread; return (server, base URL, folder)."""
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", root


def stop_server(server: http.server.ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture()
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve a fresh folder on 127.0.0.1; yield (base URL, folder)."""
    server, base, root = start_server(tmp_path / "www")
    yield base, root
    stop_server(server)


def train_params(**overrides) -> TrainParams:
    """The committed train params with some values replaced, checked as a stage would; float32 unless an override
    says otherwise (the committed "auto" would make the tests' arithmetic depend on the host's CPU)."""
    return load_section_from(ROOT / "params.yaml", "train", **{"mixed_precision": "none", **overrides})


def layers_of(model, kind: str) -> list:
    """The layers of a Keras `model` whose class is named `kind` ("Conv2D", "Dropout", ...), in order."""
    return [layer for layer in model.layers if layer.__class__.__name__ == kind]


def normalize_params(**overrides) -> NormalizeParams:
    return load_section_from(ROOT / "params.yaml", "normalize", **overrides)


def download_params(**overrides) -> DownloadParams:
    return load_section_from(ROOT / "params.yaml", "download", **overrides)


TINY_TRAIN = {
    "epochs": 1,
    "batch_size": 16,
    "widths": [4, 8, 8],
    "lr_boundaries": [1],
    "lr_values": [0.003, 0.001],
    "mixed_precision": "none",  # float32 on every host; tests/test_pipeline.py's walk runs "auto"
}


def stage_env(import_root: bool = False) -> dict[str, str]:
    """The environment for stage subprocesses: this interpreter's `python` first on PATH, no analytics.

    `import_root`: the stages and the library import from this checkout wherever the command runs.

    TensorFlow's logging is left as a user has it, so the tests see what a user sees.
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("PYTHONPATH", None)
    if import_root:
        env["PYTHONPATH"] = str(ROOT)
    mutant = env.get("MUTANT_UNDER_TEST", "")
    if mutant:
        # Under `make mutation` a subprocess imports the mutated copy (ROOT is mutants/), not the editable
        # install, and runs the mutant under test; while mutmut maps tests to functions it reports the
        # functions it entered (tests/mutmut_shim). Its other modes ("fail") stay in the test process.
        env["PYTHONPATH"] = str(ROOT)
        if mutant == "stats":
            env["PYTHONPATH"] = f"{ROOT / 'tests' / 'mutmut_shim'}{os.pathsep}{ROOT}"
            env["CIFAR10_MUTMUT_HITS"] = str(_subprocess_hits_dir())
        elif "__mutmut_" not in mutant:
            del env["MUTANT_UNDER_TEST"]
    return env


def pytest_collection_modifyitems(config, items):
    """Under `make mutation`, run the quickest tests first (by the durations mutmut measured), so a mutant is
    killed by the quickest test that catches it; a test's order never matters otherwise."""
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    try:
        durations = json.loads((ROOT / "mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


@functools.cache
def _subprocess_hits_dir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="cifar10-mutmut-hits-"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """While mutmut maps tests to functions, count what this test's subprocesses entered as reached by it."""
    try:
        return (yield)
    finally:
        if os.environ.get("MUTANT_UNDER_TEST") == "stats":
            from mutmut.state import state

            for hits in _subprocess_hits_dir().glob("*.txt"):
                state()._stats.update(name for name in hits.read_text().split() if name)
                hits.unlink()


def run(
    cmd: list[str], cwd: Path, check: bool = True, import_root: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in `cwd` with the stage environment (see stage_env) plus `env`; on failure show its output."""
    # A deadline: under `make mutation` a mutant runs inside these subprocesses, and one may hang.
    full_env = {**stage_env(import_root), **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check, env=env)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run(["git", *args], cwd)


def set_params(repo: Path, updates: dict[str, dict]) -> None:
    """Merge `updates` ({section: {key: value}}) into the repo's params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A committed git + DVC repo with a copy of the project (stages, library, dvc.yaml, params.yaml, plot
    templates), git identity."""
    return make_project(tmp_path / "project")


def make_project(repo: Path) -> Path:
    """Make `repo` the project fixture's committed git + DVC copy of the project."""
    repo.mkdir()
    for name in ("stages", "cifar10"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    git("init", "-q", "-b", "main", cwd=repo)
    git("config", "user.name", "pipeline test", cwd=repo)
    git("config", "user.email", "test@example.com", cwd=repo)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # the custom plot templates
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "project", cwd=repo)
    return repo


def run_limited(
    args: list[str], cwd: Path, memory_mb: int = 1024, timeout_s: float = 120, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    """Run a command under an address-space limit and a deadline, for tests that feed hostile input.

    A regression then fails the test (MemoryError, a non-zero exit, a timeout) instead of filling the
    machine. TensorFlow reserves far more address space than it uses, so keep such commands free of it.
    """
    import resource

    limit = memory_mb * 2**20

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        args, cwd=cwd, env=stage_env(), capture_output=True, timeout=timeout_s, preexec_fn=cap, input=stdin
    )
