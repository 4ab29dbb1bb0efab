"""Natural inputs: photographs that packages ship, as a camera would hand them to the model.

A codec that compresses images is measured on photographs, never on noise (which no image codec can compress).
The photographs come from installed packages (matplotlib's sample data, scikit-image's bundled data), read as files
without importing those packages; each is centre-cropped to the model's aspect ratio, resized with antialiasing to
its input size and normalised with the ImageNet statistics the torchvision classifiers expect. Every process reads
the same files and runs the same operations, so every worker holds the same inputs.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)  # made once: a codec converts every inference's input
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

# (package, file inside it): photographs of everyday scenes, in the order inputs cycle through them.
PHOTOGRAPHS = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
)


class NaturalInputError(ValueError):
    """A natural input that cannot be made: the shape is no image, or no photograph is installed."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates a top-level package without running it
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


@functools.cache
def photograph_paths() -> tuple[Path, ...]:
    """The installed photographs, in :data:`PHOTOGRAPHS` order (a missing package's are left out)."""
    paths = []
    for package, name in PHOTOGRAPHS:
        root = _package_dir(package)
        if root is not None and (root / name).is_file():
            paths.append(root / name)
    if not paths:
        raise NaturalInputError("model.input=natural needs photographs from matplotlib or scikit-image; neither "
                                "ships one here (pip install -e . installs both)")
    return tuple(paths)


def check_image_shape(shape: tuple[int, ...]) -> None:
    """Natural inputs are RGB images, batch first."""
    if len(shape) != 4 or shape[1] != 3:
        raise NaturalInputError(f"model.input=natural needs an RGB image input [N, 3, H, W]; model.input_shape is "
                                f"{list(shape)}")


@functools.lru_cache(maxsize=64)
def photograph(index: int, height: int, width: int) -> torch.Tensor:
    """Photograph ``index`` (cycling) as uint8 [3, height, width]: centre-cropped to that aspect, then resized."""
    paths = photograph_paths()
    data = torch.frombuffer(bytearray(paths[index % len(paths)].read_bytes()), dtype=torch.uint8)
    image = decode_image(data, mode=ImageReadMode.RGB)
    _, h, w = image.shape
    crop_h, crop_w = min(h, round(w * height / width)), min(w, round(h * width / height))
    image = F.center_crop(image, [crop_h, crop_w])
    return F.resize(image, [height, width], antialias=True).contiguous()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> the float32 input the model takes."""
    return (images.float() / 255.0 - _MEAN) / _STD


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`normalise`, rounded: exact for an input that :func:`normalise` made."""
    return ((x * _STD + _MEAN) * 255.0).round().clamp(0, 255).to(torch.uint8)


def natural_batch(shape: tuple[int, ...], index: int) -> torch.Tensor:
    """The ``index``-th natural input of this shape: photographs ``index * N`` .. ``index * N + N - 1``."""
    check_image_shape(shape)
    n, _, height, width = shape
    return torch.stack([photograph(index * n + k, height, width) for k in range(n)])
