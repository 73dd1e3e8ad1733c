"""The command line: `python -m normlib.pipeline` (see normlib.pipeline for the order of work)."""
import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from normlib import executors, kernels, params, trials
from normlib.paths import ROOT, write_atomic
from normlib.pipeline import PipelineError, first_line
from normlib.pipeline.book import README_FIGURE, build_book, export_readme_figure, toc_notebooks
from normlib.pipeline.execute import (Progress, always_execute, ensure_kernel, environment_digest, executed_stamp,
                                      prerequisites, run_notebooks, stamp)
from normlib.pipeline.plan import declared_parameters, load_profile, parse_sets, plan


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m normlib.pipeline", description="Execute the notebooks and build the book.")
    ap.add_argument("--profile", default="default", help="quick | default | full | PATH.yaml (default: default)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a parameter everywhere it is declared, or NB.NAME=VALUE for one notebook")
    ap.add_argument("--only", default=None, metavar="NB[,NB]", help="execute only these notebooks")
    ap.add_argument("--force", action="store_true",
                    help="recompute cached trials (force=True where declared) and execute every notebook")
    ap.add_argument("--rerun", action="store_true",
                    help="execute every notebook, even those up to date (finished trials are still reused)")
    ap.add_argument("--no-book", action="store_true", help="execute notebooks, do not build the book")
    ap.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="send the trials to this Dask scheduler (tcp://host:8786) instead of a local pool "
                         "(default: the profile's scheduler, else DASK_SCHEDULER_ADDRESS, else a local pool)")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes of the local pool (default: one per core)")
    ap.add_argument("--jobs", type=int, default=None, metavar="N",
                    help="notebooks executed at once (default: the profile's jobs, else 1); a notebook still "
                         "waits for those it reads from (its metadata normlab.after)")
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    ap.add_argument("--readme-figure", action="store_true",
                    help=f"run nothing: copy the last build's {README_FIGURE[1]} ({README_FIGURE[0]}) to "
                         f"{README_FIGURE[2]}, the README's figure")
    return ap.parse_args(argv)


def _checked(check, *args):
    """check(*args), its one-line error a PipelineError (a bad request)."""
    try:
        return check(*args)
    except (params.ParameterError, kernels.KernelError, executors.PoolError) as e:
        raise PipelineError(first_line(e)) from None


def check_data():
    """Verify Fashion-MNIST (size and sha256) in the data root before any notebook trains on it,
    decompressing Debian's copy there if needed (normlib.data.prepare); a DataError says what to do."""
    from normlib import data

    try:
        data.prepare()
    except data.DataError as e:
        raise PipelineError(first_line(e)) from None


def git_commit(root):
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def select(args, names, book_nb_dir):
    """The notebooks of --only (all without it), in book order."""
    if not args.only:
        return names
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    for w in wanted:
        if w not in names:
            raise PipelineError(f"--only: {params.unknown_name(w, names, 'notebook')}")
    if not args.no_book:
        stale = [n for n in names if n not in wanted and not (book_nb_dir / f"{n}.ipynb").exists()]
        if stale:
            raise PipelineError(f"--only: cannot build the book, not executed yet: {', '.join(stale)} "
                                f"(run them too, or add --no-book)")
    return [n for n in names if n in wanted]


def plan_run(args):
    """Validate the whole request; return everything needed to run it (a namespace).

    Writes nothing but the directories it checks and, when they are missing, the verified data files.
    """
    root = Path(args.root).resolve()
    nb_dir, book_nb_dir = root / "notebooks", root / "book" / "notebooks"
    results = Path(os.environ.get("NORMLIB_RESULTS") or root / "results")
    profile_name, profile_path, profile = load_profile(args.profile)
    names = toc_notebooks(root)
    if not names:
        raise PipelineError(f"{root / '_toc.yml'} lists no notebooks under book/notebooks/")
    for n in names:
        if not (nb_dir / f"{n}.ipynb").is_file():
            raise PipelineError(f"_toc.yml lists book/notebooks/{n} but {nb_dir / n}.ipynb does not exist")
    declared = {n: declared_parameters(nb_dir / f"{n}.ipynb") for n in names}
    for n in names:
        prerequisites(nb_dir / f"{n}.ipynb", names)  # a bad normlab.after is a bad request
    selected = select(args, names, book_nb_dir)
    if args.workers is not None and args.workers < 1:
        raise PipelineError(f"--workers {args.workers}: must be a positive integer (worker processes of the pool)")
    if args.jobs is not None and args.jobs < 1:
        raise PipelineError(f"--jobs {args.jobs}: must be a positive integer (notebooks executed at once)")
    to_run = plan(profile_name, profile, parse_sets(args.set), declared, selected, force=args.force)
    _checked(kernels.backend)  # a bad NORMLIB_KERNELS is a bad request
    check_data()
    # the results folder too: its trial cache and records are what the analyses read (NORMLIB_RESULTS moves it)
    environment = environment_digest() + str(results.resolve())
    stamps, reused = {}, {}
    for n in selected:  # book order: a notebook's prerequisites are stamped before it
        source = nb_dir / f"{n}.ipynb"
        inputs = [stamps.get(d) or executed_stamp(book_nb_dir / f"{d}.ipynb")[0] or ""
                  for d in prerequisites(source, names)]  # what it reads changes its stamp too
        stamps[n] = stamp(source, to_run[n], environment + "".join(inputs))
        done, when = executed_stamp(book_nb_dir / f"{n}.ipynb")
        if done == stamps[n] and not (args.force or args.rerun or always_execute(source)):
            reused[n] = when
    scheduler = args.scheduler or profile.get("scheduler") or executors.scheduler_address()
    manifest = {
        "profile": profile_name,
        "profile_path": str(profile_path),
        "description": profile.get("description", ""),
        "overrides": list(args.set) + (["--force"] if args.force else []),
        "only": selected if args.only else None,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(root),
        "jobs": args.jobs or profile.get("jobs", 1),
        "pool": None,
        "notebooks": {n: {"injected": to_run[n], "declared": declared[n], "stamp": stamps[n],
                          "up_to_date_since": reused.get(n)} for n in selected},
    }
    pool = None
    if len(reused) < len(selected):  # a notebook will run: its trials need the pool, checked before anything runs
        pool = start_pool(scheduler, args.workers)
        manifest["pool"] = pool.describe
    try:
        for path, what in ((results, "results directory"), (book_nb_dir, "executed notebooks directory")):
            _checked(params.check_writable, path, what)
    except PipelineError:
        if pool and pool.cluster:
            executors.stop_local_cluster(pool.cluster)
        raise
    return SimpleNamespace(root=root, nb_dir=nb_dir, book_nb_dir=book_nb_dir, results=results, to_run=to_run,
                           manifest=manifest, pool=pool)


def start_pool(scheduler, workers):
    """The run's pool of trial workers, checked (normlib.trials.check_workers): the Dask scheduler named
    by --scheduler, the profile or DASK_SCHEDULER_ADDRESS, else a LocalCluster of `workers` processes
    (default one per core), started once for the whole run."""
    cluster = None
    if scheduler is None:
        cluster = executors.start_local_cluster(workers)
        scheduler = cluster.scheduler_address
    try:
        reports = _checked(trials.check_workers, _checked(executors.Dask, scheduler))
    except BaseException:
        if cluster is not None:
            executors.stop_local_cluster(cluster)
        raise
    kind = f"a local pool of {len(reports)} worker processes" if cluster else f"the Dask scheduler at {scheduler}"
    describe = {"scheduler": scheduler, "kind": kind, "workers": {
        name: {**r["machine"], **r["environment"]} for name, r in reports.items()}}
    return SimpleNamespace(address=scheduler, cluster=cluster, describe=describe)


def build_kernels():
    """Compile (or load) normlib's C++ kernels before any notebook needs them, so that a missing
    compiler is one clear error here and every notebook's workers find them built."""
    if kernels.backend() != "cpp":
        return
    t0 = time.perf_counter()
    try:
        kernels.ext()
    except kernels.KernelError as e:
        raise PipelineError(str(e), code=1) from None
    if time.perf_counter() - t0 > 5:
        print(f"built normlib's C++ kernels in {time.perf_counter() - t0:.0f} s (once per source version)", flush=True)


def run_request(args):
    r = plan_run(args)
    try:
        build_kernels()  # once, before the pool's workers load them
        kernel = ensure_kernel()
        write_atomic(r.results / "run_manifest.json", json.dumps(r.manifest, indent=2) + "\n")
        # the kernels import normlib from this checkout, see the same results directory and send their
        # trials to the run's pool
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(r.root), os.environ.get("PYTHONPATH")]))
        os.environ["NORMLIB_RESULTS"] = str(r.results)
        if r.pool:
            os.environ["NORMLIB_SCHEDULER"] = r.pool.address
        m = r.manifest
        print(f"profile {m['profile']}" + (f": {m['description']}" if m["description"] else "")
              + (f" ({m['jobs']} notebooks at a time)" if m["jobs"] > 1 else ""), flush=True)
        if r.pool:
            print(f"trials run on {r.pool.describe['kind']} ({r.pool.address})", flush=True)
        t_all = time.perf_counter()
        progress = Progress(list(r.to_run), r.results / "progress")
        n_run = run_notebooks(m, r.to_run, r.nb_dir, r.book_nb_dir, r.results, kernel, progress)
    finally:
        if r.pool and r.pool.cluster:
            executors.stop_local_cluster(r.pool.cluster)
    if n_run:
        progress.summary()
    print(f"{n_run} notebooks executed in {time.perf_counter() - t_all:.1f} s"
          + (f", {len(r.to_run) - n_run} up to date (--rerun executes them all)" if n_run < len(r.to_run) else ""),
          flush=True)
    if args.no_book:
        return
    print("building the book ...", end="", flush=True)
    t0 = time.perf_counter()
    try:
        index = build_book(r.root, r.results / "book-build.log")
    except PipelineError:
        print(" failed", flush=True)
        raise
    print(f" done in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"book: {index}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    logging.getLogger("papermill").setLevel(logging.ERROR)  # its warnings are checked and reported above
    try:
        if args.readme_figure:
            print(f"wrote {export_readme_figure(Path(args.root).resolve())}")
        else:
            run_request(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.code
    except KeyboardInterrupt:  # nbclient has killed the kernel and its trial workers
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # not nbclient's pending cell's traceback
        print("\nerror: interrupted; finished trials are cached: run the same command again to resume",
              file=sys.stderr, flush=True)
        return 130
    return 0
