"""Facts of the CIFAR-10 data set that every part of the pipeline shares: class names and image shape."""

from __future__ import annotations

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)  # height, width, RGB
