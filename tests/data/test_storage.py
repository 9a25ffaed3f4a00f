"""The storage layer: local paths and URIs through pyarrow.fs, never pathlib on a URI; the
training reader checks every frames file's schema before a run starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomray import storage
from atomray.data.dataset import frame_files, read_molecules
from atomray.data.frames import DataError
from atomray.data.pipeline import scan_segments


def test_join_keeps_a_uri_scheme_and_absolute_leaves_uris_alone(tmp_path):
    assert storage.join("s3://bucket/runs/", "tiny", "best") == "s3://bucket/runs/tiny/best"
    assert storage.join("file:///data/x", "frames") == "file:///data/x/frames"
    assert storage.absolute("s3://bucket/a") == "s3://bucket/a"
    assert storage.absolute("rel/dir", tmp_path) == str(tmp_path / "rel" / "dir")
    assert storage.basename("s3://bucket/runs/tiny/") == "tiny"


def test_a_file_uri_data_set_reads_like_its_path(tiny_dataset):
    uri = f"file://{tiny_dataset}"
    assert read_molecules(uri).equals(read_molecules(tiny_dataset))
    assert [storage.basename(f) for f in frame_files(uri)] == [Path(f).name for f in frame_files(tiny_dataset)]
    assert [(s.molecule_id, s.n_frames) for s in scan_segments(uri)] == [
        (s.molecule_id, s.n_frames) for s in scan_segments(tiny_dataset)]


def test_writes_are_whole_and_listing_a_missing_directory_is_empty(tmp_path):
    target = storage.join(f"file://{tmp_path}", "run", "mlflow_run_id")
    storage.write_text(target, "abc")
    assert (tmp_path / "run" / "mlflow_run_id").read_text() == "abc"
    assert storage.listdir(tmp_path / "run") == ["mlflow_run_id"]  # no temporary left beside it
    assert storage.listdir(tmp_path / "nowhere") == []
    with pytest.raises(storage.StorageError, match="nowhere/file: file not found"):
        storage.read_text(tmp_path / "nowhere" / "file")


def test_training_reader_names_file_and_column_of_a_wrong_schema(tiny_dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset, bad)
    shard = Path(frame_files(bad)[0])
    table = pq.read_table(shard)
    i = table.schema.get_field_index("dt_fs")
    pq.write_table(table.set_column(i, "dt_fs", table.column("dt_fs").cast(pa.string())), shard)
    with pytest.raises(DataError, match=rf"{shard}: column 'dt_fs' has type string, expected double"):
        scan_segments(bad)
