"""Tests of normlib.data: Fashion-MNIST found locally first, then in Debian's package (decompressed
here), then through torchvision's download (only when asked); files checked by size and sha256;
missing, truncated or corrupted files reported with what to do; a fixed stratified train/val split,
the test set held out, standardization with training statistics, the training subset option.
Temporary roots get copies of the real files; the Debian folder is monkeypatched away or faked."""
import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torchvision.datasets

from normlib import data

FILES = tuple(data.SHA256)
HOW = ("apt-get install dataset-fashion-mnist", "python -m normlib.data --download")


@pytest.fixture(scope="module")
def real_raw():
    """The project's prepared raw folder (decompressed from Debian's package if needed)."""
    root = data.prepare()
    yield root / "FashionMNIST" / "raw"
    data.load_fashion_mnist.cache_clear()  # full copies of the data set: free them for the next modules


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian-package")


@pytest.fixture
def debian():
    if not all((data.DEBIAN_DIR / f"{name}.gz").exists() for name in FILES):
        pytest.skip("Debian's dataset-fashion-mnist package is not installed")
    return data.DEBIAN_DIR


class SpyFashionMNIST(torchvision.datasets.FashionMNIST):
    """torchvision's class, recording how it was called."""
    calls = []

    def __init__(self, root, train=True, download=False, **kw):
        SpyFashionMNIST.calls.append({"root": str(root), "train": train, "download": download})
        super().__init__(root, train=train, download=download, **kw)


SpyFashionMNIST.__name__ = "FashionMNIST"  # torchvision looks for <root>/<class name>/raw


@pytest.fixture
def spy(monkeypatch):
    SpyFashionMNIST.calls = []
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", SpyFashionMNIST)
    return SpyFashionMNIST.calls


def copy_raw(src, root, names=FILES):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / name, raw / name)
    return raw


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels(x, splits):
    """Undo the standardization: raw pixel values in [0, 1]."""
    return x * splits.std + splits.mean


# ----------------------------------------------------------------------------
# the real data set: counts, shapes, split, standardization, subset

def test_real_files_verified(real_raw):
    assert data.verify(real_raw.parent.parent) == []
    for name in FILES:
        assert (real_raw / name).stat().st_size == data.SIZES[name]
        assert sha256(real_raw / name) == data.SHA256[name]
    assert len(data.fingerprint()) == 16


def test_counts_shapes_dtypes(real_raw):
    s = data.load_fashion_mnist(val_size=5000, split_seed=0)
    assert s.x_train.shape == (55_000, 1, 28, 28) and s.y_train.shape == (55_000,)
    assert s.x_val.shape == (5_000, 1, 28, 28) and s.y_val.shape == (5_000,)
    assert s.x_test.shape == (10_000, 1, 28, 28) and s.y_test.shape == (10_000,)
    assert {s.x_train.dtype, s.x_val.dtype, s.x_test.dtype} == {torch.float32}
    assert {s.y_train.dtype, s.y_val.dtype, s.y_test.dtype} == {torch.int64}
    assert torch.bincount(s.y_val).tolist() == [500] * 10  # stratified
    assert torch.bincount(s.y_train).tolist() == [5500] * 10
    assert torch.bincount(s.y_test).tolist() == [1000] * 10
    assert s.fingerprint == data.fingerprint()


def test_standardized_with_training_statistics(real_raw):
    s = data.load_fashion_mnist(val_size=5000, split_seed=0)
    assert abs(s.x_train.mean().item()) < 1e-4 and abs(s.x_train.std().item() - 1) < 1e-4
    assert 0.28 < s.mean < 0.29 and 0.35 < s.std < 0.36  # Fashion-MNIST's pixel mean and std
    for x in (s.x_train, s.x_val, s.x_test):  # the same (training) statistics undo every split
        p = pixels(x, s) * 255
        assert p.min() > -1e-3 and p.max() < 255 + 1e-3
        assert (p - p.round()).abs().max() < 1e-3  # back on the 0..255 grid
    test = torchvision.datasets.FashionMNIST(real_raw.parent.parent, train=False)
    assert torch.allclose(pixels(s.x_test[:, 0], s) * 255, test.data.float(), atol=1e-3)  # held out, in order
    assert torch.equal(s.y_test, test.targets)


def test_split_is_a_fixed_stratified_partition(real_raw):
    labels = torchvision.datasets.FashionMNIST(real_raw.parent.parent, train=True).targets
    val, train = data.stratified_split(labels, 5000, seed=0)
    assert len(val) == 5000 and len(train) == 55_000
    assert len(set(val.tolist()) | set(train.tolist())) == 60_000  # disjoint, and covers every image
    assert torch.bincount(labels[val]).tolist() == [500] * 10
    again, _ = data.stratified_split(labels, 5000, seed=0)
    other, _ = data.stratified_split(labels, 5000, seed=1)
    assert torch.equal(val, again)
    assert not torch.equal(val.sort().values, other.sort().values)


def test_split_seed_changes_validation_not_test(real_raw):
    a = data.load_fashion_mnist(val_size=5000, split_seed=0)
    b = data.load_fashion_mnist(val_size=5000, split_seed=1)
    assert not torch.equal(a.y_val, b.y_val)
    assert torch.bincount(b.y_val).tolist() == [500] * 10
    assert torch.equal(a.y_test, b.y_test)
    assert torch.allclose(pixels(a.x_test, a), pixels(b.x_test, b), atol=1e-5)


def test_subset(real_raw):
    full = data.load_fashion_mnist(val_size=5000, split_seed=0)
    sub = data.load_fashion_mnist(val_size=5000, split_seed=0, train_size=1000)
    assert sub.x_train.shape == (1000, 1, 28, 28)
    assert torch.bincount(sub.y_train).tolist() == [100] * 10
    assert abs(sub.x_train.mean().item()) < 1e-4 and abs(sub.x_train.std().item() - 1) < 1e-4  # its own stats
    assert sub.mean != full.mean
    assert torch.equal(sub.y_val, full.y_val)  # the validation set does not depend on the subset
    assert torch.allclose(pixels(sub.x_val, sub), pixels(full.x_val, full), atol=1e-5)
    # every subset image is one of the full split's training images (compared by a strip of 40 pixels)
    full_train = {tuple(r) for r in (pixels(full.x_train, full) * 255).round().to(torch.uint8).flatten(1)[:, 200:240]
                  .tolist()}
    sub_rows = (pixels(sub.x_train, sub) * 255).round().to(torch.uint8).flatten(1)[:, 200:240].tolist()
    assert sum(tuple(r) in full_train for r in sub_rows) == 1000


def test_subset_has_exactly_the_requested_size_when_classes_are_unequal():
    labels = torch.arange(10).repeat_interleave(torch.tensor([5499] * 5 + [5500] * 5))
    first, rest = data.stratified_split(labels, 54_995, seed=0)
    assert len(first) == 54_995 and len(rest) == 0
    counts = torch.bincount(labels[first])
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("kwargs, name", [(dict(val_size=0), "val_size"), (dict(val_size=60_000), "val_size"),
                                          (dict(train_size=-1), "train_size"),
                                          (dict(val_size=5000, train_size=55_001), "train_size")])
def test_bad_sizes(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} = "):
        data.load_fashion_mnist(**kwargs)


# ----------------------------------------------------------------------------
# where the files come from: local raw files, Debian's package, torchvision's download

def test_local_raw_files_first(tmp_path, real_raw, spy, debian):
    raw = copy_raw(real_raw, tmp_path)
    mtimes = {n: (raw / n).stat().st_mtime_ns for n in FILES}
    assert data.prepare(tmp_path) == tmp_path
    assert {n: (raw / n).stat().st_mtime_ns for n in FILES} == mtimes  # Debian's copy was not used
    s = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500)
    assert s.x_train.shape == (500, 1, 28, 28) and s.x_val.shape == (100, 1, 28, 28)
    assert s.x_test.shape == (10_000, 1, 28, 28)
    # loaded through torchvision's class, from this root, never downloading
    assert {(c["root"], c["train"], c["download"]) for c in spy} == {(str(tmp_path), True, False),
                                                                   (str(tmp_path), False, False)}


def test_debian_files_decompressed_into_root(tmp_path, debian, spy):
    assert data.verify(tmp_path) != []
    data.prepare(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)  # no temporary files left behind
    assert all(sha256(raw / n) == data.SHA256[n] for n in FILES)
    assert not any(c["download"] for c in spy)
    s = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500)
    assert s.y_test.shape == (10_000,) and s.fingerprint == data.fingerprint()


def test_corrupted_local_file_replaced_from_debian(tmp_path, real_raw, debian):
    raw = copy_raw(real_raw, tmp_path)
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.seek(5000)
        f.write(b"\xff")
    problems = data.verify(tmp_path)
    assert len(problems) == 1 and "t10k-labels-idx1-ubyte is corrupted" in problems[0]
    data.prepare(tmp_path)
    assert data.verify(tmp_path) == []


def test_nothing_found_names_both_ways_to_get_the_data(tmp_path, no_debian, spy):
    with pytest.raises(data.DataError) as e:
        data.prepare(tmp_path / "data")
    msg = str(e.value)
    assert all(way in msg for way in HOW) and "train-images-idx3-ubyte is missing" in msg
    assert not any(c["download"] for c in spy)  # never downloads unless asked
    with pytest.raises(data.DataError):
        data.load_fashion_mnist(tmp_path / "data")


def test_truncated_file_reported(tmp_path, real_raw, no_debian):
    raw = copy_raw(real_raw, tmp_path)
    (raw / "train-labels-idx1-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes()[:30_000])
    with pytest.raises(data.DataError) as e:
        data.prepare(tmp_path)
    msg = str(e.value)
    assert "train-labels-idx1-ubyte is truncated or wrong (30000 bytes, expected 60008)" in msg
    assert all(way in msg for way in HOW)
    assert "images" not in msg.split(". To fix it")[0]  # only the damaged file is reported


def test_corrupted_file_reported(tmp_path, real_raw, no_debian):
    raw = copy_raw(real_raw, tmp_path)
    data_bytes = bytearray((raw / "train-images-idx3-ubyte").read_bytes())
    data_bytes[1_000_000] ^= 0x01  # same size, one bit off
    (raw / "train-images-idx3-ubyte").write_bytes(bytes(data_bytes))
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte is corrupted \(sha256 mismatch\)") as e:
        data.prepare(tmp_path)
    assert all(way in str(e.value) for way in HOW)


def test_missing_file_reported(tmp_path, real_raw, no_debian):
    copy_raw(real_raw, tmp_path, names=FILES[1:])
    with pytest.raises(data.DataError, match=rf"{FILES[0]} is missing") as e:
        data.prepare(tmp_path)
    assert all(way in str(e.value) for way in HOW)


def test_damaged_debian_archive_reported(tmp_path, monkeypatch, debian):
    fake = tmp_path / "debian"
    fake.mkdir()
    for name in FILES:
        shutil.copy(debian / f"{name}.gz", fake / f"{name}.gz")
    gz = (fake / "t10k-images-idx3-ubyte.gz").read_bytes()
    (fake / "t10k-images-idx3-ubyte.gz").write_bytes(gz[:len(gz) // 2])  # truncated download
    monkeypatch.setattr(data, "DEBIAN_DIR", fake)
    root = tmp_path / "data"
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte.gz cannot be decompressed") as e:
        data.prepare(root)
    assert "apt-get install --reinstall dataset-fashion-mnist" in str(e.value)
    assert not [p for p in (root / "FashionMNIST" / "raw").iterdir() if p.name.startswith(".")]  # no temp files


def test_debian_archive_with_wrong_content_reported(tmp_path, monkeypatch, debian):
    fake = tmp_path / "debian"
    fake.mkdir()
    for name in FILES:
        shutil.copy(debian / f"{name}.gz", fake / f"{name}.gz")
    with gzip.open(fake / "t10k-labels-idx1-ubyte.gz", "wb") as f:  # a valid gzip of the wrong bytes
        f.write(bytes(10008))
    monkeypatch.setattr(data, "DEBIAN_DIR", fake)
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte is corrupted") as e:
        data.prepare(tmp_path / "data")
    assert all(way in str(e.value) for way in HOW)


def test_unwritable_root(tmp_path, monkeypatch, debian):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(data.DataError, match="cannot be created.*NORMLIB_DATA"):
        data.prepare(tmp_path / "a-file" / "data")  # a folder cannot be made inside a file
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)  # tests may run as root: fake it
    with pytest.raises(data.DataError, match="is not writable.*NORMLIB_DATA"):
        data.prepare(tmp_path / "data")


def fake_download(real_raw):
    """A FashionMNIST stand-in for an online machine: download=True puts the raw files in place."""
    class Online(SpyFashionMNIST):
        def __init__(self, root, train=True, download=False, **kw):
            if download:
                copy_raw(real_raw, Path(root))
            super().__init__(root, train=train, download=download, **kw)
    Online.__name__ = "FashionMNIST"
    return Online


def test_download_when_asked(tmp_path, real_raw, no_debian, monkeypatch, spy):
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download(real_raw))
    assert data.prepare(tmp_path, download=True) == tmp_path
    assert data.verify(tmp_path) == []
    assert [c["download"] for c in spy] == [True, True]


def test_failed_download_reported(tmp_path, no_debian, monkeypatch):
    class Offline:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(data.DataError, match="download of Fashion-MNIST failed") as e:
        data.prepare(tmp_path, download=True)
    assert all(way in str(e.value) for way in HOW)


def test_command_line(tmp_path, real_raw, no_debian, capsys):
    assert data.main(["--root", str(tmp_path)]) == 2
    assert "error: Fashion-MNIST not usable" in capsys.readouterr().err
    copy_raw(real_raw, tmp_path)
    assert data.main(["--root", str(tmp_path)]) == 0
    assert "Fashion-MNIST verified" in capsys.readouterr().out


# ----------------------------------------------------------------------------
# the stored splits: built once through torchvision, read back by every later process

def same_splits(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in data.SPLIT_FIELDS) and \
        (a.mean, a.std, a.fingerprint) == (b.mean, b.std, b.fingerprint)


def stored(root):
    folder = root / "FashionMNIST" / data.SPLITS_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_splits_stored_then_read_back_bit_for_bit(tmp_path, real_raw, spy):
    copy_raw(real_raw, tmp_path)
    data.load_fashion_mnist.cache_clear()
    built = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500)
    assert len(spy) == 2 and len(stored(tmp_path)) == 1  # one entry, no temporary file left
    data.load_fashion_mnist.cache_clear()
    again = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500)
    assert len(spy) == 2  # read back: torchvision was not called again
    assert again is not built and same_splits(again, built)
    data.load_fashion_mnist.cache_clear()
    other = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500, split_seed=1)
    assert len(spy) == 4 and len(stored(tmp_path)) == 2  # other arguments: another entry
    assert not torch.equal(other.y_train, built.y_train)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_stored_splits_are_rebuilt(tmp_path, real_raw, spy, damage):
    copy_raw(real_raw, tmp_path)
    data.load_fashion_mnist.cache_clear()
    built = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500)
    path = tmp_path / "FashionMNIST" / data.SPLITS_DIR / stored(tmp_path)[0]
    content = path.read_bytes()
    path.write_bytes({"truncate": content[:len(content) // 2], "garbage": b"\x00not a torch file" * 99,
                      "empty": b""}[damage])
    data.load_fashion_mnist.cache_clear()
    rebuilt = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500)
    assert len(spy) == 4 and same_splits(rebuilt, built)
    assert path.read_bytes() == content  # and stored again, whole


def test_read_only_root_still_loads(tmp_path, real_raw, spy, monkeypatch):
    copy_raw(real_raw, tmp_path)
    data.load_fashion_mnist.cache_clear()

    def no_room(*a, **k):
        raise OSError(28, "No space left on device")
    import tempfile
    monkeypatch.setattr(tempfile, "mkstemp", no_room)  # normlib.paths.write_atomic cannot write
    s = data.load_fashion_mnist(tmp_path, val_size=100, train_size=500)
    assert s.x_train.shape == (500, 1, 28, 28) and stored(tmp_path) == []


def test_stored_splits_load_without_torchvision(tmp_path, real_raw):
    """What makes a worker process or a notebook kernel start fast: no torchvision import."""
    import subprocess
    import sys
    copy_raw(real_raw, tmp_path)
    code = ("import sys; from normlib.data import load_fashion_mnist; "
            f"s = load_fashion_mnist({str(tmp_path)!r}, val_size=100, train_size=500); "
            "print(len(s.x_train), 'torchvision' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs == [["500", "True"], ["500", "False"]]  # built through torchvision, then read back
