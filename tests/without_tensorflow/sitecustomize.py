"""Make `import tensorflow` fail, as on a machine without TensorFlow installed (the GPU machines with JAX).

Tests put this folder first on PYTHONPATH of a subprocess; Python imports `sitecustomize` at start-up.
"""

import importlib.abc
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
