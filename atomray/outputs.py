"""Output paths of the jobs, checked before any work starts.

A job that writes a directory or a file (evaluate --out, predict --out, import_data --out and
--to, build_tg80 --out) checks its destination first, so an unwritable one is a one-line
error naming the path instead of a traceback after minutes of work. The files themselves are
written under temporary names and renamed, so a failure leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from atomray import storage


class OutputError(ValueError):
    """An output path cannot be written; the message names it and says why."""


def _exists(path: Path) -> bool:
    try:
        path.stat()
        return True
    except OSError:  # missing, under a file, or behind a directory we may not search
        return False


def _check_creatable(path: Path, directory: Path, what: str) -> None:
    """OutputError naming `path` unless the nearest existing directory at or above
    `directory` lets us create `directory` and write into it."""
    base = directory.absolute()
    while not _exists(base) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"{path}: cannot create the {what}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: no write permission on {base}")


def check_output_dir(path: str | Path, built_beside: bool = False) -> Path:
    """`path` as a Path if it is a writable directory or can be made one (nothing is created);
    otherwise OutputError naming it. `built_beside`: the directory is built under another
    name in its parent and renamed into place, so the parent must be writable. A URI (s3://,
    file://, ...) is returned as given: the store is reached when the output is copied there
    (`staged`)."""
    if storage.is_uri(path):
        return path
    path = Path(path).expanduser()
    if _exists(path) and not path.is_dir():
        raise OutputError(f"{path}: the output directory exists as a file; expected a directory")
    _check_creatable(path, path.parent if built_beside else path, "output directory")
    return path


def check_output_file(path: str | Path) -> Path:
    """`path` as a Path if a file can be written there (its directory exists writable or can
    be made); otherwise OutputError naming it. A URI is returned as given (see check_output_dir)."""
    if storage.is_uri(path):
        return path
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path}: the output file exists as a directory; expected a file path")
    _check_creatable(path, path.parent, "output file")
    return path


@contextlib.contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """The local directory a job writes its output directory `out` into: `out` itself for a
    local path; for a URI a temporary directory whose files are copied to `out` when the block
    ends without an error (and nothing is copied when it raises)."""
    if not storage.is_uri(out):
        yield Path(out).expanduser()
        return
    with tempfile.TemporaryDirectory(prefix="atomray-out-") as tmp:
        yield Path(tmp)
        try:
            storage.upload_dir(tmp, str(out))
        except storage.StorageError as err:
            raise OutputError(str(err)) from None


def remove_made_dirs(made: list[Path]) -> None:
    """Undo a `mkdir -p` after a failure: remove the directories in `made` (innermost first)
    while they are empty; stop at the first that is not."""
    for d in made:
        try:
            d.rmdir()
        except OSError:
            break


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to `path` (format by its suffix) under a temporary name, then
    rename it, and close the figure: a failure leaves no half-written image. Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.{path.name}")  # the suffix picks the format
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
