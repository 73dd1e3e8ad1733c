"""Run the lab: execute every notebook with papermill, then build the Jupyter Book.

    python -m normlib.pipeline --profile quick
    python -m normlib.pipeline --profile default --set seeds=[0,1,2,3] --set step1_bn_training.lr=0.1
    python -m normlib.pipeline --only step1_bn_training,step2_bn_analysis --no-book
    python -m normlib.pipeline --profile full --scheduler tcp://scheduler-host:8786

Order of work, so that a bad request never leaves half a run behind:
1. validate everything (profile, parameter names and values, the data set, writable directories)
   and, when a notebook will run, start the run's pool of trial workers (a Dask LocalCluster, one
   worker process per core) or connect to the named scheduler, and check every worker
   (normlib.trials.check_workers);
2. write results/run_manifest.json (what is about to run, and where);
3. execute notebooks/<name>.ipynb into book/notebooks/<name>.ipynb in _toc.yml order (or `jobs` at a
   time, each waiting for the notebooks its metadata normlab.after names), every notebook sending
   its trials to the one pool, with progress per notebook on the terminal; stop at the first error
   (the failed copy goes to results/failed/<name>.ipynb); skip a notebook whose executed copy is up
   to date (same source, parameters, normlib code, data, package versions and device; --rerun or
   --force execute it anyway);
4. build the book with warnings as errors (an unresolved glue reference is one) into .build-tmp/,
   and only then swap it in as _build/.

The modules: plan (profiles, parameters, the plan of a run), execute (kernelspec, up-to-date stamps,
papermill, progress), book (the table of contents, the book build, the README figure), cli (the
command line; `python -m normlib.pipeline`).

Exit codes: 0 done, 1 a notebook or the book build failed, 2 bad request (nothing written),
130 interrupted (Ctrl-C); running the same command again resumes from the cached trials.
"""


class PipelineError(Exception):
    """A one-line error; `code` is the exit status (2 = bad request, 1 = a run failed)."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


def first_line(text):
    return (str(text).strip().splitlines() or [""])[0]
