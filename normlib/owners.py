"""One owner per trial key while it trains (normlib.trials.run_trials).

Notebooks that run at the same time often need the same trials (steps 1, 2 and 3 all need the runs
without normalization). Before computing a trial, a client claims its key with a lock file created
exclusively next to the cache entry (results/trials/<key>.lock, holding its host and pid); a client that
finds the key owned by another live process waits for that owner's entry instead of training the trial
again, and takes the trial over if the owner dies or gives it up without writing one. A lock whose owner
is a process of this host that no longer runs (or an unreaped zombie) is stale and replaced.
"""
import json
import os
import socket
import time
from pathlib import Path

WAIT_POLL = 0.5   # seconds between looks at a trial another process owns
BEING_WRITTEN = 5  # seconds a lock file may stay unreadable (its owner is writing it) before it counts as stale


def _me():
    return {"host": socket.gethostname(), "pid": os.getpid()}


def lock_path(folder, key):
    return Path(folder) / f"{key}.lock"


def state(folder, key):
    """Who holds the key: "free" (no lock), "mine", "theirs" (another live process, or a lock file being
    written this instant) or "stale" (its owner is gone)."""
    path = lock_path(folder, key)
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return "free"
    except (OSError, ValueError):
        try:
            young = time.time() - path.stat().st_mtime < BEING_WRITTEN
        except OSError:
            return "free"
        return "theirs" if young else "stale"
    if holder == _me():
        return "mine"
    return "theirs" if alive(holder) else "stale"


def claim(folder, key):
    """Take the key for this process by creating its lock file exclusively (host and pid inside): True when
    taken (or held already; a stale lock is replaced), False when another live process owns it."""
    path = lock_path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = state(folder, key)
            if held in ("mine", "theirs"):
                return held == "mine"
            path.unlink(missing_ok=True)  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_me(), f)
        return True
    return False


def release(folder, key):
    """Give the key up (after writing its entry, or when this process stops without it)."""
    if state(folder, key) == "mine":
        lock_path(folder, key).unlink(missing_ok=True)


def alive(holder):
    """Whether a lock's owner still runs: a process of this host that exists and is not a zombie; an owner on
    another host (a results folder shared between machines) is taken to be alive."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        pid = int(holder["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError, TypeError):
        return True
    try:  # a process that has exited but not yet been reaped by its parent (a zombie) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
