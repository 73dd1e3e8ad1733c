"""The fused CPU kernels of the from-scratch layers: batch, layer and group norm (normlib/csrc/norms.cpp)
and the CNN's 2 x 2 max pooling (normlib/csrc/pooling.cpp), compiled into one extension module.

The reference pairs in normlib.norms (PyTorch ops, cs231n style) are the readable definition;
csrc/norms.cpp computes the same formulas in loops that read each value once, behind C++
autograd Functions, so that a from-scratch layer costs about what torch's built-in costs
(benchmarks/bench.py measures both side by side). The kernels are compiled on first use with
torch.utils.cpp_extension (g++ and ninja; about a minute, once per environment and source
version: `python -m normlib.kernels` builds them ahead, as `make setup` does) into
<environment>/normlib-kernels/ (TORCH_EXTENSIONS_DIR elsewhere, if set); a changed source is
rebuilt on its first use.

Which implementation the custom layers use, per call:
- CPU tensors: these kernels, unless NORMLIB_KERNELS=python;
- other devices (CUDA): the reference pairs, whose PyTorch ops run there.
NORMLIB_KERNELS=python (for a machine without a C++ compiler) selects the reference pairs on
CPU too; it is part of normlib.grid's code version, so the result cache keeps the two apart.
"""
import logging
import os
import sys
import time
from pathlib import Path

SOURCES = tuple(Path(__file__).parent / "csrc" / name for name in ("norms.cpp", "pooling.cpp"))
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


def ext(verbose=False):
    """The compiled extension module (built on first use, then loaded from the cache)."""
    global _ext
    if _ext is None:
        # importing cpp_extension on a CPU-only machine warns that no CUDA runtime is found: not our concern
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        env_bin = str(Path(sys.executable).parent)  # the environment's ninja, when it is not activated
        if env_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join(filter(None, [os.environ.get("PATH"), env_bin]))
        build = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(sys.prefix) / "normlib-kernels")
        try:
            build.mkdir(parents=True, exist_ok=True)
            where = {"build_directory": str(build)} if os.access(build, os.W_OK) else {}
        except OSError:
            where = {}  # a read-only environment: torch's default, ~/.cache/torch_extensions
        try:
            # -fopenmp: at::parallel_for splits the loops over torch's own OpenMP threads (the libgomp
            # that torch loaded, so torch.set_num_threads applies to them too)
            _ext = cpp_extension.load(name="normlib_kernels", sources=[str(s) for s in SOURCES],
                                      extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
                                      extra_ldflags=["-fopenmp"], verbose=verbose, **where)
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
        ext()
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"normlib C++ kernels ready ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
