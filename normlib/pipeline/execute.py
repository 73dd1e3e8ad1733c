"""Executing the notebooks: the project's kernel, up-to-date stamps, papermill, and the progress
shown while they run.

A notebook is executed again only when something it depends on changed (`stamp`); one that must
run every time says why in its metadata normlab.always_execute. `run_notebooks` executes the rest
`jobs` at a time, each in its own process (papermill's cwd handling is not thread-safe), a notebook
starting once those it reads from (metadata normlab.after) have finished; while they run, `Progress`
reads the status file each notebook's trials write (normlib.progress.Progress) and shows per notebook
the trials done / total (cached ones counted), the time elapsed and an estimate of the time left:
rewritten in place on a terminal, as a line every NORMLIB_PROGRESS_EVERY seconds (default 30)
otherwise (CI logs).
"""
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

from normlib import kernels
from normlib.executors import exit_with_parent
from normlib.paths import write_atomic
from normlib.pipeline import PipelineError, first_line

KERNEL = "normlab"  # kernelspec installed into this environment (sys.prefix) on first use


# ----------------------------------------------------------------------------
# up to date: a notebook is executed again only when something it depends on changed


def environment_digest():
    """What every notebook's outputs depend on besides its own source and parameters: normlib's
    code, the data, the installed versions of the packages that compute and render the results,
    and the device the trials would run on."""
    from normlib import data, provenance
    from normlib.train import resolve_device

    h = hashlib.sha256()
    lib = Path(__file__).resolve().parent.parent
    for path in sorted(lib.rglob("*.py")) + sorted(lib.rglob("*.cpp")) + sorted(lib.rglob("*.yaml")):
        h.update(path.relative_to(lib).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(json.dumps({"data": data.FINGERPRINT, "software": provenance.software_versions(),
                         "device": resolve_device("auto"), "kernels": kernels.backend()}, sort_keys=True).encode())
    return h.hexdigest()


def stamp(source, parameters, environment):
    """Digest of everything an executed notebook was computed from: the source notebook, the
    injected parameters and the environment_digest(). Stored in the executed copy's metadata."""
    h = hashlib.sha256(Path(source).read_bytes())
    h.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    h.update(environment.encode())
    return h.hexdigest()


def _normlab_metadata(path):
    return json.loads(Path(path).read_text()).get("metadata", {}).get("normlab", {})


def always_execute(source):
    """Why a notebook must run every time (source metadata normlab.always_execute), or None.
    The procedure chapter reads the run manifest, which changes with every run."""
    return _normlab_metadata(source).get("always_execute")


def prerequisites(source, names, strict=True):
    """The notebooks among `names` (book order) that must finish before this one starts, from its
    source metadata normlab.after: a list of notebook names (e.g. the training notebook whose trials an
    analysis reads from the cache), or "all" for every notebook before it in book order. strict: a name
    that is not before it in `names` is an error (the whole book); otherwise it is left out (a run of some
    notebooks, --only, whose prerequisites ran before)."""
    after = _normlab_metadata(source).get("after", [])
    name = Path(source).stem
    earlier = names[:names.index(name)] if name in names else list(names)
    if after == "all":
        return earlier
    if not strict:
        return [n for n in after if n in earlier]
    for n in after:  # so that book order satisfies every `after`
        if n not in earlier:
            raise PipelineError(f"{source}: metadata normlab.after names {n!r}, which is not a notebook "
                                f"before it in _toc.yml (allowed: {', '.join(earlier) or 'none'})")
    return list(after)


def executed_stamp(dest):
    """(stamp, when executed) recorded in an executed notebook, or (None, None)."""
    try:
        meta = _normlab_metadata(dest)
    except (OSError, ValueError):
        return None, None
    return meta.get("stamp"), meta.get("executed")


# ----------------------------------------------------------------------------
# one notebook


def ensure_kernel():
    """Make the `normlab` kernelspec run this Python, writing it into sys.prefix if needed.

    Same as `python -m ipykernel install --sys-prefix --name normlab`, plus a log level that
    silences ipykernel's start-up and shutdown chatter (cell errors are read from the notebook).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--IPKernelApp.log_level=CRITICAL"]

    def current():
        try:
            return KernelSpecManager().get_kernel_spec(KERNEL).argv
        except NoSuchKernel:
            return None

    if current() != argv:
        spec = {"argv": argv, "display_name": "Python (normlab)", "language": "python"}
        write_atomic(Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json",
                     json.dumps(spec, indent=2) + "\n")
    found = current()
    if found != argv:
        raise PipelineError(f"kernel {KERNEL!r} runs {found and found[0]}, not {sys.executable}: "
                            f"remove the kernelspec that shadows it (see `jupyter kernelspec list`)")
    return KERNEL


def _first_error(nb):
    """(cell index, cell, error output) of the first error output, or None."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, cell, out
    return None


def _source_cell_number(nb, index):
    """1-based position in the source notebook of executed cell `index` (skips papermill's cells)."""
    skip = ("injected-parameters", "papermill-error-cell-tag")
    before = nb.cells[:index]
    return 1 + sum(1 for c in before if not set(c.get("metadata", {}).get("tags", [])) & set(skip))


def execute(name, source, dest, failed_dir, parameters, kernel, stamp=None):
    """Run one notebook with papermill; on success atomically place it at `dest`, with
    metadata normlab = {stamp, executed (time), seconds}.

    On failure the executed copy goes to failed_dir/<name>.ipynb, never to `dest`.
    """
    import nbformat
    import papermill as pm

    tmp = dest.with_name(f".{name}.partial.ipynb")  # not in _toc.yml, so never a page
    failed = failed_dir / f"{name}.ipynb"

    def fail(reason):
        where = ""
        if tmp.exists():
            failed_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, failed)
            where = f" (executed copy: {failed})"
        return PipelineError(f"notebook {name} failed{reason}{where}", code=1)

    started = datetime.datetime.now().astimezone()
    try:
        raised = None
        for attempt in (1, 2):
            try:
                pm.execute_notebook(source, tmp, parameters=parameters, kernel_name=kernel, cwd=source.parent,
                                    progress_bar=False, log_output=False)
                break
            except pm.PapermillExecutionError as e:
                raised = e  # the partial notebook was written; its first error output is reported below
                break
            except Exception as e:  # the kernel died (e.g. out of memory) or did not start
                if attempt == 1 and _start_failure(e):
                    continue  # two kernels picked the same free port at once: start it again
                raise fail(f": {type(e).__name__}: {first_line(e)}") from None
        nb = nbformat.read(tmp, as_version=4)
        err = _first_error(nb)
        if err is not None:
            index, cell, out = err
            raise fail(f" in cell {_source_cell_number(nb, index)} (In [{cell.get('execution_count')}]): "
                       f"{out.get('ename')}: {first_line(out.get('evalue', ''))}")
        if raised is not None:
            raise fail(f" at In [{raised.exec_count}]: {raised.ename}: {first_line(raised.evalue)}")
        for cell in nb.cells:
            tags = cell.metadata.setdefault("tags", [])
            if {"injected-parameters", "parameters"} & set(tags) and "remove-cell" not in tags:
                tags.append("remove-cell")  # the source defaults and papermill's cell: the page shows what ran
        elapsed = (datetime.datetime.now().astimezone() - started).total_seconds()
        nb.metadata["normlab"] = {"stamp": stamp, "executed": started.isoformat(timespec="seconds"),
                                  "seconds": round(elapsed, 1)}
        nbformat.write(nb, tmp)
        os.replace(tmp, dest)
        failed.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)


def _start_failure(e):
    """Whether a kernel failed to start (before running any cell), e.g. a port another process took
    between jupyter_client's choice of it and the kernel's bind: safe to start again."""
    return "Kernel died before replying to kernel_info" in str(e) or "Address already in use" in str(e)


def _execute_in_child(name, source, dest, failed_dir, parameters, kernel, stamp, status_file):
    """execute() in a pool process, its trials reporting to status_file; returns (seconds, None) or
    (seconds, (message, exit code))."""
    logging.getLogger("papermill").setLevel(logging.ERROR)
    os.environ["NORMLIB_PROGRESS"] = str(status_file)  # read by normlib.trials in the notebook's kernel
    t0 = time.perf_counter()
    try:
        execute(name, source, dest, failed_dir, parameters, kernel, stamp=stamp)
    except PipelineError as e:
        return time.perf_counter() - t0, (str(e), e.code)
    return time.perf_counter() - t0, None


# ----------------------------------------------------------------------------
# every notebook of the run


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """The terminal while notebooks run: a line when one starts, ends or is up to date; for the
    running ones, trials done / total (cached counted), elapsed time and time left, in place on a
    terminal, else every `every` seconds; and a summary at the end."""

    def __init__(self, names, status_dir, stream=None, every=None):
        self.names, self.status_dir = list(names), Path(status_dir)
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = float(every if every is not None else os.environ.get("NORMLIB_PROGRESS_EVERY", 30))
        self.running, self.rows, self.live, self.last = {}, {}, False, time.monotonic()

    def _tag(self, name):
        return f"[{self.names.index(name) + 1}/{len(self.names)}] {name}"

    def _print(self, text):
        if self.live:
            self.stream.write("\r\x1b[K")
            self.live = False
        print(text, file=self.stream, flush=True)

    def status_file(self, name):
        return self.status_dir / f"{name}.json"

    def status(self, name):
        try:
            return json.loads(self.status_file(name).read_text())
        except (OSError, ValueError):
            return None

    def up_to_date(self, name, when):
        self.rows[name] = ("up to date", 0.0, None)
        self._print(f"{self._tag(name)} ... up to date (executed {when})")

    def started(self, name):
        self.status_file(name).unlink(missing_ok=True)
        self.running[name] = time.monotonic()
        self._print(f"{self._tag(name)} started")

    def finished(self, name, seconds, failed=False):
        self.running.pop(name, None)
        s = self.status(name)
        self.rows[name] = ("failed" if failed else "executed", seconds, s)
        trials = (f", {s['trained']} trials trained, {s['cached']} reused"
                  + (f", {s['shared']} shared with another notebook" if s.get("shared") else "")) if s else ""
        self._print(f"{self._tag(name)} ... {'failed' if failed else 'done'} in {seconds:.1f} s{trials}")

    def describe(self, name):
        """'step1_bn_training: 12/40 trials (8 cached), 1m05s, about 2m10s left'."""
        elapsed = time.monotonic() - self.running[name]
        s = self.status(name)
        if not s or not s["total"]:
            return f"{name}: {_duration(elapsed)}"
        done = s["cached"] + s["trained"] + s.get("shared", 0)
        text = f"{name}: {done}/{s['total']} trials ({s['cached']} cached), {_duration(elapsed)}"
        spent = s["updated"] - s["started"]
        if s["trained"] and done < s["total"]:
            text += f", about {_duration(spent / s['trained'] * (s['total'] - done))} left"
        elif not s["trained"] and done < s["total"]:
            text += ", estimating time left"
        return text

    def tick(self):
        if not self.running:
            return
        now = time.monotonic()
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.stream.write("\r\x1b[K" + " | ".join(self.describe(n) for n in self.running)[:width])
            self.stream.flush()
            self.live = True
        elif now - self.last >= self.every:
            self.last = now
            for name in self.running:
                self._print(f"  {self.describe(name)}")

    def summary(self):
        """One line per notebook: what happened, its time, and its trials trained and reused."""
        lines = ["notebook                         status       time   trained  reused  shared"]
        for name in self.names:
            status, seconds, s = self.rows.get(name, ("not run", 0.0, None))
            trained, cached, shared = (s["trained"], s["cached"], s.get("shared", 0)) if s else ("-", "-", "-")
            lines.append(f"{name:<32} {status:<10} {_duration(seconds) if seconds else '-':>6} "
                         f"{trained!s:>9} {cached!s:>7} {shared!s:>7}")
        self._print("\n".join(lines))


def run_notebooks(manifest, to_run, nb_dir, book_nb_dir, results, kernel, progress):
    """Execute the notebooks that are not up to date, up to manifest["jobs"] at once, each in its own
    process, a notebook starting only once its prerequisites() have finished. After the first failure
    no notebook starts; those running finish, then the failure is raised. Returns how many notebooks
    were executed."""
    names = list(to_run)
    pending = []
    for name in names:
        entry = manifest["notebooks"][name]
        if entry["up_to_date_since"]:
            progress.up_to_date(name, entry["up_to_date_since"])
        else:
            pending.append(name)
    # wait only for notebooks that run now: the others are up to date or not in this run (--only)
    waits = {n: [d for d in prerequisites(nb_dir / f"{n}.ipynb", names, strict=False) if d in pending]
             for n in pending}
    done, running, failure = set(), {}, None
    if not pending:
        return 0
    progress.status_dir.mkdir(parents=True, exist_ok=True)
    pool = ProcessPoolExecutor(max_workers=manifest["jobs"], mp_context=get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))
    try:
        while pending or running:
            ready = [] if failure else [n for n in pending if all(d in done for d in waits[n])]
            for name in ready[:manifest["jobs"] - len(running)]:
                pending.remove(name)
                progress.started(name)
                running[pool.submit(_execute_in_child, name, nb_dir / f"{name}.ipynb", book_nb_dir / f"{name}.ipynb",
                                    results / "failed", to_run[name], kernel, manifest["notebooks"][name]["stamp"],
                                    progress.status_file(name))] = name
            if not running:
                break  # a failure stopped the rest
            finished, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                seconds, error = future.result()
                progress.finished(name, seconds, failed=bool(error))
                if error:
                    failure = failure or PipelineError(*error)
                else:
                    done.add(name)
            progress.tick()
    except BaseException:  # Ctrl-C: end the notebooks still running (their kernels exit with them)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if failure:
        raise failure
    return len(done)
