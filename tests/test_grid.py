"""Tests of normlib.grid: trials cached under a key hashing config, data fingerprint and code
version; a re-run trains nothing; atomic writes (leftover temp files and damaged entries are
ignored and recomputed); force; worker processes, a Dask cluster and in-process runs give identical
Histories; a grid killed in the middle completes on the next run with the same results.
Plus the acceptance run of the issue: one-epoch MLPs reach 84% test accuracy with every norm."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from normlib import grid, paths
from normlib.train import TrainConfig

TINY = dict(train_size=256, val_size=100, hidden=(16,), batch_size=64, epochs=1, device="cpu")
CONFIGS = [TrainConfig(**TINY, norm=norm, seed=seed)
           for norm, seed in [("none", 0), ("batch", 0), ("layer", 1), ("weight", 0)]]


def comparable(histories):
    """Histories as JSON strings without wall_time (NaN-safe), for exact comparison."""
    return [json.dumps({k: v for k, v in h.to_dict().items() if k != "wall_time"}) for h in histories]


def entries(cache):
    """Finished cache entries: {name: mtime_ns}."""
    return {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json") if not p.name.startswith(".")}


@pytest.fixture
def count_training(monkeypatch):
    """Count in-process trainings (run_grid with workers=1 trains in this process)."""
    calls = []
    train = grid.train
    monkeypatch.setattr(grid, "train", lambda config: calls.append(config) or train(config))
    return calls


@pytest.fixture
def no_training(monkeypatch):
    def fail(config):
        raise AssertionError(f"trained {config} although its result is cached")
    monkeypatch.setattr(grid, "train", fail)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """CONFIGS run in-process, uninterrupted."""
    return grid.run_grid(CONFIGS, workers=1, cache=tmp_path_factory.mktemp("baseline"), progress=False)


# ----------------------------------------------------------------------------
# keys

def test_key_hashes_config_data_and_code(monkeypatch):
    c = CONFIGS[0]
    key = grid.trial_key(c)
    assert key == grid.trial_key(TrainConfig.from_dict(c.to_dict()))  # stable
    assert len({grid.trial_key(x) for x in CONFIGS}) == len(CONFIGS)
    assert grid.trial_key(TrainConfig(**{**TINY, "lr": 0.0500001})) != grid.trial_key(TrainConfig(**TINY))
    monkeypatch.setattr(grid, "fingerprint", lambda: "other-data")
    assert grid.trial_key(c) != key
    monkeypatch.undo()
    monkeypatch.setattr(grid, "code_version", lambda: "other-code")
    assert grid.trial_key(c) != key


def test_code_version_hashes_the_training_code():
    assert set(grid.CODE_FILES) >= {"norms.py", "kernels.py", "csrc/norms.cpp", "csrc/pooling.cpp", "models.py", "data.py",
                                    "train.py"}
    import hashlib
    from pathlib import Path
    h = hashlib.sha256()
    for name in grid.CODE_FILES:
        h.update((Path(grid.__file__).parent / name).read_bytes())
    h.update(b"cpp")  # the custom layers' implementation on CPU (NORMLIB_KERNELS, default cpp)
    assert grid.code_version() == h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# the cache

def test_rerun_reuses_finished_trials(tmp_path, count_training, monkeypatch, baseline):
    first = grid.run_grid(CONFIGS, workers=1, cache=tmp_path, progress=False)
    assert len(count_training) == len(CONFIGS)
    assert comparable(first) == comparable(baseline)
    files = entries(tmp_path)
    assert sorted(files) == sorted(f"{grid.trial_key(c)}.json" for c in CONFIGS)
    monkeypatch.setattr(grid, "train", lambda config: pytest.fail("trained a cached trial"))
    again = grid.run_grid(CONFIGS, workers=1, cache=tmp_path, progress=False)
    assert [h.to_dict() for h in again] == [h.to_dict() for h in first]  # wall_time too: read back, not rerun
    assert entries(tmp_path) == files  # nothing rewritten
    assert [h.config for h in again] == [c.to_dict() for c in CONFIGS]  # same order


def test_only_missing_trials_run(tmp_path, count_training, baseline):
    grid.run_grid(CONFIGS, workers=1, cache=tmp_path, progress=False)
    (tmp_path / f"{grid.trial_key(CONFIGS[2])}.json").unlink()
    count_training.clear()
    again = grid.run_grid(CONFIGS, workers=1, cache=tmp_path, progress=False)
    assert count_training == [CONFIGS[2]]
    assert comparable(again) == comparable(baseline)


def test_force_recomputes(tmp_path, count_training, baseline):
    grid.run_grid(CONFIGS[:2], workers=1, cache=tmp_path, progress=False)
    count_training.clear()
    forced = grid.run_grid(CONFIGS[:2], workers=1, cache=tmp_path, force=True, progress=False)
    assert count_training == CONFIGS[:2]
    assert comparable(forced) == comparable(baseline[:2])


def test_identical_configs_run_once(tmp_path, count_training):
    a, b = grid.run_grid([CONFIGS[0], CONFIGS[0].to_dict()], workers=1, cache=tmp_path, progress=False)
    assert len(count_training) == 1 and a.to_dict() == b.to_dict()


def test_leftover_temp_file_is_ignored(tmp_path, count_training, baseline):
    key = grid.trial_key(CONFIGS[0])
    (tmp_path / f".{key}.json.abc123.tmp").write_text(json.dumps(baseline[1].to_dict()))  # a killed write
    (h,) = grid.run_grid(CONFIGS[:1], workers=1, cache=tmp_path, progress=False)
    assert len(count_training) == 1
    assert comparable([h]) == comparable(baseline[:1])


@pytest.mark.parametrize("damage", ["truncated", "empty", "not json", "not utf-8", "a list", "null", "no config"])
def test_damaged_entry_is_recomputed(tmp_path, count_training, baseline, damage):
    grid.run_grid(CONFIGS[:1], workers=1, cache=tmp_path, progress=False)
    path = tmp_path / f"{grid.trial_key(CONFIGS[0])}.json"
    text = path.read_text()
    path.write_bytes({"truncated": text[:len(text) // 2].encode(), "empty": b"", "not json": b"<html>",
                      "not utf-8": b"\xff\xfe\x00", "a list": b"[1, 2]", "null": b"null",
                      "no config": b'{"step_loss": [1.0]}'}[damage])
    count_training.clear()
    (h,) = grid.run_grid(CONFIGS[:1], workers=1, cache=tmp_path, progress=False)
    assert len(count_training) == 1
    assert comparable([h]) == comparable(baseline[:1])
    assert comparable([grid.load_cached(path)]) == comparable(baseline[:1])  # the entry was rewritten


def test_write_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "entry.json"
    paths.write_atomic(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}' and [p.name for p in path.parent.iterdir()] == ["entry.json"]

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)  # dies between writing the temp file and renaming it
    with pytest.raises(OSError):
        paths.write_atomic(path, '{"a": 2}')
    assert path.read_text() == '{"a": 1}'  # the old entry is intact
    assert [p.name for p in path.parent.iterdir()] == ["entry.json"]  # and no temp file is left


# ----------------------------------------------------------------------------
# executors: worker processes, Dask, in-process give identical Histories

def test_worker_processes_match_in_process(tmp_path, baseline):
    hs = grid.run_grid(CONFIGS, workers=2, cache=tmp_path, progress=False)
    assert comparable(hs) == comparable(baseline)
    assert sorted(entries(tmp_path)) == sorted(f"{grid.trial_key(c)}.json" for c in CONFIGS)


def test_dask_cluster_matches_in_process(tmp_path, baseline):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) \
            as cluster, distributed.Client(cluster.scheduler_address) as client:
        hs = grid.run_grid(CONFIGS, scheduler=client, cache=tmp_path, progress=False)
        assert comparable(hs) == comparable(baseline)
        assert len(entries(tmp_path)) == len(CONFIGS)
        # a scheduler address works too (run_grid opens and closes its own client)
        again = grid.run_grid(CONFIGS[:2], scheduler=cluster.scheduler_address, cache=tmp_path, force=True,
                              progress=False)
        assert comparable(again) == comparable(baseline[:2])


# The grid of CONFIGS in a child process. The second trial's atomic rename is held back so that the
# kill below always lands in the middle of the grid, after trial 1 is stored and while trial 2's
# result exists only as a temp file (the worst moment for the cache).
CHILD = """
import json, os, sys, time
from normlib import grid
from normlib.train import TrainConfig
replace, renames = os.replace, []
def slow_replace(src, dst):
    renames.append(dst)
    if len(renames) == 2:
        time.sleep(300)
    replace(src, dst)
os.replace = slow_replace
configs = [TrainConfig.from_dict(c) for c in json.loads(sys.argv[1])]
grid.run_grid(configs, workers=1, cache=sys.argv[2], progress=False)
"""


def test_killed_grid_completes_with_identical_results(tmp_path, count_training, baseline):
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps([c.to_dict() for c in CONFIGS]), str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (entries(cache) and list(cache.glob(".*.tmp"))):
            assert child.poll() is None, f"the grid ended early: {child.communicate()[1].decode()[-2000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    done = entries(cache)
    assert len(done) == 1 and len(list(cache.glob(".*.tmp"))) == 1  # trial 1 stored, trial 2 half-way

    resumed = grid.run_grid(CONFIGS, workers=1, cache=cache, progress=False)
    assert len(count_training) == len(CONFIGS) - 1  # the stored trial was reused
    assert all(entries(cache)[name] == mtime for name, mtime in done.items())
    assert comparable(resumed) == comparable(baseline)
    assert all(grid.load_cached(cache / name) is not None for name in entries(cache))


# ----------------------------------------------------------------------------
# acceptance (issue "Done when"): 8 full-data one-epoch MLP runs, default TrainConfig

@pytest.mark.slow
def test_one_epoch_mlp_reaches_84_percent_with_every_norm(tmp_path):
    configs = [TrainConfig(norm=norm, impl=impl, device="cpu")
               for norm in ("none", "batch", "layer", "weight") for impl in ("custom", "torch")]
    hs = grid.run_grid(configs, workers=2, cache=tmp_path, progress=False)
    acc = {(c.norm, c.impl): h.test_acc for c, h in zip(configs, hs)}
    print("test accuracy after one epoch:", {f"{n}/{i}": round(a, 4) for (n, i), a in acc.items()})
    for c, h in zip(configs, hs):
        assert h.config["train_size"] == 0 and len(h.step_loss) == 55_000 // 128  # the full training set
        assert not h.diverged
    assert all(a >= 0.84 for a in acc.values()), acc
