"""Image classification data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, and
scikit-learn's 8x8 digits for CI-sized runs.

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, arXiv 1708.07747; 60,000 training and 10,000 test
images of 28x28 grey pixels, 10 classes) is read from the four standard idx files
(``train-images-idx3-ubyte.gz``...) that the Debian package installs under
``/usr/share/datasets/fashion-mnist``. Where the package is not installed,
``floatlab data --prepare fashion-mnist`` fetches it with ``apt-get download`` and unpacks it with
``dpkg-deb -x`` into ``$FLOATLAB_CACHE/datasets`` (no root needed). ``$FLOATLAB_FASHION_MNIST``
names another folder holding the four files (gzipped or not); when it is set, only that folder
is read (an empty or wrong folder is an error, never a silent fall-back to another copy).

The idx files are read by :func:`read_idx`, a small numpy reader of the format (LeCun's: a magic
number whose third byte is the element type and fourth the number of dimensions, the sizes as
big-endian int32, then the data), because torchvision's ``FashionMNIST`` class cannot be used
beside the CPU torch 2.13.0 floatlab pins: PyPI's torchvision 0.28.0 fails to import with it
("operator torchvision::nms does not exist", checked when this was written). The reader checks the
magic number, the element type, the sizes and the file length, and refuses anything else.

The batch of step ``s`` depends only on ``(seed, s)``: step ``s`` takes the ``s``-th slice of a
permutation of the training set drawn for its epoch, so a resumed run sees the same batches.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOC_DIR = Path("/usr/share/doc/dataset-fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
# pixel statistics of the Fashion-MNIST training set (after /255), used to normalize its inputs
MEAN, STD = 0.2860, 0.3530

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

HOW_TO_GET = (f"install Debian's {DEBIAN_PACKAGE} package (apt-get install {DEBIAN_PACKAGE}), or run "
              f"'floatlab data --prepare fashion-mnist' (apt-get download + dpkg-deb -x into the "
              f"floatlab cache, no root needed), or set FLOATLAB_FASHION_MNIST to a folder holding "
              f"{', '.join(FILES['train'] + FILES['test'])}")


class DataMissing(FileNotFoundError):
    """The data set's files are not on this machine; the message says how to get them."""


def read_idx(path) -> np.ndarray:
    """The array stored in an idx file (gzip-compressed when the name ends in ``.gz``).

    Raises:
        ValueError: not an idx file (bad magic number or element type), or a length that does not
            match the sizes in its header; the message names the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read it as an idx file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - head != count * dtype.itemsize:
        raise ValueError(f"{path}: {len(raw) - head} data bytes, but its header says {shape} of "
                         f"{dtype.itemsize}-byte values ({count * dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape)


def cache_dir() -> Path:
    """``$FLOATLAB_CACHE/datasets`` (default ``~/.cache/floatlab/datasets``)."""
    from floatlab.cache import cache_dir as root
    return root() / "datasets"


ENV_VAR = "FLOATLAB_FASHION_MNIST"


def candidate_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: only ``$FLOATLAB_FASHION_MNIST`` when it is set
    (a folder named on purpose is never passed over for another copy), else Debian's folder, then
    the floatlab cache."""
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser()]
    return [SYSTEM_DIR, cache_dir() / "fashion-mnist" / SYSTEM_DIR.relative_to("/")]


def idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` (gzip-compressed, as Debian ships it), else the same file uncompressed
    (``name`` without ``.gz``, as other downloads ship it), else None."""
    for p in (folder / name, folder / name.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def find_fashion_mnist() -> Path:
    """The first folder holding all four idx files.

    Raises:
        DataMissing: no folder holds them; the message says where it looked and how to get them.
            With ``$FLOATLAB_FASHION_MNIST`` set, it names that folder and the files it lacks
            (no other copy is used in its place).
    """
    names = FILES["train"] + FILES["test"]
    for d in candidate_dirs():
        if all(idx_file(d, n) is not None for n in names):
            return d
    if os.environ.get(ENV_VAR):
        d = candidate_dirs()[0]
        where = f"{ENV_VAR}={os.environ[ENV_VAR]}"
        if not d.is_dir():
            raise DataMissing(f"{where} is not a folder; point it at a folder holding {', '.join(names)}, "
                              f"or unset it to use Debian's {DEBIAN_PACKAGE} package")
        lacks = [n for n in names if idx_file(d, n) is None]
        raise DataMissing(f"{where}: the folder lacks {', '.join(lacks)} (gzipped or not); put Fashion-MNIST's "
                          f"four idx files there, or unset {ENV_VAR} to use Debian's {DEBIAN_PACKAGE} package")
    looked = ", ".join(str(d) for d in candidate_dirs())
    raise DataMissing(f"Fashion-MNIST's idx files are not on this machine (looked in {looked}); {HOW_TO_GET}")


def prepare_fashion_mnist(log=print) -> Path:
    """Make Fashion-MNIST available: nothing to do when the package is installed; otherwise
    ``apt-get download dataset-fashion-mnist`` and ``dpkg-deb -x`` into the floatlab cache.

    Raises:
        DataMissing: apt-get or dpkg-deb are missing or fail (the message says what happened and how
            else to get the files).
    """
    try:
        found = find_fashion_mnist()
        log(f"Fashion-MNIST is available in {found}")
        return found
    except DataMissing:
        if os.environ.get(ENV_VAR):
            raise  # the files would go into the cache, which is not read while the variable is set
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataMissing(f"cannot prepare Fashion-MNIST: {tool} is not available on this machine; {HOW_TO_GET}")
    target = cache_dir() / "fashion-mnist"
    with tempfile.TemporaryDirectory() as tmp:
        log(f"apt-get download {DEBIAN_PACKAGE} ...")
        r = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if r.returncode != 0 or not debs:
            why = (r.stderr or r.stdout).strip().splitlines()
            raise DataMissing(f"apt-get download {DEBIAN_PACKAGE} failed ({why[-1] if why else 'no .deb'}); "
                              f"run 'apt-get update' first, or {HOW_TO_GET}")
        target.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(target)], capture_output=True, text=True)
        if r.returncode != 0:
            raise DataMissing(f"dpkg-deb -x {debs[0].name} failed: {r.stderr.strip()}")
    found = find_fashion_mnist()
    log(f"Fashion-MNIST unpacked into {found}")
    return found


def baselines() -> list[dict]:
    """The benchmark table that the Debian package's README ships (the submitted models and their
    Fashion-MNIST test accuracy); ``[]`` where the documentation is not installed.

    The package's ``benchmark/baselines.json`` is *not* a table of accuracies: it holds the
    hyper-parameter grid of the scikit-learn benchmark (classifier -> parameter lists); the
    accuracies it produced are not in the package. The README's table is what the package says
    about accuracy, so that is what is read.
    """
    for d in (DOC_DIR, cache_dir() / "fashion-mnist" / DOC_DIR.relative_to("/")):
        readme = d / "README.md.gz"
        if readme.is_file():
            text = gzip.open(readme, "rt", encoding="utf-8").read()
            break
    else:
        return []
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3:
            try:
                acc = float(cells[2])
            except ValueError:
                continue
            if 0 < acc <= 1:
                rows.append({"classifier": cells[0], "preprocessing": cells[1], "test_accuracy": acc})
    return rows


@dataclass
class ImageData:
    """Images ``(N, 1, H, W)`` float32 in ``[0, 1]`` and labels ``(N,)`` int64, per split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    mean: float = 0.0
    std: float = 1.0

    @property
    def classes(self) -> int:
        return int(max(self.train_y.max(), self.test_y.max())) + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of every image and label: identifies the data a run trained on."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train_y) // batch_size)

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of ``step``: slice ``step % E`` of epoch ``step // E``'s permutation
        (``E`` batches per epoch; the permutation depends on ``(seed, epoch)`` only)."""
        per = self.steps_per_epoch(batch_size)
        epoch, i = divmod(int(step), per)
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 7919)
        idx = torch.randperm(len(self.train_y), generator=g)[i * batch_size:(i + 1) * batch_size]
        return self.train_x[idx], self.train_y[idx]


def _read_split(d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    imgs, labels = (read_idx(idx_file(d, n)) for n in FILES[split])
    if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
        raise ValueError(f"{d}: the {split} images {imgs.shape} and labels {labels.shape} do not match")
    return imgs, labels


def check_fashion_mnist() -> Path:
    """The folder :func:`load_fashion_mnist` would read, after reading its four files as it does
    (without making tensors). Raises :class:`DataMissing` or ``ValueError`` (a damaged file, named)."""
    d = find_fashion_mnist()
    for split in ("train", "test"):
        _read_split(d, split)
    return d


def load_fashion_mnist(train_limit: int | None = None) -> ImageData:
    """Fashion-MNIST as :class:`ImageData` (the first ``train_limit`` training images if given;
    the whole test set). Raises :class:`DataMissing` (how to get it) or ``ValueError`` (a damaged
    file, naming it)."""
    d = find_fashion_mnist()
    parts = []
    for split in ("train", "test"):
        imgs, labels = _read_split(d, split)
        x = torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
        parts += [x, y]
    if train_limit is not None:
        parts[0], parts[1] = parts[0][:train_limit].clone(), parts[1][:train_limit].clone()
    return ImageData(*parts, source=f"fashion-mnist:{d}", mean=MEAN, std=STD)


def load_digits(test_fraction: float = 0.25) -> ImageData:
    """scikit-learn's 8x8 digits (1,797 images, shipped inside scikit-learn: no download), scaled
    to ``[0, 1]``, split deterministically (every 4th image is a test image)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ModuleNotFoundError:
        raise DataMissing("the digits data set comes with scikit-learn: pip install scikit-learn "
                          "(or pip install 'floatlab[test]')") from None
    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    test = torch.arange(len(y)) % round(1 / test_fraction) == 0
    m, s = float(x[~test].mean()), float(x[~test].std())
    return ImageData(x[~test].clone(), y[~test].clone(), x[test].clone(), y[test].clone(),
                     source="digits:scikit-learn", mean=m, std=s)


DATASETS = {"fashion-mnist": load_fashion_mnist, "digits": load_digits}
