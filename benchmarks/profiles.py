"""Wall time of `python -m normlib.pipeline --profile P` on a fresh copy of this working tree (cold: no
cached trial, no built book), then of the same command again with nothing changed (warm). The copy
lives in a temporary folder: this checkout is not touched.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from normlib.paths import ROOT, data_dir


SKIP = {".git", ".venv", "data", "results", "_build", ".build-tmp", ".build-old", "book/notebooks", ".pytest_cache"}


def fresh_checkout(dest):
    """Copy this working tree to dest without environment, data, results and built output, so that
    the pipeline starts cold there and neither touches nor races anyone's book in this checkout."""
    def ignore(folder, names):
        rel = Path(folder).relative_to(ROOT)
        return [n for n in names if (rel / n).as_posix() in SKIP or n == "__pycache__" or n.endswith(".egg-info")]
    shutil.copytree(ROOT, dest, ignore=ignore)


def time_profile(profile, root, results, timeout):
    env = {**os.environ, "NORMLIB_RESULTS": str(results), "NORMLIB_DATA": str(data_dir()), "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "normlib.pipeline", "--root", str(root), "--profile", profile]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        rc, tail = None, f"timed out after {timeout} s"
    return {"seconds": time.perf_counter() - start, "returncode": rc, "ok": rc == 0,
            "last_stderr_line": tail if rc != 0 else ""}


def bench_profiles(names, timeout):
    """Wall time of the pipeline on a fresh copy of this working tree: cold, then warm (nothing changed).
    The copy is deleted, unless a run failed: then it is kept, with the pipeline's logs, and named."""
    out = {}
    for profile in names:
        tmp = Path(tempfile.mkdtemp(prefix=f"normlab-bench-{profile}-"))
        root, results = tmp / "repo", tmp / "results"
        fresh_checkout(root)
        cold = time_profile(profile, root, results, timeout)
        warm = time_profile(profile, root, results, timeout)
        kept = None if cold["ok"] and warm["ok"] else str(tmp)
        if kept is None:
            shutil.rmtree(tmp, ignore_errors=True)
        out[f"profile_{profile}"] = {"command": f"python -m normlib.pipeline --profile {profile}", "cold": cold,
                                     "warm": warm, "warm_over_cold": warm["seconds"] / cold["seconds"], "kept": kept}
    return out


def profile_line(name, r):
    def status(run):
        return "ok" if run["ok"] else f"FAILED (exit {run['returncode']}: {run['last_stderr_line']})"
    return (f"{name}: cold {r['cold']['seconds']:.1f} s {status(r['cold'])}, warm (nothing changed) "
            f"{r['warm']['seconds']:.1f} s {status(r['warm'])}, warm/cold {r['warm_over_cold']:.3f}"
            + (f"; the failed copy is kept in {r['kept']}" if r["kept"] else ""))
