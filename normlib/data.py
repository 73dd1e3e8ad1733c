"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), loaded once into memory.

The build machines have no internet, so the raw IDX files are looked for in this order:
1. ``<root>/FashionMNIST/raw/`` (torchvision's own layout), if the four files are there;
2. the gzipped files of Debian's ``dataset-fashion-mnist`` package, decompressed into that
   folder here (their gzip bytes differ from upstream's, so torchvision's .gz checksums
   would reject them: we check the decompressed files instead);
3. torchvision's download, on a machine that is online.
Every file is verified by size and sha256 before use. Loading goes through
``torchvision.datasets.FashionMNIST``; batching later is plain tensor indexing.

The splits built from them (the standardized tensors of one val_size, split_seed and train_size)
are kept in ``<root>/FashionMNIST/normlib-splits/``, keyed by the data's fingerprint, those
arguments and this file's source, and written atomically: every later process (each notebook's
kernel, each worker of a grid) reads them back in a fraction of a second instead of importing
torchvision and building them again. A damaged or unreadable entry is rebuilt.
"""
import argparse
import functools
import gzip
import hashlib
import io
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from normlib.paths import data_dir, write_atomic

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# sha256 of the decompressed IDX files (identical for upstream and Debian's copies).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Identifies the data a result was computed on (stored with every cached trial).
FINGERPRINT = hashlib.sha256("".join(SHA256[n] for n in sorted(SHA256)).encode()).hexdigest()[:16]
SIZES = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
         "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}
N_TRAIN, N_TEST = 60_000, 10_000

HOW_TO_GET = ("get the data in one of two ways: on Debian, `sudo apt-get install dataset-fashion-mnist` "
              "(then re-run; the files are decompressed from /usr/share/datasets/fashion-mnist), or on a machine "
              "with internet, `python -m normlib.data --download` (torchvision's download)")


class DataError(RuntimeError):
    """The data set is missing or damaged; the message says what to do."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_dir(root):
    return Path(root) / "FashionMNIST" / "raw"


def verify(root):
    """Check size and sha256 of the four raw files; return a list of problems (empty if fine)."""
    problems = []
    for name, digest in SHA256.items():
        path = _raw_dir(root) / name
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != SIZES[name]:
            problems.append(f"{path} is truncated or wrong ({path.stat().st_size} bytes, expected {SIZES[name]})")
        elif _sha256(path) != digest:
            problems.append(f"{path} is corrupted (sha256 mismatch)")
    return problems


def _from_debian(root):
    """Decompress Debian's gzipped IDX files into torchvision's raw folder (atomically per file)."""
    for name in SHA256:
        src = DEBIAN_DIR / f"{name}.gz"
        try:
            with gzip.open(src, "rb") as fin:
                data = fin.read()
        except (OSError, EOFError, zlib.error) as e:  # truncated or corrupted .gz
            raise DataError(f"{src} cannot be decompressed ({e}); reinstall it with "
                            f"`sudo apt-get install --reinstall dataset-fashion-mnist`, or {HOW_TO_GET}") from e
        write_atomic(_raw_dir(root) / name, data)


def prepare(root=None, download=False):
    """Make sure verified raw files are in ``root``; return the root. Raises DataError with advice."""
    root = Path(root or data_dir())
    if not verify(root):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"data root {root} cannot be created ({e.strerror}); set NORMLIB_DATA to a writable folder")
    if not os.access(root, os.W_OK):
        raise DataError(f"data root {root} is not writable; set NORMLIB_DATA to a writable folder")
    if all((DEBIAN_DIR / f"{n}.gz").exists() for n in SHA256):
        _from_debian(root)
    elif download:
        from torchvision.datasets import FashionMNIST

        for name in SHA256:  # let torchvision fetch everything afresh
            (_raw_dir(root) / name).unlink(missing_ok=True)
        try:
            FashionMNIST(root, train=True, download=True)
            FashionMNIST(root, train=False, download=True)
        except (OSError, RuntimeError) as e:  # offline: URLError (an OSError) or torchvision's RuntimeError
            raise DataError(f"torchvision's download of Fashion-MNIST failed ({e}); {HOW_TO_GET}") from e
    problems = verify(root)
    if problems:
        raise DataError(f"Fashion-MNIST not usable: {'; '.join(problems)}. To fix it, {HOW_TO_GET}")
    return root


@functools.lru_cache(maxsize=4)
def fingerprint(root=None):
    """sha256 over the four verified files' digests: identifies the data a result was computed on."""
    prepare(root)
    return FINGERPRINT


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor  # (N, 1, 28, 28) float32, standardized with training statistics
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float            # training-set pixel mean / std used for standardization (pixels in [0, 1])
    std: float
    fingerprint: str


def stratified_split(labels, n_first, seed):
    """Indices of a class-balanced random subset of size n_first, and the rest (both shuffled by seed).
    The n_first % n_classes left-over examples come from the classes with the most examples."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    classes = labels.unique()
    per_class = [perm[labels[perm] == c] for c in classes]  # shuffled indices of each class
    by_size = sorted(range(len(classes)), key=lambda i: -len(per_class[i]))  # stable: ties keep class order
    extra = set(by_size[:n_first % len(classes)])
    quota = [n_first // len(classes) + (i in extra) for i in range(len(classes))]
    first = torch.cat([idx[:q] for idx, q in zip(per_class, quota)])
    rest = torch.cat([idx[q:] for idx, q in zip(per_class, quota)])
    return first[torch.randperm(len(first), generator=g)], rest[torch.randperm(len(rest), generator=g)]


SPLITS_DIR = "normlib-splits"
SPLIT_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _splits_path(root, val_size, split_seed, train_size):
    """Where the splits of these arguments are kept: the key covers the data, the arguments and the
    source of this module (a change to how splits are built never reads an old entry)."""
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = hashlib.sha256(f"{FINGERPRINT} {val_size} {split_seed} {train_size} {source}".encode()).hexdigest()[:20]
    return Path(root) / "FashionMNIST" / SPLITS_DIR / f"splits-{key}.pt"


def _read_splits(path):
    """The stored splits, or None if absent or unreadable (then they are rebuilt)."""
    try:
        d = torch.load(path, weights_only=True)
        s = Splits(*(d[f] for f in SPLIT_FIELDS), float(d["mean"]), float(d["std"]), FINGERPRINT)
    except Exception:  # absent, truncated, corrupted or of another layout: (re)build it
        return None
    ok = (s.x_train.dtype == torch.float32 and s.x_train.shape[1:] == (1, 28, 28)
          and len(s.x_train) == len(s.y_train) and len(s.x_val) == len(s.y_val) and len(s.x_test) == N_TEST)
    return s if ok else None


def _write_splits(path, s):
    """Store s atomically; a root that cannot take it only loses the speed-up."""
    buffer = io.BytesIO()
    torch.save({**{name: getattr(s, name) for name in SPLIT_FIELDS}, "mean": s.mean, "std": s.std}, buffer)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError:
        pass


def _build_splits(root, val_size, split_seed, train_size):
    """The splits, from the raw files through torchvision's FashionMNIST."""
    from torchvision.datasets import FashionMNIST

    train = FashionMNIST(root, train=True, download=False)
    test = FashionMNIST(root, train=False, download=False)
    x_all, y_all = train.data.float().div_(255).unsqueeze(1), train.targets.long()  # (60000, 1, 28, 28)
    x_test, y_test = test.data.float().div_(255).unsqueeze(1), test.targets.long()
    assert x_all.shape == (N_TRAIN, 1, 28, 28) and x_test.shape == (N_TEST, 1, 28, 28)
    val_idx, train_idx = stratified_split(y_all, val_size, split_seed)
    if train_size:
        train_idx = train_idx[stratified_split(y_all[train_idx], train_size, split_seed)[0]]
    x_train = x_all[train_idx]
    mean, std = x_train.mean().item(), x_train.std().item()
    norm = lambda x: (x - mean) / std  # noqa: E731
    return Splits(norm(x_train), y_all[train_idx], norm(x_all[val_idx]), y_all[val_idx],
                  norm(x_test), y_test, mean, std, FINGERPRINT)


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(root=None, *, val_size=5000, split_seed=0, train_size=0):
    """Fashion-MNIST as in-memory tensors: a stratified train/validation split of the 60k training
    images (fixed by split_seed), the 10k test set held out, inputs standardized with training statistics.
    train_size > 0 keeps a stratified subset of that many training examples (quick runs).
    The raw files are verified on every call; the splits are read back from the data root when an
    earlier process stored them, else built and stored."""
    if not 0 < val_size < N_TRAIN:
        raise ValueError(f"val_size = {val_size}: must be between 1 and {N_TRAIN - 1}")
    if not 0 <= train_size <= N_TRAIN - val_size:
        raise ValueError(f"train_size = {train_size}: must be 0 (all) or at most {N_TRAIN - val_size}")
    root = prepare(root)
    path = _splits_path(root, val_size, split_seed, train_size)
    s = _read_splits(path)
    if s is None:
        s = _build_splits(root, val_size, split_seed, train_size)
        _write_splits(path, s)
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description="Prepare and verify Fashion-MNIST for normlib.")
    p.add_argument("--root", default=None, help="data root (default: $NORMLIB_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="allow torchvision's download (needs internet)")
    args = p.parse_args(argv)
    try:
        root = prepare(args.root, download=args.download)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST verified in {_raw_dir(root)} (fingerprint {fingerprint(root)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
