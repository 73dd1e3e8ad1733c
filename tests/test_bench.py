"""Smoke test of benchmarks/bench.py: it runs and writes every measurement. No timing thresholds:
the benchmark measures this machine, it does not judge it (its targets are printed, not asserted)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from normlib import provenance
from normlib.data import verify
from normlib.paths import data_dir

REPO = Path(__file__).resolve().parent.parent
KEYS = {"train_vs_torchvision", "train_vs_bare", "batch_norm_mlp", "layer_norm_mlp", "batch_norm_cnn",
        "layer_norm_cnn", "layer_norm_cnn_vs_groupnorm", "mlp_fraction_of_peak", "cnn_fraction_of_peak",
        "grid_two_workers_vs_one", "mlp_evals_2_vs_8", "cnn_evals_2_vs_8", "halving_vs_grid", "one_owner_vs_two",
        "cnn_first_conv"}
NUMBERS = ("ours", "reference", "ratio", "ratio_of_medians", "target")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(bool(verify(data_dir())), reason="Fashion-MNIST is not prepared (run `make data`)")
def test_quick_benchmark_writes_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--repeats", "1",
                           "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=290)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == KEYS
    for name, r in report["results"].items():
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0 for k in NUMBERS), (name, r)
        assert isinstance(r["holds"], bool) and r["target_op"] in (">=", "<=")
        assert f"{name}: ours " in proc.stdout  # one printed line per measurement
    machine = report["machine"]
    assert machine["device"] in ("cpu", "cuda") and machine["torch_threads"] >= 1 and machine["cpu"]
    for arch in ("mlp", "cnn"):  # FLOP/s against the matmul peak for both networks, at the default widths
        assert report["results"][f"{arch}_fraction_of_peak"]["flops_per_example"] > 0
        assert 0 < context_share(report, arch) < 1
    assert report["results"]["halving_vs_grid"]["ratio"] < 1  # a count from the protocol, not a timing
    floor = report["python_function_floor"]
    assert all(math.isfinite(floor[k]) and floor[k] > 0 for k in ("copy_function_seconds", "of_batch_norm", "of_layer_norm"))
    assert report["results"]["grid_two_workers_vs_one"]["identical_results"] is True  # whichever executor ran them
    context = report["context"]
    assert all(math.isfinite(context[k]) and context[k] > 0 for k in
               ("builtin_layer_norm_over_groupnorm", "mlp_matmul_ceiling_examples_per_s", "ceiling_vs_torchvision",
                "matmuls_only_vs_torchvision"))
    batched = context["seeds_batched_vs_separate"]  # the measured case against batching seeds into one model
    assert set(batched) == {"conv2", "fc3"} and all(math.isfinite(r) and r > 0 for r in batched.values())
    assert provenance.batched_text(batched) in proc.stdout  # printed in the cost chapter's words
    assert not list(tmp_path.glob(".*.tmp"))  # the JSON was written atomically


def context_share(report, arch):
    return report["context"]["step_in_matmuls"][arch]


def test_each_measurement_has_its_own_file():
    """benchmarks/: one file per measurement, each opening with what it measures; bench.py runs them."""
    import ast
    docs = {p.stem: ast.get_docstring(ast.parse(p.read_text())) for p in (REPO / "benchmarks").glob("*.py")}
    assert set(docs) == {"bench", "timing", "training", "layers", "peak", "grid", "profiles", "levers"}
    assert all(docs.values()), [name for name, doc in docs.items() if not doc]
