"""A grid of small trials through normlib.trials.run_trials on a pool of two worker processes against a
pool of one (Dask LocalClusters, started and warm, as the pipeline's pool), from an empty cache.
"""
import statistics
import sys
import tempfile
import time

import cloudpickle

from normlib import executors
from normlib.data import load_fashion_mnist
from normlib.train import TrainConfig, keep_freed_buffers
from normlib.trials import run_trials
from timing import result


def warm_worker(train_size):
    """Run on each worker of a pool before it is timed: what a worker pays once per run."""
    keep_freed_buffers()
    load_fashion_mnist(val_size=1000, train_size=train_size)


def bench_grid(trials, epochs, train_size):
    """Wall time of normlib.trials.run_trials on `trials` small MLP trials (batch norm, `epochs` on
    train_size images, a few seconds each) from an empty cache, on a Dask LocalCluster of one worker
    process and then of two (one torch thread each), as the pipeline runs every trial of a build on one
    pool started once: each pool is started and every worker warmed up (imports, the stored splits, a
    short trial) before the timed grid, so the ratio measures throughput, not start-up. Both give the same Histories (checked).
    Returns one result: rate = trials per second, ratio two / one."""
    configs = [TrainConfig(arch="mlp", norm="batch", epochs=epochs, train_size=train_size, val_size=1000, seed=s,
                           device="cpu") for s in range(trials)]
    warm = [TrainConfig(arch="mlp", norm="batch", max_steps=2, train_size=train_size, val_size=1000, seed=1000 + s,
                        device="cpu") for s in range(2)]
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import benchmarks/: ship warm_worker
    times, results = {}, {}
    for workers in (1, 2):
        cluster = executors.start_local_cluster(workers)
        try:
            with tempfile.TemporaryDirectory() as cache:
                pool = executors.Dask(cluster.scheduler_address)
                pool.workers(lambda: warm_worker(train_size))  # every worker: imports, kernels, the stored splits
                run_trials(warm[:workers], scheduler=cluster.scheduler_address, cache=cache, progress=False)
                start = time.perf_counter()
                results[workers] = run_trials(configs, scheduler=cluster.scheduler_address, cache=cache, progress=False)
                times[workers] = [time.perf_counter() - start]
        finally:
            executors.stop_local_cluster(cluster)
    same = all(a.history.step_loss == b.history.step_loss and a.history.test_acc == b.history.test_acc
               for a, b in zip(results[1], results[2]))
    per_trial = statistics.median(r.history.wall_time for r in results[1])
    note = (f"{trials} trials (MLP + batch norm, {epochs} epoch(s) on {train_size} images, {per_trial:.1f} s each "
            f"on one worker), empty cache, pools started and warm; reference: a pool of one worker; "
            f"identical results: {same}")
    res = result(times[2], times[1], 1.8, "trials/s", note, work=(trials, trials))
    res["identical_results"] = same
    return {"grid_two_workers_vs_one": res}
