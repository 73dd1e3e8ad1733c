"""The fused CPU kernels of the from-scratch layers: batch, layer and group norm (normlib/csrc/norms.cpp),
the CNN's 2 x 2 max pooling (normlib/csrc/pooling.cpp) and its first convolution (normlib/csrc/conv.cpp),
compiled into one extension module.

The reference pairs in normlib.norms (PyTorch ops, cs231n style) are the readable definition;
csrc/norms.cpp computes the same formulas in loops that read each value once, behind C++
autograd Functions, so that a from-scratch layer costs about what torch's built-in costs
(benchmarks/bench.py measures both side by side). Every speed trick lives in those files.

The kernels are compiled on first use with torch.utils.cpp_extension (g++ and ninja; about a
minute; `python -m normlib.kernels` builds them ahead, as `make setup` does) into a folder named
by build_key(): a digest of the sources' contents, the compiler flags, torch's version, Python's
extension ABI and the CPU (the build uses -march=native). The sources are copied into that folder
and compiled from there, so every copy of the same source (the end-to-end tests copy the checkout)
reuses one build and never rebuilds another's, and a changed source gets a new folder (and a new
module name, so two versions cannot collide in one process). The folders live in
<environment>/normlib-kernels/ (TORCH_EXTENSIONS_DIR instead, if set).

Which implementation the custom layers use, per call:
- CPU tensors: these kernels, unless NORMLIB_KERNELS=python;
- other devices (CUDA): the reference pairs, whose PyTorch ops run there.
NORMLIB_KERNELS=python (for a machine without a C++ compiler) selects the reference pairs on
CPU too; it is part of normlib.trials' code version, so the result cache keeps the two apart.
"""
import hashlib
import logging
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

SOURCES = tuple(Path(__file__).parent / "csrc" / name for name in ("norms.cpp", "pooling.cpp", "conv.cpp"))
FILES = SOURCES + (Path(__file__).parent / "csrc" / "common.h",)  # what a build is made from: its key, its copy
# -fopenmp: at::parallel_for splits the loops over torch's own OpenMP threads (the libgomp that torch
# loaded, so torch.set_num_threads applies to them too)
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp")
LDFLAGS = ("-fopenmp",)
BACKENDS = ("cpp", "python")
_ext = None


class KernelError(RuntimeError):
    """The C++ kernels could not be compiled or loaded; the message says what to do."""


def backend():
    """'cpp' (default) or 'python', from NORMLIB_KERNELS; anything else is refused."""
    value = os.environ.get("NORMLIB_KERNELS", "cpp").strip().lower() or "cpp"
    if value not in BACKENDS:
        raise KernelError(f"NORMLIB_KERNELS = {value!r}: allowed {', '.join(BACKENDS)}")
    return value


def use_cpp(x):
    """Whether a layer call on tensor x goes to the C++ kernels."""
    return x.device.type == "cpu" and backend() == "cpp"


def _cpu_flags():
    """The CPU's feature flags (what -march=native compiles for), from /proc/cpuinfo where it exists."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(("flags", "Features"))), "")


def build_key(sources=FILES):
    """16 hex digits naming a build: the sources' (and header's) names and contents, the flags, torch's version,
    Python's extension ABI, and the CPU. Not their paths: copies of one source share the key."""
    from importlib.metadata import version

    h = hashlib.sha256()
    for path in sources:
        h.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    for part in (*CFLAGS, "|", *LDFLAGS, version("torch"), sysconfig.get_config_var("EXT_SUFFIX") or "",
                 platform.machine(), _cpu_flags()):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:16]


def build_root():
    """The parent folder of the builds: TORCH_EXTENSIONS_DIR, else <environment>/normlib-kernels."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(sys.prefix) / "normlib-kernels")


def build_dir(sources=FILES):
    """Where the build of these sources lives: <build_root()>/normlib_kernels_<build_key()>."""
    return build_root() / f"normlib_kernels_{build_key(sources)}"


def _writable(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def ext(verbose=False):
    """The compiled extension module (built on first use, then loaded from its build folder)."""
    global _ext
    if _ext is None:
        # importing cpp_extension on a CPU-only machine warns that no CUDA runtime is found: not our concern
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        env_bin = str(Path(sys.executable).parent)  # the environment's ninja, when it is not activated
        if env_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join(filter(None, [os.environ.get("PATH"), env_bin]))
        folder = build_dir()
        if not _writable(folder):  # a read-only environment: under torch's default, ~/.cache/torch_extensions
            folder = Path.home() / ".cache" / "torch_extensions" / folder.name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sources = []
            for path in FILES:  # compiled from the copy in the folder: one path for every checkout
                copy = folder / "src" / path.name
                if not copy.exists():  # never rewritten: a newer mtime would make ninja rebuild
                    copy.parent.mkdir(exist_ok=True)
                    tmp = copy.with_name(f".{path.name}.{os.getpid()}.tmp")
                    tmp.write_bytes(path.read_bytes())
                    os.replace(tmp, copy)
                if path in SOURCES:
                    sources.append(str(copy))
            _ext = cpp_extension.load(name=folder.name, sources=sources, extra_cflags=list(CFLAGS),
                                      extra_ldflags=list(LDFLAGS), build_directory=str(folder), verbose=verbose)
        except (OSError, RuntimeError, ImportError) as e:
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise KernelError(f"cannot build normlib's C++ kernels ({detail}): install g++ and ninja "
                              f"(apt-get install g++ ninja-build), or set NORMLIB_KERNELS=python to use "
                              f"the PyTorch-op reference layers (slower)") from None
    return _ext


def main():
    t0 = time.perf_counter()
    try:
        if backend() == "python":
            print("NORMLIB_KERNELS=python: the custom layers use the PyTorch-op reference pairs; nothing to build")
            return 0
        module = ext()
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"normlib C++ kernels ready ({time.perf_counter() - t0:.1f} s): {Path(module.__file__).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
