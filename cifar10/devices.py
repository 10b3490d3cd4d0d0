"""Pin a stage to chosen GPUs, before TensorFlow or JAX starts.

DVC's queue runs experiments side by side (`dvc queue start -j 2`) but gives each worker the same GPUs. With
`resources.devices: [1]` a stage sees only GPU 1 (CUDA_VISIBLE_DEVICES) and allocates GPU memory as it needs
it instead of reserving most of the card up front, so two experiments can share a machine, or even a card.
The frameworks read these variables once, when they start: this must run before cifar10.framework is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cifar10.params import ResourceParams, load_section, read_params_file

FRAMEWORKS = ("keras", "tensorflow", "jax")


def pin_devices(devices: tuple[int, ...], environ: dict[str, str] | None = None) -> None:
    """Make only `devices` visible to the framework about to start, with memory growth on; () leaves all GPUs."""
    started = [name for name in FRAMEWORKS if name in sys.modules]
    if started:  # a bug in the stage script: the variables would be read too late and silently ignored
        raise RuntimeError(f"pin_devices must run before {started[0]} is imported")
    if not devices:
        return
    env = os.environ if environ is None else environ
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # TensorFlow: grow GPU memory on demand
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX: no up-front reservation of 75% of each GPU


def pin_stage_devices(params_file: Path) -> ResourceParams:
    """Read the `resources` section of `params_file`, pin its devices (pin_devices) and return it."""
    resources = load_section(read_params_file(params_file), "resources")
    pin_devices(resources.devices)
    return resources


def request_determinism(environ: dict[str, str] | None = None) -> None:
    """Ask XLA for deterministic GPU kernels (train.deterministic under JAX); TensorFlow's switch is set later,
    in cifar10.training. Like the devices, XLA reads this once, when the backend starts."""
    env = os.environ if environ is None else environ
    flag = "--xla_gpu_deterministic_ops=true"
    if flag not in env.get("XLA_FLAGS", "").split():
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()


def devices_note(devices: tuple[int, ...], accelerator: str) -> str | None:
    """Return the line to print when `devices` were asked for but there is no GPU to pin, else None."""
    if devices and accelerator != "GPU":
        return f"resources.devices {list(devices)} ignored: no GPU visible, running on {accelerator}"
    return None


def cpu_has_bfloat16(cpuinfo: str) -> bool:
    """Return whether /proc/cpuinfo's text lists a bfloat16 matrix or vector unit (AMX or AVX-512 BF16)."""
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_bfloat16_unit(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Return whether this machine's CPU runs bfloat16 natively, by its cpuinfo flags (False where there is no
    such file: not Linux). No framework needed: benchmarks that only launch stages ask this too."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            return cpu_has_bfloat16(cpuinfo.read(2**20))  # 1 MiB: every core's flags on large machines
    except OSError:
        return False
