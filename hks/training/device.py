"""Where trials train and in what precision: the GPU or the CPU (said in one
line, and kept off the GPU in a process that only draws models), and the
Keras dtype policy that --precision chooses (auto: bfloat16 on a GPU of
compute capability 8.0 and up, float16 on older GPUs, float32 on a CPU).
Works under TensorFlow and JAX alike."""

import contextlib
import importlib.util
from pathlib import Path

from hks.core import console

with console.startup_noise_filtered():  # TensorFlow's C++ start-up lines, on every import
    import keras
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        _gpus = tf.config.list_physical_devices("GPU")  # CUDA's start-up lines come here


def resolve_precision(precision):
    """The Keras dtype policy for `precision`: "auto" is mixed_bfloat16 on a
    GPU that computes in bfloat16 (compute capability 8.0 and up: A100, H100),
    mixed_float16 on an older GPU, float32 on a CPU."""
    if precision != "auto":
        return precision
    capability = gpu_compute_capability()
    if capability is None:
        return "float32"
    return "mixed_bfloat16" if capability >= 8.0 else "mixed_float16"


def gpu_compute_capability():
    """The first GPU's compute capability as a number (9.0), or None."""
    try:
        if keras.backend.backend() == "jax":
            import jax
            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return float(gpus[0].compute_capability) if gpus else None
        if keras.backend.backend() == "tensorflow":
            if not _gpus:
                return None
            major, minor = tf.config.experimental.get_device_details(_gpus[0])["compute_capability"]
            return major + minor / 10
    except Exception:  # no GPU runtime, unknown device: plain float32 is always right
        return None
    return None


def device_line():
    """One line saying where trials train, worked out where they train (a
    trial process sends it with its "ready") and said once per process
    (console.say_once, from trial_process). Under JAX the devices are not
    opened just to say this (JAX takes most of a GPU's memory in the first
    process that opens it): a GPU needs JAX's CUDA plugin and an NVIDIA driver."""
    if keras.backend.backend() == "jax":
        plugin = any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13))
        if plugin and Path(console.NVIDIA_DRIVER).exists():
            return "Trials train on the GPU (JAX with CUDA)."
        return "No GPU found: trials train on the CPU."
    if keras.backend.backend() != "tensorflow":
        return f"Keras {keras.__version__} on {keras.backend.backend()}: each trial finds its devices."
    if not _gpus:
        return "No GPU found: trials train on the CPU."
    names = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name)
                      for g in _gpus)
    return f"Trials train on the GPU: {names}."


def keep_off_the_gpu():
    """Build models in this process on the CPU only (the search process draws
    models but trains none): TensorFlow and JAX take most of a GPU's memory
    in the first process that uses it, which would leave the trials' own
    processes none. Does nothing once this process has used its devices."""
    try:
        if keras.backend.backend() == "tensorflow":
            tf.config.set_visible_devices([], "GPU")
        elif keras.backend.backend() == "jax":
            import jax
            jax.config.update("jax_platforms", "cpu")
    except (RuntimeError, ValueError):  # devices already initialised: too late, leave them
        pass


@contextlib.contextmanager
def dtype_policy(name):
    """Layers built inside compute in `name` (e.g. mixed_bfloat16); the global
    policy is put back afterwards."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)
