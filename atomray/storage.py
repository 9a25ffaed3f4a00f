"""Paths that are local files or URIs (`s3://`, `gs://`, `file://`, anything pyarrow.fs reads):
the one place where atomray touches storage by name.

`data.path`, `storage_path` and the run directory under it may be either; pathlib never sees
a URI (it would turn `s3://b/k` into `s3:/b/k`). Paths stay strings in the form the user gave
(a URI keeps its scheme), and every read and write goes through `filesystem(path)`.

    join("s3://bucket/runs", "tiny", "best")     # 's3://bucket/runs/tiny/best'
    write_text(join(run_dir, "mlflow_run_id"), run_id)
    pq.read_table(*parquet_args(path))

Object stores take their endpoint and credentials from the usual environment variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...; pyarrow reads them), so a local S3-compatible
server works the same as AWS.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs


class StorageError(OSError):
    """A path cannot be reached, listed, read or written; the message names the path."""


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def absolute(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """A URI unchanged; a local path made absolute against `base` (default: the working directory)."""
    path = str(path)
    if is_uri(path):
        return path
    return str((Path(base or os.getcwd()) / Path(path).expanduser()).resolve())


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowException, ValueError, OSError) as err:
        raise StorageError(f"{path}: not a storage location pyarrow can open ({err})") from None


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base` / parts, keeping a URI's scheme (never pathlib on a URI)."""
    base = str(base)
    if is_uri(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *(p.strip("/") for p in parts))
    return os.path.join(base, *parts)


def basename(path: str | os.PathLike) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def _info(path: str) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner)
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{path}: cannot be reached ({err})") from None


def is_file(path: str | os.PathLike) -> bool:
    return _info(str(path)).type == pafs.FileType.File


def is_dir(path: str | os.PathLike) -> bool:
    return _info(str(path)).type == pafs.FileType.Directory


def exists(path: str | os.PathLike) -> bool:
    return _info(str(path)).type != pafs.FileType.NotFound


def listdir(directory: str | os.PathLike, kind: str = "any") -> list[str]:
    """Names (not paths) directly under `directory`, sorted; `kind` "file" or "dir" filters.
    A missing directory lists as empty."""
    directory = str(directory)
    fs, inner = filesystem(directory)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{directory}: cannot be listed ({err})") from None
    wanted = {"file": pafs.FileType.File, "dir": pafs.FileType.Directory}.get(kind)
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos if wanted is None or i.type == wanted)


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as fh:
            return fh.read()
    except FileNotFoundError:
        raise StorageError(f"{path}: file not found") from None
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{path}: cannot be read ({err})") from None


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def open_input(path: str | os.PathLike):
    """A binary file object to read `path` from (for streaming, e.g. hashing)."""
    fs, inner = filesystem(path)
    try:
        return fs.open_input_file(inner)
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{path}: cannot be read ({err})") from None


def make_dirs(path: str | os.PathLike) -> None:
    fs, inner = filesystem(path)
    try:
        fs.create_dir(inner, recursive=True)
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{path}: cannot create the directory ({err})") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write a whole file so that no reader ever sees half of it: locally under a temporary
    name, then renamed; on an object store one PUT (objects appear whole)."""
    path = str(path)
    fs, inner = filesystem(path)
    parent = posixpath.dirname(inner)
    try:
        fs.create_dir(parent, recursive=True)
        if fs.type_name != "local":
            with fs.open_output_stream(inner) as fh:
                fh.write(data)
            return path
        tmp = posixpath.join(parent, f".{posixpath.basename(inner)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with fs.open_output_stream(tmp) as fh:
                fh.write(data)
            fs.move(tmp, inner)
        finally:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{path}: cannot be written ({err})") from None
    return path


def write_text(path: str | os.PathLike, text: str) -> str:
    return write_bytes(path, text.encode())


def delete_dir(path: str | os.PathLike) -> None:
    """Remove a directory and everything under it (nothing if it does not exist)."""
    fs, inner = filesystem(path)
    try:
        if fs.get_file_info(inner).type == pafs.FileType.Directory:
            fs.delete_dir(inner)
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{path}: cannot be removed ({err})") from None


def upload_dir(local: str | os.PathLike, target: str | os.PathLike, last: tuple[str, ...] = ()) -> str:
    """Copy the local directory tree `local` to `target` (a path or URI). Files named in
    `last` (relative paths) are copied after all others, so a reader that looks for them
    first never finds a half-copied tree."""
    local, target = Path(local), str(target)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda rel: rel in last)
    for rel in files:
        write_bytes(join(target, rel), (local / rel).read_bytes())
    return target


def download_dir(source: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy the tree under `source` (a path or URI) into the local directory `local`."""
    fs, inner = filesystem(source)
    local = Path(local)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{source}: cannot be listed ({err})") from None
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        dest = local / posixpath.relpath(info.path, inner)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as fh:
            dest.write_bytes(fh.read())
    return local
