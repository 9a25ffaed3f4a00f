"""An on-disk store of conformer basins, shared by every process on a machine.

    store = BasinStore.for_atoms(z, tag)   # None when the store is off
    with store.locked():
        entries = store.read_from(k)       # [(mmff, minimum, path), ...] files k, k+1, ...
        path = store.add(k, mmff, minimum) # the next file, written atomically

A basin is the GFN2-xTB minimum refined from the first MMFF94 minimum met in it
(`atomray.priors.minima.BasinFinder`). Refined in memory only, each process would start from the
first state *it* meets, and the minima of two processes differ by ~10⁻⁵ Å — enough for the
soft modes of the harmonic floor to change it by up to 1.5 × 10⁻³ between a training run and a
later evaluation. With the store, the first process to meet a basin writes it, and every
process after it (training workers, evaluation, the next fold, the next run) reads the same
minimum and the same normal modes (`atomray.priors.modes`), so the floors and the
harmonic prior reproduce exactly; the refinements and Hessians are also paid once per machine
instead of once per process.

Layout: `$ATOMRAY_CACHE_DIR` (default `~/.cache/atomray`) / `VERSION` / the refinement's
settings and tblite's version (`atomray.priors.minima.store_tag`) / one folder per atomic-number
sequence (a digest) holding `basin-00000.npz`, `basin-00001.npz`, … in the order
they were found, and `basin-0000k.modes-….npz` beside each once its Hessian is known (the name carries the
Hessian's settings, `atomray.priors.modes.modes_suffix`). Files are
written to a temporary name and linked into place (a reader never sees half a file, and a
second writer of the same modes keeps the first one's). A folder's `.lock` (flock) serialises
the search-refine-write of new basins between processes. `ATOMRAY_CACHE_DIR=off` turns the
store off (each process then keeps its own basins in memory). On a multi-node cluster each node
has its own store unless the variable points at a shared file system. A data set's own frames
do not need the store: their basins are stored beside the data set (`atomray.priors.frames`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ENV = "ATOMRAY_CACHE_DIR"
VERSION = "basins-v2"  # the layout (v2: a basin file says whether its minimum was refined); the
# settings of refinement and Hessian are part of the paths


def cache_root() -> Path | None:
    """The store's root folder, or None when `ATOMRAY_CACHE_DIR=off`."""
    root = os.environ.get(ENV, "")
    if root.lower() == "off":
        return None
    return (Path(root) if root else Path.home() / ".cache" / "atomray") / VERSION


def write_once(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to `path` (.npz) unless it exists; either way the file at `path` holds the
    first writer's arrays. Atomic: written to a temporary file in the folder, then linked."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path


def read(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz the store wrote, or None when it is absent."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        return None


class BasinStore:
    """The basins of one atomic-number sequence on disk (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def for_atoms(cls, z: np.ndarray, tag: str) -> "BasinStore | None":
        """The store of atomic-number sequence z under `tag` (the refinement's settings), or
        None when the store is off or its folder cannot be made."""
        root = cache_root()
        if root is None:
            return None
        key = hashlib.sha256(np.asarray(z, dtype=np.int64).tobytes()).hexdigest()[:24]
        folder = root / tag / key
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only home, full disk: fall back to memory
            return None
        return cls(folder)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def path(self, index: int) -> Path:
        return self.folder / f"basin-{index:05d}.npz"

    def writable(self) -> bool:
        """Whether this process can write new basins here (a read-only store is used from memory)."""
        return os.access(self.folder, os.W_OK)

    def read_from(self, start: int) -> list[tuple[np.ndarray, np.ndarray | None, Path]]:
        """(MMFF94 minimum, GFN2-xTB minimum or None when its refinement failed, file) of basins
        start, start + 1, … in order."""
        out, k = [], start
        while (arrays := read(self.path(k))) is not None:
            refined = bool(arrays["refined"])
            out.append((arrays["mmff"], arrays["minimum"] if refined else None, self.path(k)))
            k += 1
        return out

    def add(self, index: int, mmff: np.ndarray, minimum: np.ndarray | None) -> Path:
        """Write basin `index` (call under `locked`, after `read_from` found no file there);
        `minimum` None: its refinement failed."""
        arrays = {"mmff": mmff, "minimum": mmff if minimum is None else minimum, "refined": np.bool_(minimum is not None)}
        return write_once(self.path(index), arrays)
