"""The 1,000 real LAION URL shapes, rewritten to the loopback server (scheme and host only;
path, query and odd characters kept). The original hosts are never contacted. Every row ends
counted with a status, and the stats sum to the input count."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import laion_hf
from laion_hf.images.download import download
from laion_hf.testing.image_server import ImageServer

from .conftest import FAST

# the 1k sample embedded in the package (a copy of shared/data/web_url_caption_1k.parquet)
DATA = Path(laion_hf.__file__).parent / "data" / "web_url_caption_1k.parquet"
MALFORMED = ["", "not a url", "http://", "ftp://files.example.com/a.jpg", "http://[::1", "//cdn.example.com/a.jpg"]


@pytest.fixture(scope="module")
def real():
    if not DATA.exists():
        pytest.fail(f"{DATA} is missing: the package's embedded 1k URL sample")
    return pq.read_table(DATA, columns=["URL", "TEXT"])


def test_rewrite_keeps_path_query_and_odd_characters(server):
    u = "https://www.example.com:443/SSP Applications/a%2Fb/img.jpg?w=356&h=537&x=%E2%9C%93#frag"
    r = server.rewrite_url(u)
    assert r == server.base_url + "/SSP Applications/a%2Fb/img.jpg?w=356&h=537&x=%E2%9C%93#frag"
    assert server.rewrite_url("http://8.8.8.8") == server.base_url + "/"
    with pytest.raises(ValueError):
        server.rewrite_url("no scheme at all")


def test_every_real_url_ends_with_a_status(real, tmp_path):
    with ImageServer() as srv:
        urls = real.column("URL").to_pylist()
        rewritten = [srv.rewrite_url(u) for u in urls]
        assert all(u.startswith(srv.base_url + "/") for u in rewritten)
        assert [urlsplit(u).query for u in rewritten] == [urlsplit(u).query for u in urls]
        t = pa.table(
            {"url": rewritten + MALFORMED, "caption": real.column("TEXT").to_pylist() + ["m"] * len(MALFORMED)}
        )
        stats = download(
            t, tmp_path / "out", shard_size=400, progress=False, **{**FAST, "concurrency": 64, "per_host": 32}
        )
        assert stats["count"] == 1000 + len(MALFORMED)
        assert stats["successes"] + stats["failed_to_download"] + stats["failed_to_resize"] == stats["count"]
        assert sum(stats["status_dict"].values()) == stats["count"]
        assert stats["status_dict"]["http_404"] == 1000  # the server knows none of these paths
        assert stats["status_dict"]["invalid_url"] == 5 and stats["status_dict"]["unsupported_scheme"] == 1
        # one request per real URL (a 404 is not retried), none for the malformed ones
        assert srv.request_count == 1000
    meta = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "out").glob("0*.parquet"))])
    assert meta.num_rows == 1006 and meta.column("status").null_count == 0
    assert pc.all(pc.invert(pc.is_null(meta.column("error_message").slice(0, 1000)))).as_py()
