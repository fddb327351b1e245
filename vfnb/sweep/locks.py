"""Locks that let sweep jobs share a folder: a JSON file holding pid, host and time, taken over when stale."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Iterator

from ..study import read_json
from .plan import SweepError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def pid_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``path`` (created exclusively, holding pid, host and time) while the context is open.

    A lock whose pid is dead on this host is taken over; otherwise :class:`SweepError`
    names the lock file, ``what`` it guards, and its holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_json(path) or {}
            pid = holder.get("pid")
            stale = holder.get("host") == me["host"] and isinstance(pid, int) and not _pid_alive(pid)
            locked = SweepError(f"{path}: {what} is locked by pid {pid} on {holder.get('host', '?')} "
                                f"(since {holder.get('since_utc', '?')}); wait for it to end, or delete the lock "
                                "file if that process is gone")
            if not stale:
                raise locked from None
            # take the stale lock over by moving it aside; if what was moved is not the stale
            # lock (another process took it over in between), put it back and refuse
            aside = path.with_name(f".stale-{uuid.uuid4().hex[:8]}-{path.name}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            if (read_json(aside) or {}) != holder:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
                aside.unlink()
                raise locked from None
            aside.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise SweepError(f"{path}: could not take the lock for {what} (another process keeps taking it)")
    try:
        yield path
    finally:
        if (read_json(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
