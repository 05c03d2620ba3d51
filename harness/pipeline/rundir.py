"""Run-directory ownership: one run writes into a run directory at a time.

`RunLock` creates `<run>/.lock` exclusively (O_EXCL: atomic on local and network file systems) holding the
owner's pid, host, start time and command. A second run into the same directory fails at once, naming the
holder. A lock left by a process that no longer exists (a run killed with SIGKILL, a node that went down)
is reported as stale with how to clear it; it is never taken over silently, because a process on another
host cannot be checked from here.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import HarnessError

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.file = self.run_dir / LOCK_NAME
        self.created = False
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join(sys.argv)}

    def acquire(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise HarnessError(f"the run directory {self.run_dir} is a file, not a directory; give another --output "
                               "(or --resume a run directory).")
        self.created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise HarnessError(self._held_message()) from None
        except OSError as error:
            raise HarnessError(f"cannot create the run directory lock {self.file}: {error.strerror or error}.") from None
        with os.fdopen(handle, "w") as stream:
            json.dump(self.owner, stream)

    def release(self) -> None:
        """Remove the lock if it is still ours, and the directory if this run created it and left it empty
        (a run refused by its pre-flight leaves nothing behind)."""
        holder = self._holder()
        if (holder.get("pid"), holder.get("host")) == (self.owner["pid"], self.owner["host"]):
            self.file.unlink(missing_ok=True)
        if self.created and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _held_message(self) -> str:
        holder = self._holder()
        pid, host = holder.get("pid"), holder.get("host")
        who = f"pid {pid} on {host}, started {holder.get('started', '?')}: {holder.get('command', '?')}"
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            return (f"{self.run_dir} is locked by a run that no longer exists ({who}): a stale lock left by a run "
                    f"that was killed. If no run is writing there, remove {self.file} and run again.")
        if not holder:
            return (f"{self.run_dir} is locked ({self.file} exists but cannot be read). If no run is writing there, "
                    f"remove {self.file} and run again.")
        return (f"{self.run_dir} is in use by another run ({who}). Wait for it to finish, or give another --output. "
                f"If that process is gone (e.g. its node went down), remove {self.file}.")

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
