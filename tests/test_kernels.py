"""Tests of normlib.kernels' build folder: named by what the kernels are built from (the sources'
contents, the flags, torch, the CPU), not by where the sources are, so copies of the checkout share
one build and a changed source never overwrites another's."""
import shutil
from pathlib import Path

from normlib import kernels


def copy_sources(dest):
    dest.mkdir(parents=True)
    return [Path(shutil.copy(src, dest / src.name)) for src in kernels.FILES]


def test_copies_of_the_sources_share_one_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "builds"))
    a, b = copy_sources(tmp_path / "a"), copy_sources(tmp_path / "b")
    assert kernels.build_dir(a) == kernels.build_dir(b) == kernels.build_dir()
    assert kernels.build_dir().parent == tmp_path / "builds"  # TORCH_EXTENSIONS_DIR: the parent folder


def test_a_changed_source_gets_another_build(tmp_path):
    for i in range(len(kernels.FILES)):  # each source and the header they share
        changed = copy_sources(tmp_path / f"a{i}")
        changed[i].write_text(changed[i].read_text() + "// one more line\n")
        assert kernels.build_dir(changed) != kernels.build_dir(), changed[i].name


def test_flags_and_cpu_are_part_of_the_key(monkeypatch):
    key = kernels.build_key()
    monkeypatch.setattr(kernels, "CFLAGS", kernels.CFLAGS + ("-g",))
    assert kernels.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: "fpu sse2")
    assert kernels.build_key() != key


def test_the_module_is_named_by_its_key():
    """Two versions of the kernels could be loaded in one process without colliding."""
    assert kernels.ext().__name__ == f"normlib_kernels_{kernels.build_key()}"
