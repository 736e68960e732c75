import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from datasets.distributed import split_dataset_by_node

from laion_hf import load_laion
from laion_hf.builder import make_builder
from laion_hf.errors import SchemaError, SourceError
from laion_hf.schema import normalize_table


def _all_rows(synth_dir):
    return pa.concat_tables(
        [
            normalize_table(pq.read_table(os.path.join(synth_dir, f)))
            for f in sorted(os.listdir(synth_dir))
            if f.endswith(".parquet")
        ]
    )


def test_stream_equals_reference_filter(synth_dir):
    ds = load_laion(synth_dir, preset="laion2b-en", where="punsafe < 0.1")
    assert isinstance(ds, datasets.IterableDataset)
    got = pa.concat_tables(list(ds.with_format("arrow").iter(batch_size=1000)))
    ref = _all_rows(synth_dir)
    want = ref.filter(pc.and_(pc.greater_equal(ref["similarity"], 0.28), pc.less(ref["punsafe"], 0.1)))
    assert got.column("url").to_pylist() == want.column("url").to_pylist()
    assert got.num_rows > 100


def test_non_streaming_returns_dataset(synth_dir, tmp_path):
    ds = load_laion(synth_dir, streaming=False, where="similarity >= 0.3", cache_dir=str(tmp_path))
    assert isinstance(ds, datasets.Dataset)
    ref = _all_rows(synth_dir)
    assert ds.num_rows == pc.sum(pc.greater_equal(ref["similarity"], 0.3)).as_py()


def test_shards_are_files_times_row_groups_and_split_by_node(synth_dir):
    ds = load_laion(synth_dir)
    assert ds.num_shards == 3 * 4  # 3 files x 4 row groups of 500 rows
    parts = [split_dataset_by_node(ds, rank=r, world_size=4) for r in range(4)]
    keys = [set(r["key"] for r in p) for p in parts]
    assert all(len(k) == 1500 for k in keys)
    assert len(set().union(*keys)) == 6000


def test_keys_are_deterministic_and_independent_of_filters(synth_dir):
    all_keys = {r["url"]: r["key"] for r in load_laion(synth_dir, columns=["key", "url"])}
    some = {r["url"]: r["key"] for r in load_laion(synth_dir, columns=["key", "url"], where="similarity > 0.33")}
    assert some and all(all_keys[u] == k for u, k in some.items())
    assert len(set(all_keys.values())) == 6000


def test_row_groups_pruned_by_statistics_and_counted(tmp_path):
    t = pa.table({"URL": [f"u{i}" for i in range(1000)], "similarity": np.linspace(0, 1, 1000)})
    pq.write_table(t, tmp_path / "sorted.parquet", row_group_size=100)
    b = make_builder(str(tmp_path), where="similarity >= 0.75")
    got = sum(x.num_rows for x in b.iter_tables())
    assert got == int(np.sum(np.linspace(0, 1, 1000) >= 0.75))
    assert b.stats.row_groups_pruned >= 7
    s = b.stats
    assert s.rows_in == 1000 == s.rows_kept + s.removed_by_filter + s.removed_by_blocklist + s.removed_by_sample


def test_column_projection(synth_dir):
    ds = load_laion(synth_dir, columns=["url", "similarity"], where="aesthetic > 6")
    row = next(iter(ds))
    assert list(row) == ["url", "similarity"]
    with pytest.raises(SchemaError, match="unknown column.*'nope'.*known columns"):
        load_laion(synth_dir, columns=["url", "nope"])


def test_sampling_is_deterministic_and_close_to_fraction(synth_dir):
    a = [r["key"] for r in load_laion(synth_dir, sample=0.1, columns=["key"])]
    b = [r["key"] for r in load_laion(synth_dir, sample=0.1, columns=["key"])]
    c = [r["key"] for r in load_laion(synth_dir, sample=0.1, sample_seed=7, columns=["key"])]
    assert a == b and a != c
    assert 450 <= len(a) <= 750
    # sampling after a filter keeps the same rows as filtering the sample
    d = {r["key"] for r in load_laion(synth_dir, sample=0.1, where="similarity > 0.3", columns=["key"])}
    e = {r["key"] for r in load_laion(synth_dir, sample=0.1, columns=["key", "similarity"]) if r["similarity"] > 0.3}
    assert d == e


def test_glob_list_and_missing_sources(synth_dir, tmp_path):
    one = list(load_laion(os.path.join(synth_dir, "part-0000[01].parquet"), columns=["key"]))
    assert len(one) == 4000
    assert len(list(load_laion([os.path.join(synth_dir, "part-00000.parquet")], columns=["key"]))) == 2000
    with pytest.raises(SourceError, match="holds no parquet files"):
        load_laion(str(tmp_path))
    with pytest.raises(SourceError, match="matches no file"):
        load_laion(str(tmp_path / "*.parquet"))
    with pytest.raises(SourceError, match="not found"):
        load_laion(str(tmp_path / "missing.parquet"))


def _bad_files(tmp_path, good_dir):
    d = tmp_path / "mixed"
    d.mkdir()
    good = open(os.path.join(good_dir, "part-00000.parquet"), "rb").read()
    (d / "a_good.parquet").write_bytes(good)
    (d / "b_truncated.parquet").write_bytes(good[: len(good) // 2])
    (d / "c_not_parquet.parquet").write_text("<html>this is not parquet</html>")
    (d / "d_good.parquet").write_bytes(good)
    return d


def test_corrupt_files_name_the_file_or_are_skipped_and_counted(tmp_path, synth_dir):
    d = _bad_files(tmp_path, synth_dir)
    with pytest.raises(SourceError, match="b_truncated.parquet"):
        list(load_laion(str(d), columns=["key"]))
    b = make_builder(str(d), on_error="skip", columns=["key"])
    rows = sum(t.num_rows for t in b.iter_tables())
    assert rows == 4000
    skipped = sorted(os.path.basename(s["file"]) for s in b.stats.files_skipped)
    assert skipped == ["b_truncated.parquet", "c_not_parquet.parquet"]
    assert b.stats.files == 4 and b.stats.rows_in == b.stats.rows_kept == 4000


def test_wrong_type_in_a_later_file_names_file_and_column(tmp_path):
    pq.write_table(pa.table({"URL": ["a"], "WIDTH": [10]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"URL": ["b"], "WIDTH": ["huge"]}), tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=r"b.parquet: column 'WIDTH'"):
        list(load_laion(str(tmp_path)))
    b = make_builder(str(tmp_path), on_error="skip")
    assert [t.num_rows for t in b.iter_tables()] == [1]
    assert b.stats.files_skipped[0]["file"].endswith("b.parquet")


def test_mixed_size_dtypes_across_files_cast_to_one_type(tmp_path):
    pq.write_table(pa.table({"URL": ["a"], "WIDTH": pa.array([10], pa.int32())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"URL": ["b"], "WIDTH": [20.0]}), tmp_path / "b.parquet")
    assert [r["width"] for r in load_laion(str(tmp_path))] == [10, 20]


def test_fsspec_url_source(synth_dir):
    url = "file://" + os.path.join(synth_dir, "part-00001.parquet")
    assert len(list(load_laion(url, columns=["key"]))) == 2000


@pytest.mark.parametrize("threads", [1, 4])
def test_serial_and_parallel_readers_agree(synth_dir, tmp_path, threads):
    """The parallel reader (several shards at once, the default) and the serial reader give
    the same rows, keys, order and counts, also with bad files in the middle (skipped, no
    duplicate rows)."""
    ref = make_builder(synth_dir, where="similarity > 0.3", threads=1)
    ref_rows = pa.concat_tables(list(ref.iter_tables()))
    got = make_builder(synth_dir, where="similarity > 0.3", threads=threads)
    got_rows = pa.concat_tables(list(got.iter_tables()))
    assert got_rows.equals(ref_rows)
    assert got.stats.as_dict() == ref.stats.as_dict()
    d = _bad_files(tmp_path, synth_dir)
    b = make_builder(str(d), on_error="skip", columns=["key"], threads=threads)
    keys = [k for t in b.iter_tables() for k in t.column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == 4000  # two good files (keys name the file), no duplicate
    assert len(b.stats.files_skipped) == 2


def _one_big_row_group(path, rows: int, page_rows: int = 20_000) -> None:
    """A parquet file with a single row group of ``rows`` rows and ~100-byte unique URLs, in
    data pages of ``page_rows`` rows (no dictionary)."""
    urls = pc.binary_join_element_wise(
        "http://img.example/", pc.cast(pa.array(np.arange(rows)), pa.string()), "/" + "x" * 80 + ".jpg", ""
    )
    table = pa.table(
        {"URL": urls, "TEXT": pa.array(["a caption"] * rows), "similarity": pa.array(np.linspace(0, 1, rows))}
    )
    pq.write_table(
        table,
        path,
        row_group_size=rows,
        use_dictionary=False,
        compression="none",
        data_page_size=page_rows * 100,
        write_statistics=True,
    )


_PEAK_ARROW_MEMORY = """
import sys
import pyarrow as pa
from laion_hf.builder import make_builder
b = make_builder(sys.argv[1], batch_size=4096, threads=int(sys.argv[2]))
n = sum(t.num_rows for t in b.iter_tables())
print(n, pa.default_memory_pool().max_memory())
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_big_row_group_is_streamed_batch_by_batch(tmp_path, threads):
    """A 400,000-row row group (a ~45 MB URL column chunk, like Spark-written LAION files but
    smaller) is decoded 4,096 rows at a time: Arrow's peak allocation stays a fraction of the
    column chunk (pyarrow's default pre-buffering would read it whole)."""
    import subprocess
    import sys

    path = tmp_path / "big.parquet"
    _one_big_row_group(path, 400_000)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0).total_compressed_size
    assert chunk > 40_000_000
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_ARROW_MEMORY, str(path), str(threads)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) == 400_000
    assert int(out[1]) < chunk / 4, f"peak Arrow memory {int(out[1]):,} B for a {chunk:,} B column chunk"


@pytest.mark.parametrize("threads", [1, 3])
def test_file_breaking_mid_row_group_names_it_and_keeps_counts(tmp_path, threads):
    """A data page corrupted in the middle of a row group: the error names the file after the
    rows before it were streamed; with on_error="skip" the other files are read whole, the
    broken one is listed, nothing is duplicated and the counts add up."""
    d = tmp_path / "d"
    d.mkdir()
    for name in ("a.parquet", "b_broken.parquet", "c.parquet"):
        _one_big_row_group(d / name, 100_000, page_rows=5_000)
    meta = pq.ParquetFile(d / "b_broken.parquet").metadata.row_group(0).column(0)
    raw = bytearray((d / "b_broken.parquet").read_bytes())
    middle = meta.data_page_offset + meta.total_compressed_size * 2 // 3
    raw[middle : middle + 4096] = b"\xff" * 4096  # page headers/data in the last third
    (d / "b_broken.parquet").write_bytes(bytes(raw))

    with pytest.raises(SourceError, match="b_broken.parquet"):
        list(make_builder(str(d), batch_size=4096, threads=threads).iter_tables())
    b = make_builder(str(d), batch_size=4096, threads=threads, on_error="skip", columns=["key", "url"])
    keys = [k for t in b.iter_tables() for k in t.column("key").to_pylist()]
    assert len(keys) == len(set(keys))
    from_broken = [k for k in keys if k.startswith("00001")]
    assert 0 < len(from_broken) < 100_000  # rows streamed before the bad page stay, once
    assert len(keys) == 200_000 + len(from_broken)
    stats = b.stats
    assert [s["file"].endswith("b_broken.parquet") for s in stats.files_skipped] == [True]
    assert stats.rows_in == stats.rows_kept + stats.removed_by_filter == len(keys)


def _break_row_group(path, rg: int, fraction: float = 2 / 3) -> None:
    """Overwrite data pages of row group ``rg`` about ``fraction`` into its first column chunk."""
    meta = pq.ParquetFile(path).metadata.row_group(rg).column(0)
    raw = bytearray(path.read_bytes())
    at = meta.data_page_offset + int(meta.total_compressed_size * fraction)
    raw[at : at + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("threads", [1, 3])
def test_skip_counts_every_row_of_a_half_read_file_as_read_or_lost(tmp_path, threads):
    """Issue 11 item 5: a file that breaks mid-way under on_error="skip" is listed with the rows
    read (whose kept rows were output) and the rows lost; rows_in + rows_lost is the input."""
    d = tmp_path / "d"
    d.mkdir()
    for name in ("a.parquet", "b_broken.parquet", "c.parquet"):
        _one_big_row_group(d / name, 50_000, page_rows=2_500)
    _break_row_group(d / "b_broken.parquet", 0)
    b = make_builder(str(d), batch_size=2048, threads=threads, on_error="skip", columns=["key", "url"])
    keys = [k for t in b.iter_tables() for k in t.column("key").to_pylist()]
    from_broken = sum(k.startswith("00001") for k in keys)
    assert 0 < from_broken < 50_000
    s = b.stats.as_dict()
    [entry] = s["files_skipped"]
    assert entry["file"].endswith("b_broken.parquet") and "b_broken.parquet" in entry["error"]
    assert entry["rows"] == 50_000 and entry["rows_read"] == from_broken
    assert entry["rows_read"] + entry["rows_lost"] == 50_000
    assert s["rows_lost"] == entry["rows_lost"] and s["rows_in"] + s["rows_lost"] == 150_000
    assert s["rows_in"] == s["rows_kept"] == len(keys)


def test_skip_accounting_with_row_group_shards_and_a_filter(tmp_path):
    """A broken middle row group of a 3-row-group file (one shard each) and an unreadable file:
    the lost rows are those of the broken row group not read; the unreadable file's rows are
    unknown (None) and listed; filtered rows count as read."""
    d = tmp_path / "d"
    d.mkdir()
    table = pa.table(
        {
            "URL": [f"http://x/{i}.jpg" for i in range(30_000)],
            "TEXT": ["c"] * 30_000,
            "similarity": np.linspace(0, 1, 30_000),
        }
    )
    pq.write_table(
        table, d / "a.parquet", row_group_size=10_000, use_dictionary=False, compression="none", data_page_size=100_000
    )
    _break_row_group(d / "a.parquet", 1, fraction=0.5)
    (d / "b.parquet").write_text("not parquet")
    b = make_builder(str(d), batch_size=1000, threads=1, on_error="skip", where="similarity >= 0.1")
    kept = sum(t.num_rows for t in b.iter_tables())
    s = b.stats.as_dict()
    entries = {os.path.basename(e["file"]): e for e in s["files_skipped"]}
    assert set(entries) == {"a.parquet", "b.parquet"}
    a = entries["a.parquet"]
    assert a["rows"] == 30_000 and 0 < a["rows_lost"] < 10_000 and a["rows_read"] == 30_000 - a["rows_lost"]
    assert entries["b.parquet"]["rows"] is None and entries["b.parquet"]["rows_lost"] is None
    assert s["rows_in"] + s["rows_lost"] == 30_000 and s["rows_in"] == a["rows_read"]
    assert s["rows_kept"] == kept and s["rows_in"] == kept + s["removed_by_filter"] and s["removed_by_filter"] > 0


def test_shards_and_read_shard_give_the_stream_shard_by_shard(synth_dir):
    """The public planning hooks (what the Ray engine distributes) read exactly the stream."""
    whole = make_builder(synth_dir, where="similarity > 0.3")
    want = pa.concat_tables(list(whole.iter_tables()))
    b = make_builder(synth_dir, where="similarity > 0.3")
    shards = b.shards()
    assert len(shards) > 2
    got = pa.concat_tables([t for shard in shards for t in b.read_shard(shard)])
    assert got.equals(want)
    assert b.stats.as_dict() == whole.stats.as_dict()


def test_reader_threads_stop_when_a_file_raises_or_the_consumer_stops(tmp_path, synth_dir):
    import threading

    def readers():
        return [t for t in threading.enumerate() if t.name.startswith("laion-hf-read")]

    d = _bad_files(tmp_path, synth_dir)
    with pytest.raises(SourceError) as caught:  # the traceback (kept here) holds the frames
        list(make_builder(str(d), threads=3).iter_tables())
    assert caught.value is not None and readers() == []
    it = make_builder(synth_dir, threads=3, batch_size=100).iter_tables()
    next(it)
    it.close()
    assert readers() == []


def test_stream_resumes_from_state_dict_mid_shard(synth_dir):
    """All shards are read in one parallel scan, but datasets' state_dict (shard index + rows
    seen in it) still resumes exactly."""
    full = [r["key"] for r in load_laion(synth_dir, columns=["key"], where="similarity > 0.29")]
    for k in (1, 700, 2500, len(full) - 1):
        ds = load_laion(synth_dir, columns=["key"], where="similarity > 0.29")
        head = []
        for row in ds:
            head.append(row["key"])
            if len(head) == k:
                state = ds.state_dict()
                break
        resumed = load_laion(synth_dir, columns=["key"], where="similarity > 0.29")
        resumed.load_state_dict(state)
        assert head + [r["key"] for r in resumed] == full


def test_workers_and_nodes_still_split_shards(synth_dir):
    ds = load_laion(synth_dir, columns=["key"])
    parts = [split_dataset_by_node(ds, rank=r, world_size=3) for r in range(3)]
    keys = [[r["key"] for r in p] for p in parts]
    assert sorted(sum(keys, [])) == sorted(r["key"] for r in ds) and all(len(k) == 2000 for k in keys)


def test_filter_cli_skip_writes_and_prints_rows_read_and_lost(tmp_path, capsys):
    """`laion-hf filter --on-error skip`: stats.json and the printed line say how many rows of
    the broken file were read and lost, and the parts hold exactly the rows read and kept."""
    import json

    from laion_hf.cli import main

    d = tmp_path / "d"
    d.mkdir()
    for name in ("a.parquet", "b_broken.parquet"):
        _one_big_row_group(d / name, 40_000, page_rows=2_000)
    _break_row_group(d / "b_broken.parquet", 0)
    out = tmp_path / "out"
    assert main(["filter", str(d), "--out", str(out), "--on-error", "skip", "--no-progress"]) == 0
    st = json.loads((out / "stats.json").read_text())
    [e] = st["files_skipped"]
    assert e["rows"] == 40_000 and e["rows_read"] + e["rows_lost"] == 40_000 and e["rows_lost"] > 0
    assert st["rows_in"] + st["rows_lost"] == 80_000 and st["rows_in"] == 40_000 + e["rows_read"]
    written = sum(pq.ParquetFile(out / f).metadata.num_rows for f in st["output_files"])
    assert written == st["rows_kept"] == st["rows_in"]
    printed = capsys.readouterr().out
    assert f"({e['rows_read']:,} of 40,000 rows read, {e['rows_lost']:,} lost)" in printed


def test_one_on_error_vocabulary_warn_is_deprecated_skip_and_mark_is_refused(tmp_path, synth_dir, caplog):
    """Issue 17: raise / skip / mark across the library; the builder's old ``warn`` still works
    as ``skip`` with a deprecation warning, and ``mark`` (no rows to mark in a bad file) is
    refused naming the builder."""
    d = _bad_files(tmp_path, synth_dir)
    with pytest.warns(DeprecationWarning, match="on_error='warn' is deprecated, use on_error='skip'"):
        b = make_builder(str(d), on_error="warn", columns=["key"])
    assert b.config.on_error == "skip"
    with caplog.at_level("WARNING", logger="laion_hf.builder"):
        assert sum(t.num_rows for t in b.iter_tables()) == 4000
    assert "b_truncated.parquet" in caplog.text and "c_not_parquet.parquet" in caplog.text
    with pytest.raises(SourceError, match="the metadata builder: on_error='mark' is not supported here"):
        make_builder(str(d), on_error="mark")


def test_cli_on_error_warn_still_works_and_says_it_is_deprecated(tmp_path, synth_dir, capsys):
    from laion_hf.cli import main

    d = _bad_files(tmp_path, synth_dir)
    assert main(["stats", str(d), "--on-error", "warn"]) == 0
    err = capsys.readouterr().err
    assert "--on-error warn is deprecated, use --on-error skip" in err


def test_cli_stats_lists_skipped_files_with_their_rows(tmp_path, synth_dir, capsys):
    """`laion-hf stats --on-error skip` says, as `filter` does, how many rows of a skipped file
    were read and lost."""
    from laion_hf.cli import main

    d = _bad_files(tmp_path, synth_dir)
    assert main(["stats", str(d), "--on-error", "skip"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == 2, lines
    assert all(" lost): " in ln and ("rows read" in ln or "rows unknown" in ln) for ln in lines), lines
