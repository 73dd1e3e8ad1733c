"""Where trials run: one interface over three executors.

- InProcess: one job after the other in this process (a notebook's `workers: 1`);
- LocalProcesses: N spawned processes on this machine, which end when this process ends;
- Dask: the workers of a dask.distributed scheduler (`tcp://host:8786`): the pool the pipeline
  starts once for a whole run (a LocalCluster, `start_local_cluster`), or a real cluster named by
  the pipeline's --scheduler, a profile's `scheduler` key or DASK_SCHEDULER_ADDRESS.

Each executor maps a function over jobs and yields (index, result) as jobs finish (`map`), and
describes its workers by running a report function on each (`workers`). Workers only compute
and return: nothing here assumes a filesystem shared with them. `executor_for(workers, scheduler)`
picks one the way every notebook does: 1 in-process; otherwise the run's scheduler if there is one
(NORMLIB_SCHEDULER, set by the pipeline for its pool, or dask's scheduler-address config, i.e.
DASK_SCHEDULER_ADDRESS), else `workers` local processes (0: one per core).
"""
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import torch

CONNECT_TIMEOUT = 10  # seconds to reach a scheduler
WORKERS_TIMEOUT = 60  # seconds to wait for a scheduler's first worker


class PoolError(RuntimeError):
    """A scheduler or worker that cannot be used; the message is one line and says what to do."""


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def default_workers():
    """Local worker processes when a notebook asks for 0: NORMLIB_WORKERS, else one per core."""
    return int(os.environ.get("NORMLIB_WORKERS", 0)) or os.cpu_count() or 1


def scheduler_address(explicit=None):
    """The Dask scheduler trials go to: `explicit`, else NORMLIB_SCHEDULER (the pipeline's pool), else
    dask's `scheduler-address` config (DASK_SCHEDULER_ADDRESS); None for none."""
    if explicit:
        return explicit
    if os.environ.get("NORMLIB_SCHEDULER"):
        return os.environ["NORMLIB_SCHEDULER"]
    if os.environ.get("DASK_SCHEDULER_ADDRESS"):
        return os.environ["DASK_SCHEDULER_ADDRESS"]
    try:
        import dask
        return dask.config.get("scheduler-address", None)
    except ImportError:
        return None


def executor_for(workers=0, scheduler=None):
    """workers: 1 in this process; 0 the run's scheduler if any, else one local process per core;
    N > 1 the scheduler if any, else N local processes. scheduler: an address, or a Client."""
    if workers == 1 and scheduler is None:
        return InProcess()
    address = scheduler if scheduler is not None else scheduler_address()
    if address is not None:
        return Dask(address)
    return LocalProcesses(workers or default_workers())


# ----------------------------------------------------------------------------
# this process


class InProcess:
    kind = "in-process"

    def workers(self, report):
        return {"in-process": report()}

    def cuda(self):
        return torch.cuda.is_available()

    def map(self, fn, jobs, keys=None, resources=None):
        for i, job in enumerate(jobs):
            yield i, fn(job)


# ----------------------------------------------------------------------------
# local processes


def exit_with_parent(parent):
    """Pool initializer: end this worker once the process that started it is gone (a killed
    notebook or pipeline must not leave trials training in the background)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


class LocalProcesses:
    kind = "local processes"

    def __init__(self, n):
        self.n = n

    def workers(self, report):
        return {f"local process {i + 1}": report() for i in range(self.n)}  # same interpreter, same files

    def cuda(self):
        return torch.cuda.is_available()

    def map(self, fn, jobs, keys=None, resources=None):
        jobs = list(jobs)
        if len(jobs) <= 1 or self.n == 1:  # no start-up cost for a single job
            yield from InProcess().map(fn, jobs)
            return
        with ProcessPoolExecutor(min(self.n, len(jobs)), mp_context=get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                yield futures[future], future.result()


# ----------------------------------------------------------------------------
# Dask


_CLIENTS = {}  # address -> Client, one per process


def connect(address):
    """A distributed Client for the scheduler at `address` (reused within a process); PoolError with
    the address when it cannot be reached."""
    from distributed import Client

    if not isinstance(address, str):
        return address  # a Client already
    client = _CLIENTS.get(address)
    if client is not None and client.status == "running":
        return client
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise PoolError(f"cannot reach the Dask scheduler at {address} ({_first_line(e)}): start it "
                        f"(`dask scheduler`, then `dask worker {address}`; see the README), or run without "
                        f"a scheduler") from None
    _CLIENTS[address] = client
    return client


def stop_local_cluster(cluster):
    """Close this process's client of a LocalCluster, then the cluster (a client left open tries to
    reconnect for 10 s and logs errors once its scheduler is gone)."""
    client = _CLIENTS.pop(cluster.scheduler_address, None)
    if client is not None:
        client.close()
    cluster.close()


class Dask:
    kind = "Dask"

    def __init__(self, address):
        self.client = connect(address)
        self.address = address if isinstance(address, str) else self.client.scheduler.address

    def workers(self, report):
        """{worker address: report()} run on every worker, once at least one has joined."""
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
        except (TimeoutError, OSError):
            raise PoolError(f"the Dask scheduler at {self.address} has no workers after {WORKERS_TIMEOUT} s: "
                            f"start some with `dask worker {self.address}`") from None
        return self.client.run(report)

    def cuda(self):
        """Whether any worker offers a GPU resource (`dask worker --resources GPU=1`)."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return any(w.get("resources", {}).get("GPU", 0) >= 1 for w in info.values())

    def map(self, fn, jobs, keys=None, resources=None):
        """Submit every job (with its key, so that two notebooks asking for the same trial at once share
        one computation; resources e.g. {"GPU": 1} per job); a job whose worker dies is retried on
        another by the scheduler."""
        from distributed import as_completed as completed

        jobs = list(jobs)
        futures = {}
        for i, job in enumerate(jobs):
            extra = {"key": keys[i]} if keys else {}
            if resources and resources[i]:
                extra["resources"] = resources[i]
            futures[self.client.submit(fn, job, pure=False, **extra)] = i
        for future in completed(futures, loop=self.client.loop):  # this client's loop: it need not be the default
            yield futures[future], future.result()


def start_local_cluster(n_workers=None, threads=1):
    """A LocalCluster of n_workers processes (default: one per core) with `threads` threads each, without
    the workers' profiler; its workers end when this process ends."""
    import logging

    import dask
    from distributed import LocalCluster

    # the workers' statistical profiler samples every running thread each 10 ms: about a tenth of a trial's time
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=n_workers or default_workers(), threads_per_worker=threads, processes=True,
                            dashboard_address=":0", silence_logs=logging.ERROR)
