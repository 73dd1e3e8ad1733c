"""Running a grid of trials: a content-addressed result cache and parallel executors.

Each trial (one TrainConfig) is stored as JSON under a key that hashes the full config,
the data fingerprint and a digest of normlib's training code, so a re-run reuses every
finished trial and a code or data change invalidates them. Writes are atomic (temp file,
then os.replace): a run killed at any moment leaves no half-written entry, and an entry
that does not parse is recomputed. Missing trials run in local worker processes (default)
or on a Dask cluster when a scheduler address is given; each worker uses a fixed number of
torch threads, so results do not depend on which executor ran them.
"""
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch

from normlib import kernels
from normlib.data import fingerprint
from normlib.paths import results_dir, write_atomic
from normlib.train import History, TrainConfig, resolve_device, train

CODE_FILES = ("norms.py", "kernels.py", "csrc/norms.cpp", "csrc/pooling.cpp", "models.py", "data.py", "train.py")


def code_version():
    """Digest of the source files a trial's result depends on, and of which implementation the
    custom layers use on CPU (normlib.kernels.backend(): the C++ kernels or the reference pairs)."""
    h = hashlib.sha256()
    for name in CODE_FILES:
        h.update((Path(__file__).parent / name).read_bytes())
    h.update(kernels.backend().encode())
    return h.hexdigest()[:16]


def trial_key(config):
    """Hash of the full config (with "auto" resolved to the device that will run it), the data
    fingerprint and the code version."""
    cfg = {**config.to_dict(), "device": resolve_device(config.device)}
    payload = {"config": cfg, "data": fingerprint(), "code": code_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir(path=None):
    return Path(path) if path else results_dir() / "trials"


def load_cached(path):
    """The History stored at path, or None if absent or unreadable (then it is recomputed)."""
    try:
        return History.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def run_trial(config_dict, path, threads=1):
    """Train one config and store its History at path. Runs in a worker (or in-process)."""
    torch.set_num_threads(threads)
    hist = train(TrainConfig.from_dict(config_dict))
    write_atomic(path, json.dumps(hist.to_dict()))
    return hist.to_dict()


def exit_with_parent(parent):
    """Pool initializer: end this worker once the process that started it is gone (a killed
    pipeline must not leave trials training in the background)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def default_workers():
    return int(os.environ.get("NORMLIB_WORKERS", 0)) or os.cpu_count() or 1


def run_grid(configs, *, workers=None, scheduler=None, force=False, cache=None, progress=True, threads=1):
    """Histories for configs (same order): cached ones are read, the rest computed in parallel.
    workers: local processes (default: NORMLIB_WORKERS or one per core); 1 runs in-process.
    scheduler: a dask.distributed scheduler address (or a Client) to run on a Dask cluster instead.
    threads: torch threads per trial (fixed so results do not depend on the executor)."""
    configs = [TrainConfig.from_dict(c) if isinstance(c, dict) else c for c in configs]
    paths = [cache_dir(cache) / f"{trial_key(c)}.json" for c in configs]
    results = [None if force else load_cached(p) for p in paths]
    todo = [i for i, r in enumerate(results) if r is None]
    unique = {}
    for i in todo:  # identical configs in one grid run once
        unique.setdefault(paths[i], []).append(i)
    jobs = [(configs[idx[0]].to_dict(), str(p)) for p, idx in unique.items()]
    bar = None
    if progress and jobs:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc=f"{len(jobs)} trials to run ({len(configs) - len(todo)} cached)")
    done = {}
    for path, hist in _execute(jobs, workers or default_workers(), scheduler, threads):
        done[path] = History.from_dict(hist)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    for p, idx in unique.items():
        for i in idx:
            results[i] = done[str(p)]
    return results


def _execute(jobs, workers, scheduler, threads):
    """Yield (path, history_dict) as trials finish."""
    if not jobs:
        return
    if scheduler is not None:
        from distributed import Client, as_completed as dask_completed
        client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        futures = {client.submit(run_trial, cfg, path, threads, pure=False): path for cfg, path in jobs}
        for fut in dask_completed(futures):
            yield futures[fut], fut.result()
        if client is not scheduler:
            client.close()
    elif workers == 1 or len(jobs) == 1:
        saved = torch.get_num_threads()
        try:
            for cfg, path in jobs:
                yield path, run_trial(cfg, path, threads)
        finally:
            torch.set_num_threads(saved)
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(run_trial, cfg, path, threads): path for cfg, path in jobs}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
