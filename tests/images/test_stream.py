"""with_images on streaming and map-style datasets: columns and types, lazy Image(), failed
rows kept (or dropped and counted), prefetching, DataLoader workers, hash verification."""

from __future__ import annotations

import hashlib
import time

import datasets
import pyarrow as pa
import pytest

from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.stream import IMAGE_COLUMNS, fetch_counts, with_images
from laion_hf.testing.image_server import ImageServer, make_image

from .conftest import FAST


def _ds(srv, n_ok=10, n_bad=2, shards=2):
    urls = [srv.image_url(100 + i, 80 + i) for i in range(n_ok)] + [srv.fault_url("404")] * n_bad
    return datasets.Dataset.from_dict(
        {
            "key": [str(i) for i in range(len(urls))],
            "url": urls,
            "caption": [f"c{i}" for i in range(len(urls))],
            "width": [1] * len(urls),
        },
        features=datasets.Features(
            {
                "key": datasets.Value("string"),
                "url": datasets.Value("string"),
                "caption": datasets.Value("string"),
                "width": datasets.Value("int32"),
            }
        ),
    )


def test_columns_types_and_lazy_image(server):
    ds = with_images(_ds(server).to_iterable_dataset(num_shards=2), batch_size=4, resize_mode="no", **FAST)
    assert isinstance(ds, datasets.IterableDataset)
    assert isinstance(ds.features["image"], datasets.Image)
    for c in ("width", "height", "original_width", "original_height"):
        assert ds.features[c] == datasets.Value("int32")
    tables = list(ds.with_format("arrow").iter(batch_size=100))
    t = pa.concat_tables(tables)
    assert t.num_rows == 12
    assert t.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert [c for c in IMAGE_COLUMNS if c not in t.column_names] == []
    assert t.column_names[:4] == ["key", "url", "caption", "width"]  # input columns kept in place
    rows = list(ds)
    ok = [r for r in rows if r["status"] == "success"]
    bad = [r for r in rows if r["status"] != "success"]
    assert len(ok) == 10 and len(bad) == 2
    r = ok[3]
    assert r["image"].size == (r["width"], r["height"]) == (r["original_width"], r["original_height"])
    assert r["sha256"] and len(r["sha256"]) == 64
    assert all(b["status"] == "http_404" and b["image"] is None and b["width"] is None and b["error"] for b in bad)


def test_drop_failed_drops_and_counts(server):
    before = fetch_counts().get("http_404", 0)
    ds = with_images(_ds(server, n_bad=3).to_iterable_dataset(num_shards=1), drop_failed=True, **FAST)
    rows = list(ds.with_format("arrow").iter(batch_size=100))
    assert sum(t.num_rows for t in rows) == 10
    assert fetch_counts()["http_404"] - before == 3


def test_next_batch_is_fetched_while_the_current_one_is_used():
    with ImageServer(latency=0.05) as srv:
        ds = with_images(_ds(srv, n_ok=16, n_bad=0).to_iterable_dataset(num_shards=1), batch_size=4, prefetch=1, **FAST)
        it = iter(ds.with_format("arrow").iter(batch_size=4))
        first = next(it)
        assert first.num_rows == 4
        deadline = time.monotonic() + 3
        while srv.request_count < 8 and time.monotonic() < deadline:
            time.sleep(0.01)  # the consumer is "busy": batch 2 must arrive by itself
        assert srv.request_count == 8  # batch 2 fetched ahead, and not batch 3
        time.sleep(0.3)
        assert srv.request_count == 8
        rest = list(it)
        assert sum(t.num_rows for t in rest) == 12


def test_dataloader_workers_each_fetch_their_shards(server):
    import torch

    ds = with_images(_ds(server, n_ok=12, n_bad=0).to_iterable_dataset(num_shards=4), batch_size=3, **FAST)
    dl = torch.utils.data.DataLoader(ds.with_format("arrow"), num_workers=2, batch_size=None)
    keys, statuses = [], []
    for t in dl:
        keys += t.column("key").to_pylist()
        statuses += t.column("status").to_pylist()
    assert sorted(keys, key=int) == [str(i) for i in range(12)]
    assert statuses == ["success"] * 12


def test_map_style_dataset(server):
    out = with_images(_ds(server), image_size=32, resize_mode="center_crop", **FAST)
    assert isinstance(out, datasets.Dataset) and out.num_rows == 12
    assert out[0]["image"].size == (32, 32)
    assert out.features["image"] == datasets.Image()
    assert out[11]["status"] == "http_404"


def test_hash_verification(server):
    good = hashlib.sha256(make_image(100, 80, "jpg")).hexdigest()
    ds = datasets.Dataset.from_dict({"url": [server.image_url(100, 80)] * 2, "h": [good, "0" * 64]})
    out = with_images(ds, hash_column="h", **FAST)
    assert out["status"] == ["success", st.HASH_MISMATCH]
    assert good in out[1]["error"]


def test_bad_arguments_name_the_culprit(server):
    ds = _ds(server).to_iterable_dataset()
    with pytest.raises(FetchError, match="'link'"):
        with_images(ds, url_column="link")
    with pytest.raises(FetchError, match="unknown image option 'image_sise'"):
        with_images(ds, image_sise=3)
    with pytest.raises(FetchError, match="resize_mode"):
        with_images(ds, resize_mode="stretch")
