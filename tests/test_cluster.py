"""A real Dask cluster on the loopback interface: `dask scheduler` and `dask worker` processes started
as a user would start them, each worker in its own working directory with its own data root and
results folder (no access to the client's), the client in this process.

- a small grid of plain and probed trials gives the same results as a local run, and the client's
  cache holds every trial (the workers wrote nothing);
- a worker killed in the middle of a grid: its trial is retried on the other worker, the results
  are the same, and no finished trial is lost;
- a worker that runs other normlib code is refused, by name, before any trial;
- the pipeline sends a notebook's trials to the cluster with --scheduler and names the workers in
  its manifest.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import copy_repo, run_cli, tail
from normlib import data, executors, provenance, trials
from normlib.paths import data_dir
from normlib.protocol import Protocol
from normlib.train import TrainConfig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DASK = Path(sys.executable).with_name("dask")
SMALL = dict(train_size=1024, val_size=200, hidden=(32,), batch_size=64, epochs=1, device="cpu")
CONFIGS = [TrainConfig(**SMALL, norm=norm, seed=seed) for norm in ("none", "batch", "layer") for seed in (0, 1)]
PROBED = [trials.trial(replace(CONFIGS[2], activation="sigmoid"), "drift", every=4, probe_size=100, layer="act1"),
          trials.trial(CONFIGS[1], "layer_grads")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comparable(results):
    """Each result's history (without its wall time) and probe record, as JSON."""
    out = []
    for r in results:
        h = {k: v for k, v in r.history.to_dict().items() if k != "wall_time"}
        out.append(json.dumps({"history": h, "probe": r.probe}, sort_keys=True))
    return out


class Cluster:
    """A `dask scheduler` and `dask worker` processes, each in its own folder (and process group)."""

    def __init__(self, base):
        self.base, self.port = Path(base), free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs, self.logs = {}, {}
        self.start("scheduler", [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                 "--no-dashboard"])
        self.wait_for(lambda: self._reachable(), "the scheduler to listen")

    def _reachable(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def start(self, name, cmd, env=None, cwd=None):
        folder = self.base / name
        folder.mkdir(parents=True, exist_ok=True)
        self.logs[name] = open(folder / "log.txt", "w")
        self.procs[name] = subprocess.Popen(cmd, cwd=cwd or folder, env=env or os.environ.copy(), stdout=self.logs[name],
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def add_worker(self, name, pythonpath=REPO, nthreads=1):
        """A worker with its own working directory, data root (prepared there: decompressed from Debian's
        package, or copied) and results folder, importing normlib from `pythonpath`."""
        folder = self.base / name
        root = prepare_data_root(folder / "data")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NORMLIB_", "DASK_"))}
        env.update(PYTHONPATH=str(pythonpath), NORMLIB_DATA=str(root), NORMLIB_RESULTS=str(folder / "results"))
        before = self.n_workers()
        self.start(name, [str(DASK), "worker", self.address, "--nworkers", "1", "--nthreads", str(nthreads),
                          "--no-dashboard", "--name", name], env=env, cwd=folder)
        self.wait_for(lambda: self.n_workers() > before, f"worker {name} to join")

    def n_workers(self):
        try:
            return len(executors.connect(self.address).scheduler_info(n_workers=-1)["workers"])
        except executors.PoolError:
            return 0

    def wait_for(self, condition, what, timeout=120):
        end = time.monotonic() + timeout
        while not condition():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            assert not dead, f"{dead} exited before {what}: {self.log(dead[0])}"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.2)

    def log(self, name):
        return (self.base / name / "log.txt").read_text()[-3000:]

    def kill(self, name):
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs.pop(name).wait()

    def close(self):
        client = executors._CLIENTS.pop(self.address, None)
        if client is not None:
            client.close()
        for name in list(self.procs):
            self.kill(name)
        for f in self.logs.values():
            f.close()


def prepare_data_root(root):
    """Prepare Fashion-MNIST in root the way a fresh worker machine does: from Debian's package if it is
    installed, else a copy of this machine's verified files."""
    if all((data.DEBIAN_DIR / f"{n}.gz").exists() for n in data.SHA256):
        data.prepare(root)
    else:
        raw = data._raw_dir(root)
        raw.mkdir(parents=True, exist_ok=True)
        for name in data.SHA256:
            shutil.copyfile(data._raw_dir(data_dir()) / name, raw / name)
    return root


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The grid run in this process: the reference results."""
    return trials.run_trials(CONFIGS + PROBED, workers=1, cache=tmp_path_factory.mktemp("local"), progress=False)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "cluster")
    c.add_worker("worker-a")
    c.add_worker("worker-b")
    yield c
    c.close()


def entries(cache):
    return sorted(p.name for p in Path(cache).glob("*.json"))


def test_a_grid_on_the_cluster_matches_a_local_run(cluster, tmp_path, local):
    cache = tmp_path / "client-results" / "trials"
    results = trials.run_trials(CONFIGS + PROBED, scheduler=cluster.address, cache=cache, progress=False)
    assert comparable(results) == comparable(local)
    assert len(entries(cache)) == len(CONFIGS + PROBED)  # written by the client, as results arrived
    for worker in ("worker-a", "worker-b"):  # the workers wrote no result anywhere
        assert not (cluster.base / worker / "results").exists()
    assert {r.ran_on["worker"] for r in results} == set(executors.connect(cluster.address)
                                                          .scheduler_info(n_workers=-1)["workers"])
    assert all(r.ran_on["threads"] == 1 and r.ran_on["host"] == socket.gethostname() for r in results)
    again = trials.run_trials(CONFIGS + PROBED, scheduler=cluster.address, cache=cache, progress=False)
    assert all(r.cached for r in again) and comparable(again) == comparable(local)


def test_a_worker_with_two_threads_gives_the_same_results(tmp_path, local):
    c = Cluster(tmp_path / "cluster")
    try:
        c.add_worker("worker-threads", nthreads=2)  # two trials at once in one process
        results = trials.run_trials(CONFIGS + PROBED, scheduler=c.address, cache=tmp_path / "cache", progress=False)
        described = trials.check_workers(executors.Dask(c.address))
    finally:
        c.close()
    assert comparable(results) == comparable(local)
    assert [(r["machine"]["name"], r["machine"]["trials at once"]) for r in described.values()] == [("worker-threads", 2)]


def test_a_worker_killed_mid_grid_changes_nothing(cluster, tmp_path, local):
    cache = tmp_path / "trials"
    configs = [replace(c, epochs=3) for c in CONFIGS]  # long enough to kill a worker in the middle
    reference = trials.run_trials(configs, workers=1, cache=tmp_path / "reference", progress=False)
    out = {}
    runner = threading.Thread(target=lambda: out.setdefault("results", trials.run_trials(
        configs, scheduler=cluster.address, cache=cache, progress=False)))
    runner.start()
    cluster.wait_for(lambda: len(entries(cache)) >= 1, "the first trial to finish")
    stored = {name: (cache / name).stat().st_mtime_ns for name in entries(cache)}
    cluster.kill("worker-a")
    runner.join(timeout=600)
    assert not runner.is_alive() and "results" in out, "the grid did not finish after a worker died"
    assert comparable(out["results"]) == comparable(reference)
    assert len(entries(cache)) == len(configs)
    assert all((cache / name).stat().st_mtime_ns == t for name, t in stored.items())  # nothing finished was redone


def test_a_worker_with_other_code_is_refused_by_name(tmp_path):
    other = copy_repo(tmp_path / "other-checkout")
    with open(other / "normlib" / "train.py", "a") as f:
        f.write("\n# a change that is not in the client's checkout\n")
    c = Cluster(tmp_path / "cluster")
    try:
        c.add_worker("stale-worker", pythonpath=other)
        with pytest.raises(executors.PoolError) as e:
            trials.run_trials(CONFIGS[:1], scheduler=c.address, cache=tmp_path / "cache", progress=False)
    finally:
        c.close()
    message = str(e.value)
    assert "\n" not in message and "normlib code" in message and "differs from this client" in message
    assert not (tmp_path / "cache").exists()


def test_the_pipeline_sends_trials_to_the_cluster_and_names_the_workers(cluster, tmp_path):
    root = copy_repo(tmp_path / "repo")
    results = tmp_path / "results"
    proc = run_cli(root, "--profile", "quick", "--only", "step1_bn_training", "--no-book", "--scheduler",
                   cluster.address, "--set", "train_size=640", "--set", "val_size=320", results=results)
    assert proc.returncode == 0, tail(proc)
    assert f"trials run on the Dask scheduler at {cluster.address}" in proc.stdout
    manifest = json.loads((results / "run_manifest.json").read_text())
    assert manifest["pool"]["scheduler"] == cluster.address and len(manifest["pool"]["workers"]) == 2
    assert sorted(w["name"] for w in manifest["pool"]["workers"].values()) == ["worker-a", "worker-b"]  # --name
    assert list(provenance.pool_table(manifest)["name"].sort_values()) == ["worker-a", "worker-b"]  # procedure page
    # the client's cache holds exactly the notebook's trials: tuning, primary and confirmation runs
    record = json.loads((results / "steps" / "step1_bn_training.json").read_text())
    proto, norms = Protocol.from_params(record["protocol"]), record["norms"]
    lrs = {(r["arch"], r["norm"]): r["lr"] for r in record["lrs"]}
    tuning = [proto.config(r["arch"], r["norm"], r["lr"], seed, budget=r["budget"]) for r in record["rungs"]
              for seed in proto.tuning_seeds]  # every rung of successive halving, at its share of the steps
    assert tuning and {r["budget"] for r in record["rungs"]} == set(proto.tuning_budgets)
    planned = tuning + proto.runs(norms, lrs) + proto.runs(norms, lrs, "confirm")
    expected = {json.dumps(c.to_dict(), sort_keys=True) for c in planned}
    cached = [json.loads((results / "trials" / name).read_text()) for name in entries(results / "trials")]
    assert len(cached) == len(expected) > 0
    assert {json.dumps(trials.Trial.from_dict(c["trial"]).config.to_dict(), sort_keys=True) for c in cached} == expected
    for worker in ("worker-a", "worker-b"):
        assert not (cluster.base / worker / "results").exists()
