"""Side by side: the tutorial's own script (ported to Keras 3) against this project's train stage, same data.

    python benchmarks/compare_tutorial.py [--images 12800] [--epochs 2] [--rounds 3]
        [--arms tutorial stage:none stage:bfloat16]   (bfloat16 by default only where the hardware has it)
        [--arms tutorial recipe:fast-small]           (a recipe of recipes/: its own network and batch size)

Each arm runs as its own process on the same synthetic uint8 images (speed does not depend on their
content), the tutorial's network, augmentation and batch 64 (a recipe arm: the recipe's). The arms are alternated
round by round (the order rotates), because these machines are shared and noisy: compare ratios within a round, not
absolute figures across runs. Images per second count training steps only, from the second epoch on
(the first also traces the graph), as both the tutorial script and metrics/train.json report them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cifar10.dataset import CLASS_NAMES  # noqa: E402
from cifar10.devices import cpu_bfloat16_unit  # noqa: E402
from cifar10.normalized import write_normalized  # noqa: E402
from cifar10.preprocessing import compute_stats  # noqa: E402


def machine() -> str:
    """The CPU model, its core count and bf16 support, and any NVIDIA GPU."""
    cpu, flags = platform.processor() or "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown CPU", platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    bf16 = "AVX512_BF16" if "avx512_bf16" in flags else "no AVX512_BF16"
    amx = ", AMX" if "amx_bf16" in flags else ""
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
        gpu = query.stdout.strip().replace("\n", ", ") or gpu
    return f"{cpu}, {os.cpu_count()} cores ({bf16}{amx}); {gpu}"


def bf16_hardware() -> bool:
    """Whether this machine computes bfloat16 natively: a CPU with AVX512_BF16 or AMX, or an NVIDIA GPU."""
    return cpu_bfloat16_unit() or shutil.which("nvidia-smi") is not None


def prepare(folder: Path, images: int) -> tuple[Path, Path]:
    """Write the raw arrays the tutorial reads and the normalized folder the train stage reads."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(images) % 10).astype(np.uint8)
    raw = folder / "raw"
    raw.mkdir()
    np.save(raw / "x_train.npy", x)
    np.save(raw / "y_train.npy", y)
    stats = compute_stats(x, "global", 1e-7)
    scale = np.float32(1 / (stats.std[0] + stats.eps))
    arrays = {
        "x_train": (x.astype(np.float32) - np.float32(stats.mean[0])) * scale,
        "y_train": y,
        "x_val": np.zeros((0, 32, 32, 3), np.float32),  # the timing leaves validation out anyway
        "y_val": np.zeros(0, np.uint8),
    }
    write_normalized(folder / "normalized", arrays, stats, "global", CLASS_NAMES)
    return raw, folder / "normalized"


def run_tutorial(raw: Path, epochs: int, work: Path) -> float:
    result = work / "tutorial.json"
    cmd = [sys.executable, str(ROOT / "benchmarks/tutorial_keras3.py"), str(raw), "--epochs", str(epochs)]
    subprocess.run([*cmd, "--result", str(result)], check=True, capture_output=True)
    return json.loads(result.read_text())["images_per_second"]


def recipe_overrides(name: str) -> list[str]:
    """The `-S` overrides of recipes/NAME.overrides (what `make NAME` passes to `dvc exp run`)."""
    lines = (ROOT / "recipes" / f"{name}.overrides").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def run_stage(normalized: Path, epochs: int, precision: str, work: Path, recipe: str = "", **train: object) -> float:
    """Run the train stage on `normalized` with the committed params, or a recipe of recipes/ applied to them by
    DVC's `-S` code, but these; return its images/s. A recipe's one-cycle peak moves to epoch 1 of `epochs`."""
    from dvc.utils.hydra import apply_overrides

    params_file = work / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    if recipe:
        apply_overrides(params_file, [*recipe_overrides(recipe), "train.lr_boundaries=[1]"])
    params = yaml.safe_load(params_file.read_text())
    params["train"].update({"epochs": epochs, "mixed_precision": precision, **train})
    params_file.write_text(yaml.safe_dump(params))
    out = work / f"stage-{recipe}-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    paths = [str(normalized), str(out / "models"), str(out / "live"), str(out / "train.json"), str(out / "ckpt")]
    cmd = [sys.executable, "-m", "stages.train", *paths, "--params", str(params_file)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return json.loads((out / "models" / "meta.json").read_text())["training"]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12_800, help="training images per epoch (200 steps of 64)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the first is not timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--arms",
        nargs="+",
        help="tutorial, stage:PRECISION or recipe:NAME (recipes/NAME.overrides); "
        "default: tutorial stage:none, plus stage:bfloat16 where it is fast",
    )
    args = parser.parse_args()
    if not args.arms:
        # Without AVX512_BF16 or AMX (or a GPU) bfloat16 is emulated on the CPU, many times slower: not worth an arm.
        args.arms = ["tutorial", "stage:none"] + (["stage:bfloat16"] * bf16_hardware())
    print(f"machine: {machine()}")
    print(f"{args.images} images, batch 64, {args.epochs} epochs per run, {args.rounds} rounds, arms alternated")
    rates: dict[str, list[float]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw, normalized = prepare(work, args.images)
        for round_index in range(args.rounds):
            order = args.arms[round_index % len(args.arms) :] + args.arms[: round_index % len(args.arms)]
            for arm in order:
                kind, _, name = arm.partition(":")
                if kind == "tutorial":
                    rate = run_tutorial(raw, args.epochs, work)
                elif kind == "recipe":  # recipe:NAME, float32 (the fast recipe's own network and batch size)
                    rate = run_stage(normalized, args.epochs, "none", work, recipe=name)
                else:
                    rate = run_stage(normalized, args.epochs, name, work)
                rates[arm].append(rate)
                print(f"round {round_index + 1}  {arm:16s} {rate:8.1f} images/s", flush=True)
    print("\narm               median images/s   ratio to the tutorial (median of per-round ratios)")
    for arm, values in rates.items():
        ratio = ""
        if "tutorial" in rates and arm != "tutorial":
            ratio = f"{statistics.median(v / t for v, t in zip(values, rates['tutorial'])):.2f}x"
        print(f"{arm:16s} {statistics.median(values):12.1f}      {ratio}")


if __name__ == "__main__":
    main()
