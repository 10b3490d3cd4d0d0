"""The pictures (grids, confusion matrix) and cifar10-predict on files of any size and on broken ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar10.dataset import CLASS_NAMES, IMAGE_SHAPE
from cifar10.figures import confident_mistakes, confusion_png, first_predictions_grid, mistakes_grid
from cifar10.framework import keras
from cifar10.model import build_inference_model, build_seed_cnn
from cifar10.normalized import Stats, denormalize_images
from cifar10.predict import load_image, top_k
from cifar10.predict import main as predict_main
from tests.conftest import ROOT, stage_env, synthetic_batches, train_params, write_archive


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_grids_and_confusion_png(tmp_path: Path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 10
    probabilities = rng.dirichlet(np.ones(10), size=40)
    first_predictions_grid(images, labels, probabilities.argmax(1), CLASS_NAMES, tmp_path / "first.png")
    mistakes_grid(
        images, probabilities, probabilities.argmax(1), labels, CLASS_NAMES, tmp_path / "mistakes.png", per_class=4
    )
    counts = np.bincount(labels * 10 + probabilities.argmax(1), minlength=100).reshape(10, 10)
    confusion_png(counts, CLASS_NAMES, tmp_path / "confusion.png", 0.1)
    w_first, h_first = _png_size(tmp_path / "first.png")
    w_mistakes, h_mistakes = _png_size(tmp_path / "mistakes.png")
    assert w_first > 200 and h_first > 200
    assert h_mistakes > w_mistakes  # ten rows of at most four
    assert _png_size(tmp_path / "confusion.png")[0] > 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "first.png", "mistakes.png"]


def test_mistakes_grid_has_rows_only_for_classes_with_mistakes(tmp_path: Path):
    """No empty rows or columns: 2 classes with mistakes, at most 2 each, give a grid of 2 x 2 images."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 10
    predicted = labels.copy()
    predicted[[0, 10, 1]] = [5, 6, 7]  # class 0: two mistakes, class 1: one
    probabilities = np.eye(10)[predicted] * 0.9 + 0.01
    mistakes_grid(images, probabilities, predicted, labels, CLASS_NAMES, tmp_path / "two.png", per_class=8)
    mistakes_grid(images, probabilities, labels, labels, CLASS_NAMES, tmp_path / "none.png", per_class=8)
    predicted_all = (labels + 1) % 10  # every image wrong: 10 rows of 4
    mistakes_grid(images, np.eye(10)[predicted_all], predicted_all, labels, CLASS_NAMES, tmp_path / "all.png", 8)
    (w2, h2), (w10, h10), (w0, h0) = (_png_size(tmp_path / n) for n in ("two.png", "all.png", "none.png"))
    assert h2 < h10 / 3  # two rows against ten
    assert w2 < w10  # two columns against four
    assert h0 < h2 and w0 < w10  # one line of text


def test_right_and_wrong_are_told_by_a_mark_not_only_by_colour(tmp_path: Path, monkeypatch):
    import cifar10.figures as figures

    shown: dict = {}
    monkeypatch.setattr(
        figures, "labelled_grid", lambda images, titles, colours, *rest: shown.update(t=titles, c=colours)
    )
    first_predictions_grid(
        np.zeros((3, 32, 32, 3), np.uint8), np.array([0, 1, 2]), np.array([0, 3, 2]), CLASS_NAMES, tmp_path / "x.png"
    )
    assert shown["t"] == ["✓ airplane", "✗ automobile\n→ cat", "✓ bird"]
    assert shown["c"] == ["tab:blue", "tab:orange", "tab:blue"]  # distinguishable in common colour blindness


def test_confident_mistakes_are_wrong_and_sorted():
    labels = np.array([0, 0, 0, 1, 1])
    probabilities = np.array(
        [
            [0.1, 0.9],
            [0.3, 0.7],
            [0.8, 0.2],  # class 0: two mistakes, 0.9 then 0.7
            [0.6, 0.4],
            [0.2, 0.8],  # class 1: one mistake
        ]
    )
    rows = confident_mistakes(probabilities, probabilities.argmax(axis=1), labels, per_class=5)
    assert rows[0].tolist() == [0, 1] and rows[1].tolist() == [3]


def test_display_undoes_normalization():
    raw = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    stats = Stats((120.0,), (60.0,), 1e-7)
    normalized = (raw.astype(np.float32) - 120.0) / (60.0 + 1e-7)
    assert np.array_equal(denormalize_images(normalized, stats), raw)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    core = build_seed_cnn(train_params(widths=(4, 4, 4)), seed=0)
    model = build_inference_model(core, Stats((120.0,), (64.0,), 1e-7))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def _images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(2)
    png, jpeg = tmp_path / "big.png", tmp_path / "small photo.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 200, 4), dtype=np.uint8), "RGBA").save(png)
    Image.fromarray(rng.integers(0, 256, (17, 45, 3), dtype=np.uint8)).save(jpeg, quality=80)
    return [png, jpeg]


def test_load_image_resizes_any_size_and_mode(tmp_path: Path):
    for path in _images(tmp_path):
        image = load_image(path)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_top_k_is_ranked():
    probabilities = np.array([[0.05, 0.5, 0.1, 0.35] + [0.0] * 6])
    assert [c for c, _ in top_k(probabilities, 3)[0]] == ["automobile", "cat", "bird"]


def test_predict_classifies_files_and_reports_broken_ones(tmp_path: Path, saved_model: Path, capsys):
    png, jpeg = _images(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    status = predict_main([str(png), str(broken), str(jpeg), "--model", str(saved_model), "--json"])
    out, err = capsys.readouterr()
    assert status == 1  # one file failed
    assert err.strip() == f"error: {broken}: not a readable image (UnidentifiedImageError)"
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == [str(png), str(jpeg)]
    for record in records:
        assert len(record["top"]) == 3 and all(t["class"] in CLASS_NAMES for t in record["top"])
        probs = [t["probability"] for t in record["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    # The same probabilities as the model itself gives on the resized image.
    model = keras.models.load_model(saved_model, compile=False)
    direct = model.predict(load_image(png)[None], verbose=0)[0]
    assert records[0]["top"][0]["probability"] == pytest.approx(float(direct.max()), abs=1e-5)


def test_predict_on_test_samples_as_text(archive, saved_model: Path, capsys):
    assert predict_main(["--test-samples", "5", "--archive", str(archive[0]), "--model", str(saved_model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[0].startswith("test:0: ") and "(true: " in lines[0]


def _repository(tmp_path: Path, saved_model: Path) -> Path:
    """A folder laid out like a clone after `dvc pull models`: dvc.yaml and models/model.keras, no archive."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.keras").write_bytes(saved_model.read_bytes())
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "plots/deep").mkdir(parents=True)
    return tmp_path


def test_default_paths_are_the_repositorys_from_any_folder_inside_it(tmp_path, saved_model, monkeypatch, capsys):
    repo = _repository(tmp_path, saved_model)
    png, _ = _images(tmp_path)
    monkeypatch.chdir(repo / "plots/deep")
    assert predict_main([str(png)]) == 0
    assert capsys.readouterr().out.startswith(f"{png}: ")
    # --test-samples needs the archive too, and says how to get it rather than "not found".
    assert predict_main(["--test-samples", "3"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {repo / 'data/raw/archive.tar.gz'} not found; --test-samples reads the archive's test "
        "batch: fetch it with `dvc pull download` (or `dvc repro download`), or pass --archive PATH"
    )


def test_outside_a_repository_it_says_what_to_pass(tmp_path: Path, monkeypatch, capsys):
    png, _ = _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert predict_main([str(png)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: no models/model.keras: {tmp_path} is not inside a DVC repository (no dvc.yaml here or above); "
        "pass --model PATH, or --repo URL [--rev REV]"
    )
    with pytest.raises(SystemExit):
        predict_main([str(png), "--model", "m.keras", "--rev", "v1"])
    assert "give --model or --rev/--repo, not both" in capsys.readouterr().err


def test_a_revision_dvc_cannot_find_is_one_line(tmp_path: Path, saved_model: Path, monkeypatch, capsys):
    from tests.conftest import dvc, git

    repo = _repository(tmp_path, saved_model)
    git("init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    git("add", "dvc.yaml", ".dvc", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "empty", cwd=repo)
    png, _ = _images(tmp_path)
    monkeypatch.chdir(repo / "plots/deep")
    assert predict_main([str(png), "--rev", "no-such-rev"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot fetch models/model.keras from this repository at no-such-rev (")
    assert "unknown Git revision 'no-such-rev'" in err and "\n" not in err
    # A repository URL with credentials: they never reach the message (port 9 refuses at once).
    assert predict_main([str(png), "--repo", "https://user:s3cret@127.0.0.1:9/x.git", "--rev", "v1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot fetch models/model.keras from https://***@127.0.0.1:9/x.git at v1 (")
    assert "s3cret" not in err and "\n" not in err


@pytest.mark.integration
def test_installed_command_runs(tmp_path: Path, saved_model: Path):
    """The console script from pyproject.toml, as a user runs it after `pip install`."""
    script = Path(sys.executable).parent / "cifar10-predict"
    if not script.exists():
        pytest.skip("package not installed in this environment (make test installs it)")
    png, jpeg = _images(tmp_path)
    broken = tmp_path / "notes.txt"
    broken.write_text("not an image")
    result = subprocess.run(
        [str(script), str(png), str(broken), str(jpeg), "--model", str(saved_model)],
        capture_output=True,
        text=True,
        env=stage_env(),
        cwd=ROOT,
    )
    assert result.returncode == 1  # one file failed; the other two were classified
    # Exactly the one error line: none of TensorFlow's start-up logging.
    assert result.stderr.strip() == f"error: {broken}: not a readable image (UnidentifiedImageError)"
    lines = result.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(png), str(jpeg)]
    assert all(len(line.split(": ", 1)[1].split("  ")) == 3 for line in lines)  # top-3 classes each


def test_predict_loads_no_stage_no_plotting_and_answers_help_before_keras():
    code = (
        "import sys, contextlib, io\n"
        "from cifar10.predict import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('stages', 'matplotlib', 'keras', 'tensorflow')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=stage_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


RED_CLASS, BLUE_CLASS = "truck", "ship"


def _channel_order_model(path: Path) -> Path:
    """Save a model whose answer is red minus blue: mean colour -> Dense(10) with hand-set weights -> softmax.

    Red images score RED_CLASS, blue ones BLUE_CLASS; fed BGR instead of RGB, it swaps the two.
    """
    inputs = keras.Input(IMAGE_SHAPE, dtype="uint8")
    mean_colour = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255, dtype="float32")(inputs))
    dense = keras.layers.Dense(len(CLASS_NAMES))
    model = keras.Model(inputs, keras.layers.Activation("softmax")(dense(mean_colour)))
    kernel = np.zeros((3, len(CLASS_NAMES)), np.float32)  # rows: R, G, B
    kernel[:, CLASS_NAMES.index(RED_CLASS)] = [10, 0, -10]
    kernel[:, CLASS_NAMES.index(BLUE_CLASS)] = [-10, 0, 10]
    dense.set_weights([kernel, np.zeros(len(CLASS_NAMES), np.float32)])
    model.save(path)
    return path


def test_images_reach_the_model_in_rgb_order(tmp_path: Path, capsys):
    """A pure red PNG and a pure blue JPEG, and red and blue test-batch images, each get their colour's class."""
    model = _channel_order_model(tmp_path / "rgb.keras")
    red, blue = tmp_path / "red.png", tmp_path / "blue.jpg"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(red)
    Image.new("RGB", (50, 50), (0, 0, 255)).save(blue, quality=95)
    members = synthetic_batches()
    planes = np.zeros((2, 3, 32 * 32), np.uint8)  # a batch row holds the R plane, then G, then B
    planes[0, 0], planes[1, 2] = 255, 255  # image 0 red, image 1 blue
    members["test_batch"].update(
        {
            b"data": planes.reshape(2, 3072),
            b"labels": [CLASS_NAMES.index(RED_CLASS), CLASS_NAMES.index(BLUE_CLASS)],
            b"filenames": [b"red.png", b"blue.png"],
        }
    )
    archive = tmp_path / "colours.tar.gz"
    write_archive(archive, members)
    argv = [str(red), str(blue), "--test-samples", "2", "--archive", str(archive), "--model", str(model), "--json"]
    assert predict_main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    best = {r["image"]: r["top"][0]["class"] for r in records}
    assert best == {str(red): RED_CLASS, str(blue): BLUE_CLASS, "test:0": RED_CLASS, "test:1": BLUE_CLASS}
    assert all(r["top"][0]["probability"] > 0.9 for r in records)
