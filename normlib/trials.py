"""Running trials: one runner for every trial of the report, plain or probed.

A Trial is a TrainConfig, optionally a probe that watches the network while it trains
(normlib.probes.PROBES) and a network variant (normlib.models.VARIANTS: the standard network of
the config, or a study's own). `run_trials` returns one Result per trial, in order: the History,
the probe's record and where the trial ran.

Cache. A result is stored as JSON in results/trials/<key>.json; the key hashes the trial, the
device and number of torch threads it runs with, the data fingerprint and the version of the code
it runs (`code_version`: the trainer's files, plus probes.py for a probed trial). A re-run reads
finished trials back; a changed config, data set or code computes them again; `force` recomputes.
The client validates each result as it arrives and writes its entry atomically, so a run killed at
any moment loses only the trials still training, and workers need no access to the results folder.

One owner per key (normlib.owners): a trial another process of this run is training is waited for,
not trained again, so every trial of a run is trained once, whichever notebooks ask for it.

Executors (normlib.executors): in this process, local processes, or a Dask cluster. Every trial
runs with THREADS torch threads and its own random state (normlib.train.seeded_model), so its
History does not depend on the executor, the number of workers or a Dask worker's threads. Before
the first trial goes to a pool, every worker's environment (normlib code, torch version, kernel
backend, data fingerprint) is compared with this client's, and each trial checks it again on the
worker that runs it: a mismatch stops the run with one line naming the worker and what differs.

Progress (normlib.progress): a bar in the notebook and the status file the pipeline reads.
"""
import functools
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from normlib import executors, kernels, owners
from normlib.progress import Progress
from normlib.data import fingerprint
from normlib.paths import results_dir, write_atomic
from normlib.train import History, TrainConfig

THREADS = 1  # torch threads per trial, whatever runs it
TRAINER_FILES = ("norms.py", "weight_norm.py", "kernels.py", "models.py", "data.py", "train.py")  # and every normlib/**/*.cpp
PROBE_FILES = ("probes.py",)


# ----------------------------------------------------------------------------
# what a trial is


@dataclass(frozen=True)
class Trial:
    config: TrainConfig
    probe: str = ""           # "" or a name in normlib.probes.PROBES
    options: tuple = ()       # the probe's options as ((name, value), ...)
    model: str = "standard"   # a name in normlib.models.VARIANTS

    def to_dict(self):
        return {"config": self.config.to_dict(), "probe": self.probe, "options": dict(self.options),
                "model": self.model}

    @classmethod
    def from_dict(cls, d):
        return cls(TrainConfig.from_dict(d["config"]), d["probe"], _options(d["options"]), d["model"])


def _options(options):
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(options).items()))


def trial(config, probe="", model="standard", **options):
    """A Trial; options become a hashable, ordered tuple (lists become tuples)."""
    return Trial(config, probe, _options(options), model)


def as_trial(item):
    """A Trial from a Trial, a TrainConfig or a TrainConfig's dict."""
    if isinstance(item, Trial):
        return item
    return Trial(item if isinstance(item, TrainConfig) else TrainConfig.from_dict(item))


@dataclass
class Result:
    history: History
    probe: dict = field(default_factory=dict)
    ran_on: dict = field(default_factory=dict)  # worker, host, cpu, cores, threads, device, seconds
    cached: bool = False


# ----------------------------------------------------------------------------
# keys


def _source_files(names):
    here = Path(__file__).parent
    return [here / n for n in names] + sorted(here.rglob("*.cpp"))


@functools.lru_cache(maxsize=8)
def _digest(names, backend):
    h = hashlib.sha256()
    for path in _source_files(names):
        h.update(path.relative_to(Path(__file__).parent).as_posix().encode() + b"\0" + path.read_bytes())
    h.update(backend.encode())
    return h.hexdigest()[:16]


def code_version(probed=True):
    """Digest of the source a trial's result depends on: the trainer's files (TRAINER_FILES, the C++
    kernels), probes.py for a probed trial, and which implementation the custom layers use on CPU
    (normlib.kernels.backend(): the C++ kernels or the reference pairs)."""
    return _digest(TRAINER_FILES + (PROBE_FILES if probed else ()), kernels.backend())


def trial_key(t, device="cpu", threads=THREADS):
    """Hash of the trial, the device and threads it runs with, the data and the code."""
    t = as_trial(t)
    payload = {"trial": t.to_dict(), "device": device, "threads": threads, "data": fingerprint(),
               "code": code_version(bool(t.probe))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir(path=None):
    return Path(path) if path else results_dir() / "trials"


def load(path, t=None):
    """The Result stored at path (for trial t, if given), or None if absent, unreadable or another
    trial's: then it is computed again."""
    try:
        d = json.loads(Path(path).read_text())
        if t is not None and d["trial"] != json.loads(json.dumps(as_trial(t).to_dict())):  # as stored: tuples as lists
            return None
        return Result(History.from_dict(d["history"]), d["probe"], d["ran_on"], cached=True)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


# ----------------------------------------------------------------------------
# on the worker


def environment():
    """What every result depends on besides the trial, as this process sees it: normlib's code, torch,
    the kernel backend and the data (its fingerprint, or why the data cannot be used here)."""
    from normlib.data import DataError

    try:
        data = fingerprint()
    except DataError as e:
        data = f"unusable ({executors._first_line(e)})"
    return {"normlib code": code_version(), "torch": torch.__version__, "kernels": kernels.backend(), "data": data}


def machine():
    """Where this process runs: host, CPU model, logical cores, CUDA device."""
    from normlib.provenance import cpu_model

    return {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count() or 1,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def report(dask_worker=None):
    """A worker's environment and machine (run on every worker before the first trial, by Client.run), its
    name, and how many trials it runs at once (its threads; each trial uses THREADS torch threads)."""
    if dask_worker is not None:  # Client.run passes the worker to a function that takes dask_worker
        at_once, name = dask_worker.state.nthreads, str(dask_worker.name)  # `dask worker --name`, else Dask's
    else:
        at_once, name = 1, _worker_name()
    return {"environment": environment(),
            "machine": {"name": name, **machine(), "trials at once": at_once, "torch threads": THREADS}}


def differences(expected, found):
    """'' when the environments agree, else one phrase per difference."""
    return "; ".join(f"{k} {found.get(k)!s} (this client: {v!s})" for k, v in expected.items() if found.get(k) != v)


class WorkerMismatch(RuntimeError):
    """A worker whose environment differs from the client's; the message is one line."""


def _worker_name():
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()} (pid {os.getpid()})"


def run_job(job):
    """Runs where the trial runs: check the environment against the client's, train the trial with
    `threads` torch threads on `device`, and return its result as plain data."""
    from normlib import probes

    found = environment()
    diff = differences(job["expect"], found)
    if diff:
        raise WorkerMismatch(f"worker {_worker_name()}: {diff}")
    t = Trial.from_dict(job["trial"])
    saved = torch.get_num_threads()
    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    try:
        hist, probe = probes.run(t, device=job["device"])
    finally:
        torch.set_num_threads(saved)
    ran_on = {"worker": _worker_name(), **machine(), "threads": job["threads"], "device": job["device"],
              "seconds": round(time.perf_counter() - start, 3)}
    return {"history": hist.to_dict(), "probe": probe, "ran_on": ran_on}


# ----------------------------------------------------------------------------
# on the client


_CHECKED = set()  # executors (by identity of their pool) whose workers passed the check


def check_workers(executor):
    """Compare every worker's environment with this client's; PoolError naming the first worker that
    differs. Returns {worker: report}. Checked once per pool and process."""
    expect = environment()
    reports = executor.workers(report)
    for name, r in reports.items():
        diff = differences(expect, r["environment"])
        if diff:
            raise executors.PoolError(f"worker {name} ({r['machine']['host']}) differs from this client: {diff}; "
                                      f"start it from the same checkout, environment and data")
    return reports


def _device(t, executor_cuda):
    return ("cuda" if executor_cuda else "cpu") if t.config.device == "auto" else t.config.device


def run_trials(items, *, workers=0, scheduler=None, force=False, cache=None, progress=True):
    """Results for items (Trials, TrainConfigs or their dicts), in order: cached ones read back, the
    rest computed by executors.executor_for(workers, scheduler) and stored as they arrive. Identical
    trials in one call run once; a trial another process of this run is computing (it holds the key's
    lock) is waited for, not computed again (module docstring)."""
    trials = [as_trial(x) for x in items]
    if not trials:
        return []
    executor = executors.executor_for(workers, scheduler)
    cuda = executor.cuda() if any(t.config.device == "auto" for t in trials) else False
    devices = [_device(t, cuda) for t in trials]
    keys = [trial_key(t, d) for t, d in zip(trials, devices)]
    folder = cache_dir(cache)
    results = [None if force else load(folder / f"{k}.json", t) for k, t in zip(keys, trials)]
    todo = {}  # key -> indices still to compute
    for i, r in enumerate(results):
        if r is None:
            todo.setdefault(keys[i], []).append(i)
    if todo and executor.kind != "in-process":
        check_workers(executor)  # before any lock or entry is written: a refused pool leaves nothing behind
    bar = Progress(len(trials), len(trials) - sum(map(len, todo.values())), show=progress)
    since = time.time() if force else 0.0  # with force, only entries written during this call count
    try:
        while todo:
            ours = [k for k in todo if owners.claim(folder, k)]
            for k in ours:  # written by its previous owner between our first look and the claim
                if _settle(k, todo, trials, folder, results, since) is not None:
                    owners.release(folder, k)
                    bar.shared(1)
            ours = [k for k in ours if k in todo]
            if ours:
                _compute(ours, todo, trials, devices, executor, folder, results, bar)
            elif todo:
                _wait_for_others(todo, trials, folder, results, bar, since)
    finally:
        for k in todo:  # stopped early (an error, Ctrl-C): let another process take the trials over
            owners.release(folder, k)
        bar.close()
    return results


def _settle(key, todo, trials, folder, results, since=0.0):
    """The entry of `key` if it is in the cache now, written at `since` or later (its indices filled and
    removed from todo), else None."""
    path = folder / f"{key}.json"
    try:
        fresh = path.stat().st_mtime >= since
    except OSError:
        return None
    r = load(path, trials[todo[key][0]]) if fresh else None
    if r is not None:
        r.cached = False  # trained in this run, by another notebook
        for i in todo.pop(key):
            results[i] = r
    return r


def _wait_for_others(todo, trials, folder, results, bar, since=0.0):
    """Every key left in `todo` is another live process's: read their entries as they appear (trials shared
    with the notebook that trains them) and return once one of them is settled or given up without an entry
    (its owner gone: the caller claims it)."""
    while todo:
        settled = [k for k in list(todo) if _settle(k, todo, trials, folder, results, since) is not None]
        if settled:
            bar.shared(len(settled))
            return
        if any(owners.state(folder, k) in ("free", "stale") for k in todo):
            return  # given up or its owner gone: the caller claims it
        time.sleep(owners.WAIT_POLL)


def _compute(keys, todo, trials, devices, executor, folder, results, bar):
    """Compute the trials of `keys` (claimed by this process) on the executor; as each arrives, write its
    entry, give its key up and fill `results` (the key leaves `todo`)."""
    expect = environment()
    jobs = [{"trial": trials[todo[k][0]].to_dict(), "device": devices[todo[k][0]], "threads": THREADS,
             "expect": expect} for k in keys]
    resources = [{"GPU": 1} if job["device"] == "cuda" else None for job in jobs]
    for j, out in executor.map(run_job, jobs, keys=[f"trial-{k}" for k in keys], resources=resources):
        key = keys[j]
        t = trials[todo[key][0]]
        result = _accept(out, t)
        write_atomic(folder / f"{key}.json", json.dumps({"key": key, "trial": jobs[j]["trial"],
                                                          "device": jobs[j]["device"], **out}))
        owners.release(folder, key)
        indices = todo.pop(key)
        for i in indices:
            results[i] = result
        bar.update(len(indices), result.ran_on, key=key, kind=trial_kind(t))


def _accept(out, t):
    """The Result of a worker's output, checked: a History of this trial's config."""
    hist = History.from_dict(out["history"])
    if hist.config != t.config.to_dict():
        raise executors.PoolError(f"worker {out['ran_on'].get('worker')} returned the result of another trial")
    return Result(hist, out["probe"], out["ran_on"])


def run_configs(configs, **kwargs):
    """The Histories of run_trials for plain configs."""
    return [r.history for r in run_trials(configs, **kwargs)]


# ----------------------------------------------------------------------------
# progress


def trial_kind(t):
    """What a trial trains, for the cost chapter: its network (the arch, or a study's variant), with its
    probe, and "tuning rung" for a run of a part of its steps (max_steps)."""
    t = as_trial(t)
    parts = [t.config.arch if t.model == "standard" else t.model]
    if t.probe:
        parts.append(f"{t.probe} probe")
    if t.config.max_steps:
        parts.append("tuning rung")
    return ", ".join(parts)


# ----------------------------------------------------------------------------
# the trials of a build, as one archive


def export(path, cache=None):
    """Pack every cached trial (each file holds its trial's configuration, its result and where it ran)
    into one .tar.gz at `path`, under trials/; returns how many."""
    import tarfile

    files = sorted(cache_dir(cache).glob("*.json"))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f"trials/{f.name}")
    os.replace(tmp, path)
    return len(files)


def main(argv=None):
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m normlib.trials", description="The result cache of the trials.")
    ap.add_argument("--export", metavar="PATH.tar.gz", required=True,
                    help="pack every cached trial with its configuration into one archive")
    args = ap.parse_args(argv)
    folder = cache_dir()
    if not folder.is_dir():
        print(f"error: no trials in {folder}: run the pipeline (make report) first", file=sys.stderr)
        return 2
    n = export(args.export)
    print(f"wrote {n} trials from {folder} to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
