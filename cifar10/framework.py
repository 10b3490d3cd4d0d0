"""Keras and TensorFlow, imported in one place and quietly.

TensorFlow writes start-up lines straight to file descriptor 2 from C++ before Python logging exists
("All log messages before absl::InitializeLog() ...", "Could not find cuda drivers", and on a machine
without a GPU `E0000 ... failed call to cuInit`), which TF_CPP_MIN_LOG_LEVEL does not silence. Every
module that needs Keras or TensorFlow imports them from here, so a stage that succeeds prints no
error-looking line. Anything else written during the import (a real error) still reaches stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from cifar10.devices import cpu_bfloat16_unit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines off; ERROR lines stay

# Substrings of the start-up lines that say nothing wrong: no GPU driver on a CPU machine, CPU features.
START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "oneDNN custom operations are on",
)


@contextmanager
def filtered_stderr(noise: tuple[str, ...] = START_UP_NOISE) -> Iterator[None]:
    """Capture file descriptor 2 during the block, then pass on every line that contains none of `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(pattern in line for pattern in noise):
                    sys.stderr.write(line)
            sys.stderr.flush()


with filtered_stderr():
    import keras

    try:
        import tensorflow as tf
    except ModuleNotFoundError:  # Keras on another backend (JAX on a GPU machine) without TensorFlow installed
        tf = None  # the network and the saved model still work; the tf.data input pipeline does not
    else:
        tf.config.list_physical_devices()  # platform start-up (the CUDA probe) happens here, inside the filter


def accelerator() -> str:
    """Return "GPU" if the Keras backend computes on a GPU, else "CPU"."""
    if keras.backend.backend() == "jax":
        import jax

        return "GPU" if jax.default_backend() == "gpu" else "CPU"
    if tf is not None:
        return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    return "CPU"


def gpu_compute_capability() -> tuple[int, int] | None:
    """Return the first GPU's CUDA compute capability, or None without a GPU (or where the backend does not say)."""
    if accelerator() != "GPU":
        return None
    if keras.backend.backend() == "jax":
        import jax

        text = getattr(jax.local_devices()[0], "compute_capability", None)  # "9.0"
        return tuple(int(part) for part in text.split(".")[:2]) if text else None
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    capability = details.get("compute_capability")
    return tuple(capability) if capability else None


def has_bfloat16_hardware(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Return whether the device Keras computes on runs bfloat16 natively: an NVIDIA GPU of compute capability 8.0
    (Ampere) or later, or a CPU with AMX or AVX-512 BF16 (elsewhere bfloat16 is emulated, slower than float32)."""
    capability = gpu_compute_capability()
    if capability is not None:
        return capability >= (8, 0)
    if accelerator() == "GPU":
        return False  # a GPU that does not say: float32 is the safe choice
    return cpu_bfloat16_unit(cpuinfo_path)


__all__ = ["accelerator", "gpu_compute_capability", "has_bfloat16_hardware", "keras", "tf"]
