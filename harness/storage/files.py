"""Atomic file writes: a file is replaced whole or left as it was, never half-written.

Every result, report, checkpoint and cache entry goes through `atomic_output`: the content is written to
a temporary file beside the target and moved over it in one rename. A full disk, an unwritable folder or
an interruption (Ctrl-C, SIGTERM) leaves the previous file intact and no temporary file behind, and an
OSError (or torch's RuntimeError for a failed archive write) becomes one HarnessError naming the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import HarnessError


@contextmanager
def atomic_output(path: Path, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` (readable as the umask allows)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise HarnessError(f"cannot write {what} {path}: {error.strerror or error}.") from None
    temporary = Path(name)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes the file private; results and reports are shared
        os.replace(temporary, path)
    except OSError as error:
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise HarnessError(f"cannot write {what} {path}: {error.strerror or error} ({kept}).") from None
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: Path, content: str | bytes, what: str = "file") -> None:
    with atomic_output(path, what) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(content.encode() if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())


def atomic_save(path: Path, save: Callable[[Path], None], what: str = "file") -> None:
    """Write with a library's own saver (torch.save, np.savez) through a temporary file."""
    with atomic_output(path, what) as temporary:
        save(temporary)


def atomic_torch_save(path: Path, obj, what: str = "file") -> None:
    """torch.save through a temporary file, into an open handle: the archive then names no temporary file, so
    the same tensors give the same bytes (a file's hash fingerprints the weights it holds)."""
    import torch

    with atomic_output(path, what) as temporary:
        with open(temporary, "wb") as stream:
            try:
                torch.save(obj, stream)
            except RuntimeError as error:  # torch's archive writer reports a failed write (a full disk) so
                free = shutil.disk_usage(temporary.parent).free
                kept = "the previous file is intact" if Path(path).exists() else "nothing was written"
                raise HarnessError(f"cannot write {what} {path}: the write failed with {free:,} bytes free on its "
                                   f"file system (a full disk, or a file size limit) ({kept}); torch: {error}") \
                    from None
