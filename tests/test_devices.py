"""resources.devices pins train and evaluate to chosen GPUs before the framework starts (one experiment per GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from cifar10.devices import FRAMEWORKS, devices_note, pin_devices, pin_stage_devices, request_determinism
from tests.conftest import ROOT, stage_env

PINNED = """
import json, os, sys
from cifar10.devices import pin_devices
pin_devices(tuple(json.loads(sys.argv[1])))
from cifar10.framework import accelerator, keras  # the framework starts after the pinning, as in the stages
names = ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE")
seen = {name: os.environ.get(name) for name in names}
try:
    pin_devices((0,))
except RuntimeError as exc:
    seen["late"] = str(exc)
print(json.dumps({**seen, "device": accelerator(), "backend": keras.backend.backend()}))
"""


@pytest.mark.integration
@pytest.mark.parametrize(("devices", "visible"), [([1, 3], "1,3"), ([0], "0"), ([], None)], ids=["two", "one", "all"])
def test_the_pinned_devices_reach_the_framework_with_memory_growth(devices, visible):
    names = ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE")
    env = {k: v for k, v in stage_env(import_root=True).items() if k not in names}
    # JAX without TensorFlow, as on the GPU machines (and a quicker start than TensorFlow's).
    env["KERAS_BACKEND"] = "jax"
    env["PYTHONPATH"] = f"{ROOT / 'tests' / 'without_tensorflow'}{os.pathsep}{env['PYTHONPATH']}"
    out = subprocess.run(
        [sys.executable, "-c", PINNED, json.dumps(devices)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["CUDA_VISIBLE_DEVICES"] == visible
    if devices:  # (Keras itself turns TensorFlow's growth on under JAX, so () proves nothing about that one)
        assert seen["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert seen["XLA_PYTHON_CLIENT_PREALLOCATE"] == ("false" if devices else None)
    assert seen["late"] == "pin_devices must run before keras is imported"
    assert seen["backend"] == "jax"  # too late is an error, not a no-op
    assert seen["device"] == "CPU"


def test_pinning_after_the_framework_started_is_refused_and_changes_nothing():
    import cifar10.framework  # noqa: F401  (Keras and its backend start here, in this test process)

    environ: dict[str, str] = {}
    with pytest.raises(RuntimeError, match="must run before"):  # this test process imported Keras already
        pin_devices((2,), environ)
    assert environ == {}


def test_devices_on_a_machine_without_a_gpu_get_a_note():
    assert devices_note((0,), "CPU") == "resources.devices [0] ignored: no GPU visible, running on CPU"
    assert devices_note((0, 1), "GPU") is None and devices_note((), "CPU") is None


def test_determinism_is_asked_of_xla_once_beside_the_flags_already_there():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    request_determinism(environ)
    request_determinism(environ)
    assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true"
    empty: dict[str, str] = {}
    request_determinism(empty)
    assert empty == {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}


@pytest.fixture
def before_the_framework(monkeypatch):
    """This process as a stage sees it before its framework starts: no Keras, TensorFlow or JAX imported (they
    come back after the test), and an os.environ of its own; returns that environment."""
    for name in FRAMEWORKS:
        monkeypatch.delitem(sys.modules, name, raising=False)
    environ = {"PATH": "/bin"}
    monkeypatch.setattr(os, "environ", environ)
    return environ


def ours(environ: dict[str, str]) -> dict[str, str]:
    """`environ` less the variable pytest itself sets in os.environ during a test."""
    return {name: value for name, value in environ.items() if name != "PYTEST_CURRENT_TEST"}


def test_pinning_sets_exactly_the_devices_and_memory_growth(before_the_framework):
    pinned = {
        "CUDA_VISIBLE_DEVICES": "1,3",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    given = {"HOME": "/root"}
    pin_devices((1, 3), given)  # the environment passed in, not the process's
    assert given == {"HOME": "/root", **pinned} and ours(before_the_framework) == {"PATH": "/bin"}
    pin_devices((), given := {})  # no devices: every GPU stays visible, nothing is set
    assert given == {}
    pin_devices((1, 3))  # by default, the process's environment
    assert ours(before_the_framework) == {"PATH": "/bin", **pinned}


def test_the_refusal_names_the_framework_that_started(before_the_framework, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", object())
    with pytest.raises(RuntimeError, match=r"^pin_devices must run before jax is imported$"):
        pin_devices((0,))
    assert ours(before_the_framework) == {"PATH": "/bin"}


def test_a_stage_pins_the_devices_of_its_params_file(before_the_framework, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["resources"]["devices"] = [2]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    resources = pin_stage_devices(tmp_path / "params.yaml")
    assert resources.devices == (2,)
    assert before_the_framework["CUDA_VISIBLE_DEVICES"] == "2"


def test_determinism_goes_to_the_process_environment_by_default(before_the_framework):
    request_determinism()
    assert ours(before_the_framework) == {"PATH": "/bin", "XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}


# --- train.mixed_precision: auto ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "has"),
    [
        ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),  # Cooper Lake, Zen 4
        ("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile", True),  # Sapphire Rapids
        ("flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni", False),  # AVX-512 without BF16: emulated, slow
        ("flags\t\t: fpu avx2\nbugs\t\t: avx512_bf16", False),  # only the flags line counts
        ("", False),
    ],
)
def test_bfloat16_is_found_in_the_cpu_flags_only(flags, has):
    from cifar10.devices import cpu_has_bfloat16

    assert cpu_has_bfloat16("processor\t: 0\n" + flags + "\n") is has


def test_auto_precision_follows_the_hardware_and_explicit_values_stay(monkeypatch):
    import cifar10.framework as framework
    import cifar10.training as training
    from tests.conftest import train_params

    auto = train_params(mixed_precision="auto")
    monkeypatch.setattr(training, "has_bfloat16_hardware", lambda: True)
    assert training.resolve_precision(auto).mixed_precision == "bfloat16"
    assert training.resolve_precision(train_params(mixed_precision="none")).mixed_precision == "none"
    monkeypatch.setattr(training, "has_bfloat16_hardware", lambda: False)
    assert training.resolve_precision(auto).mixed_precision == "none"
    assert training.resolve_precision(train_params(mixed_precision="float16")).mixed_precision == "float16"
    assert training.resolve_precision(auto) == train_params(mixed_precision="none")  # nothing else changes
    # GPUs: Ampere (8.0) and later run bfloat16 natively, Turing (7.5) emulates it.
    monkeypatch.setattr(framework, "accelerator", lambda: "GPU")
    for capability, has in (((9, 0), True), ((8, 0), True), ((7, 5), False), (None, False)):
        monkeypatch.setattr(framework, "gpu_compute_capability", lambda capability=capability: capability)
        assert framework.has_bfloat16_hardware() is has, capability


def test_on_a_cpu_auto_reads_the_cpu_flags(tmp_path, monkeypatch):
    import cifar10.framework as framework
    from cifar10.devices import cpu_has_bfloat16

    monkeypatch.setattr(framework, "accelerator", lambda: "CPU")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert framework.has_bfloat16_hardware(str(cpuinfo)) is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert framework.has_bfloat16_hardware(str(cpuinfo)) is False
    assert framework.has_bfloat16_hardware(str(tmp_path / "missing")) is False  # not Linux: float32
    with open("/proc/cpuinfo", encoding="utf-8") as real:  # and by default, this machine's own flags
        assert framework.has_bfloat16_hardware() is cpu_has_bfloat16(real.read())


def test_the_cpuinfo_probe_reads_one_mib_and_tolerates_bytes_that_are_not_utf8(tmp_path):
    from cifar10.devices import cpu_bfloat16_unit

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_bytes(b"model name\t: \xff\xfe odd vendor bytes\nflags\t\t: fpu avx512_bf16\n")
    assert cpu_bfloat16_unit(str(cpuinfo)) is True
    # The flags of a core past the first MiB are not read (1 MiB holds every core's lines on large machines).
    padding = b"processor\t: 0\nflags\t\t: fpu avx2\n" * (2**20 // 30 + 1)
    cpuinfo.write_bytes(padding + b"flags\t\t: fpu avx512_bf16\n")
    assert cpu_bfloat16_unit(str(cpuinfo)) is False
    last = b"\nflags\t\t: fpu avx512_bf16"
    cpuinfo.write_bytes(padding[: 2**20 - len(last)] + last)  # the flag ends at the MiB's last byte
    assert cpuinfo.stat().st_size == 2**20 and cpu_bfloat16_unit(str(cpuinfo)) is True
