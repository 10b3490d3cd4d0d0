"""CIFAR-10 pipeline stages: download -> normalize -> train -> evaluate (see dvc.yaml)."""
