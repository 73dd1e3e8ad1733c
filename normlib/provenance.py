"""What ran, with what, on what: the run manifest, software versions and hardware, captured
when a notebook runs, so that the report states its own setup (as airbench states its
results with the setup that produced them).

The manifest is written by normlib.pipeline before any notebook executes, at
results/run_manifest.json: {"profile", "description", "started", "overrides",
"notebooks": {name: {"injected": {param: value}, "declared": {param: default source}}}, ...}.
"""
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from normlib.paths import ROOT, executed_dir, notebooks_dir, results_dir

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "jupyter-book", "myst-nb",
            "papermill")


def software_versions():
    """{name: version} of Python and PACKAGES as installed in the running environment."""
    return {"python": platform.python_version(), **{p: importlib.metadata.version(p) for p in PACKAGES}}


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware():
    """The machine this kernel runs on: CPU model, logical cores, torch's threads, RAM, CUDA device."""
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        ram_gb = float("nan")
    return {"cpu_model": cpu_model(), "n_cores": os.cpu_count() or 1, "torch_threads": torch.get_num_threads(),
            "ram_gb": ram_gb, "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "os": platform.platform()}


def load_manifest(path=None):
    """The pipeline's run manifest, or None when there is none (e.g. a notebook run on its own)."""
    try:
        return json.loads(Path(path or results_dir() / "run_manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _injected(entry):
    return entry.get("injected", {}) if "injected" in entry or "declared" in entry else entry


def manifest_applies(manifest, notebook, params):
    """Whether `manifest` describes this execution of `notebook`: it lists the notebook, and every value
    it injected into it equals the value the notebook runs with (params) - a stale manifest left by an
    earlier run usually fails this."""
    entry = (manifest or {}).get("notebooks", {}).get(notebook)
    return entry is not None and all(params.get(k) == v for k, v in _injected(entry).items())


def reused_note(manifest):
    """A sentence naming the notebooks the pipeline did not execute again because they were up to
    date (their outputs come from an earlier run), or "" when it executed them all."""
    reused = {n: e["up_to_date_since"] for n, e in manifest.get("notebooks", {}).items()
              if isinstance(e, dict) and e.get("up_to_date_since")}
    if not reused:
        return ""
    return (" Unchanged since an earlier run (same source, parameters, code, data and software), and so "
            "not executed again: " + ", ".join(f"{n} (executed {t})" for n, t in reused.items()) + ".")


def toc_order():
    """Notebook names in book order (_toc.yml), for those whose source exists."""
    from normlib.pipeline.book import toc_notebooks
    return [n for n in toc_notebooks(ROOT) if (notebooks_dir() / f"{n}.ipynb").exists()]


def notebook_parameters(manifest=None):
    """{notebook: DataFrame(parameter, value, set by, meaning)}: the parameters each notebook of a run
    executed with. With a manifest: the notebooks it lists, with the values it injected (set by "run")
    and the declared defaults otherwise; without one: every notebook's defaults. Defaults and meanings
    are read from the notebook sources' parameters cells (papermill.inspect_notebook)."""
    import papermill
    from papermill.translators import PythonTranslator

    names = list(manifest["notebooks"]) if manifest else toc_order()
    tables = {}
    for name in names:
        injected = _injected(manifest["notebooks"][name]) if manifest else {}
        source = notebooks_dir() / f"{name}.ipynb"
        declared = papermill.inspect_notebook(str(source)) if source.exists() else {}
        rows = [{"parameter": p, "value": PythonTranslator.translate(injected[p]) if p in injected else d["default"],
                 "set by": "run" if p in injected else "default", "meaning": d["help"]}
                for p, d in declared.items()]
        rows += [{"parameter": p, "value": PythonTranslator.translate(v), "set by": "run", "meaning": ""}
                 for p, v in injected.items() if p not in declared]
        if rows:
            tables[name] = pd.DataFrame(rows)
    return tables


# ----------------------------------------------------------------------------
# cost: how long the notebooks took, and the benchmark's measurements (the cost appendix)


def notebook_times(manifest=None, exclude=()):
    """One row per notebook of the book (in order, those in `exclude` left out): the seconds its last
    execution took and when it ran (recorded by the pipeline in the executed notebook's metadata),
    and what this run did with it: "executed", "reused" (up to date), or "not in this run"."""
    rows = []
    listed = (manifest or {}).get("notebooks", {})
    for name in toc_order():
        if name in exclude:
            continue
        try:
            meta = json.loads((executed_dir() / f"{name}.ipynb").read_text()).get("metadata", {}).get("normlab", {})
        except (OSError, ValueError):
            meta = {}
        entry = listed.get(name)
        status = "not in this run" if not isinstance(entry, dict) else (
            "reused" if entry.get("up_to_date_since") else "executed")
        rows.append({"notebook": name, "seconds": float(meta.get("seconds", float("nan"))),
                     "executed at": meta.get("executed") or "never", "this run": status})
    return pd.DataFrame(rows, columns=["notebook", "seconds", "executed at", "this run"])


def span_minutes(times):
    """Wall-clock minutes from the first start to the last end of the notebooks in `times` (rows of
    notebook_times with a start time): notebooks run side by side, so this is less than their sum."""
    start = pd.to_datetime(times["executed at"], errors="coerce", utc=True, format="ISO8601")
    end = start + pd.to_timedelta(times["seconds"], unit="s")
    if start.isna().all():
        return float("nan")
    return float((end.max() - start.min()).total_seconds()) / 60


def load_benchmark(path=None):
    """The numbers benchmarks/bench.py wrote (results/benchmark.json), or None when it has not run."""
    try:
        report = json.loads(Path(path or results_dir() / "benchmark.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("results"), dict) else None


def benchmark_table(report):
    """One row per benchmark measurement: ours, the reference, the ratio, the target and whether it held."""
    rows = [{"measurement": name, "ours": r["ours"], "reference": r["reference"], "unit": r.get("unit", ""),
             "ratio": r["ratio"], "target": f"{r['target_op']} {r['target']:g}",
             "holds": "yes" if r["holds"] else "no", "what": r.get("note", "")}
            for name, r in report["results"].items()]
    return pd.DataFrame(rows)



def run_values(manifest, notebook):
    """{parameter: value} a notebook ran with in the run the manifest describes: the values the pipeline
    injected, and the notebook's declared defaults (its parameters cell, read as literals) for the rest."""
    import ast

    import papermill

    declared = papermill.inspect_notebook(str(notebooks_dir() / f"{notebook}.ipynb"))
    values = {name: ast.literal_eval(d["default"]) for name, d in declared.items()}
    entry = (manifest or {}).get("notebooks", {}).get(notebook)
    return {**values, **(_injected(entry) if entry else {})}


def pool_table(manifest):
    """The workers of the run's pool (manifest["pool"]): one row per worker (address and name) with its host, CPU, cores and
    the versions it was checked against; empty when no notebook ran trials in this run."""
    pool = (manifest or {}).get("pool") or {}
    rows = [{"worker": name, "name": w.get("name"), "host": w.get("host"), "cpu": w.get("cpu"), "cores": w.get("cores"),
             "trials at once": w.get("trials at once"), "torch threads per trial": w.get("torch threads"),
             "CUDA": w.get("cuda"), "torch": w.get("torch"), "kernels": w.get("kernels"),
             "normlib code": w.get("normlib code")} for name, w in pool.get("workers", {}).items()]
    return pd.DataFrame(rows)


def _status_files(results=None):
    """{notebook: its status file of the last run} (results/progress/<notebook>.json, written by its trials)."""
    out = {}
    for path in sorted(Path(results or results_dir()).glob("progress/*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def trials_by_notebook(results=None):
    """Per notebook of the last run: trials total, read from the cache, trained, shared (trained by another
    notebook of the run, which this one waited for), and where they trained."""
    rows = []
    for name, s in _status_files(results).items():
        rows.append({"notebook": name, "trials": s["total"], "from the cache": s["cached"], "trained": s["trained"],
                     "shared with another notebook": s.get("shared", 0),
                     "trained on": ", ".join(f"{h} ({n})" for h, n in s["hosts"].items()),
                     "training minutes": round(s["train_seconds"] / 60, 1)})
    return pd.DataFrame(rows)


def trials_by_kind(results=None):
    """Per kind of trial (normlib.trials.trial_kind: the network, its probe, a tuning rung) over every notebook
    of the last run: trials trained, minutes of training (the sum of each trial's time on its worker) and the
    mean seconds per trial."""
    kinds = {}
    for s in _status_files(results).values():
        for kind, (n, seconds) in s.get("kinds", {}).items():
            count, total = kinds.get(kind, (0, 0.0))
            kinds[kind] = (count + n, total + seconds)
    rows = [{"kind of trial": kind, "trained": n, "training minutes": round(seconds / 60, 1),
             "seconds per trial": round(seconds / n, 1) if n else float("nan")}
            for kind, (n, seconds) in sorted(kinds.items(), key=lambda kv: -kv[1][1])]
    return pd.DataFrame(rows, columns=["kind of trial", "trained", "training minutes", "seconds per trial"])


def trained_once(results=None):
    """(trials trained over every notebook of the last run, distinct trials among them): equal when no trial
    was trained twice."""
    keys = [k for s in _status_files(results).values() for k in s.get("keys", [])]
    return len(keys), len(set(keys))


# the layers of make benchmark's seeds_batched_vs_separate, as batched there
HOW_BATCHED = {"conv2": "one grouped convolution", "fc3": "one batched matrix product"}


def batched_text(batched):
    """make benchmark's seeds_batched_vs_separate ({layer: ratio}) in words; bench.py prints the same words."""
    return ("5 seeds of the CNN in one model take "
            + " and ".join(f"{v:.2f} of the time of 5 separate models in {k} ({HOW_BATCHED.get(k, k)})"
                           for k, v in batched.items()))


def levers_text(bench):
    """What the benchmark measured of the levers that pay for the budget (results/benchmark.json), in one
    paragraph, or what to run to get them."""
    r = (bench or {}).get("results", {})
    need = ("mlp_fraction_of_peak", "cnn_fraction_of_peak", "halving_vs_grid", "one_owner_vs_two")
    if not all(k in r for k in need):
        return "make benchmark measures them (their numbers appear here in the next make report)."
    evals = [k for k in r if k.endswith("_vs_8")]
    share = (bench.get("context") or {}).get("step_in_matmuls", {})
    batched = (bench.get("context") or {}).get("seeds_batched_vs_separate", {})
    return (f"measured by make benchmark on {bench['machine']['cpu']}: successive halving spends "
            f"{r['halving_vs_grid']['ratio']:.2f} of the optimizer steps of the full grid; two notebooks asking for the "
            f"same trials at once take {r['one_owner_vs_two']['ratio']:.2f} of the time they took when both trained "
            f"them; " + ", ".join(f"{k.split('_')[0].upper()} epochs with {k.split('_')[2]} evaluations take "
                                  f"{r[k]['ratio']:.2f} of the time with 8" for k in evals)
            + (f"; a CNN step with its first convolution on normlib's kernel takes {r['cnn_first_conv']['ratio']:.2f} "
               f"of the time of the same step on oneDNN's" if "cnn_first_conv" in r else "")
            + f". The step itself: the MLP trains at {r['mlp_fraction_of_peak']['ratio']:.0%} and the CNN at "
              f"{r['cnn_fraction_of_peak']['ratio']:.0%} of this machine's fp32 matrix-multiply peak"
            + (", and a step spends " + " and ".join(f"{v:.0%} ({a.upper()})" for a, v in share.items())
               + " of its time in matrix products and convolutions, so batching several seeds into one model "
                 "would only shrink the rest" if share else "")
            + ("; measured where that time goes, " + batched_text(batched) if batched else "") + ".")


def benchmark_summary(bench):
    """The benchmark's results (results/benchmark.json) in one paragraph, or what to run to get them."""
    if bench is None:
        return ("No benchmark measurements were found in results/benchmark.json: make benchmark measures them, "
                "and the next make report shows them here.")
    m, results = bench["machine"], bench["results"]
    held = sum(bool(r["holds"]) for r in results.values())
    text = (f"Measured by benchmarks/bench.py on {m['date']}: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
            f"with {m['torch_threads']} thread(s), device {m['device']}, 1-minute load average "
            f"{m['load_average_1min']:.1f} at the start. Each measurement runs both sides in lockstep in one process "
            f"and reports the ratio of their median step times; {held} of {len(results)} targets hold "
            f"(benchmarks/README.md says what each line compares).")
    context = bench.get("context")
    if context:
        text += (f" Measured in the same run, for context: PyTorch's own nn.LayerNorm takes "
                 f"{context['builtin_layer_norm_over_groupnorm']:.2f} times as long as nn.GroupNorm(1, C) on the "
                 f"CNN-shaped input, and the MLP's matrix products alone, at their own shapes, reach "
                 f"{context.get('matmuls_only_vs_torchvision', float('nan')):.2f} times the torchvision loop's "
                 f"throughput, the ceiling of that ratio on this machine.")
    return text
