"""The page's routes over real HTTP, no browser: page and headers, images from the shards,
export (parquet for load_laion, JSON, URL list), overview figures, 400s for bad requests."""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

STATIC = Path(__file__).resolve().parents[2] / "laion_hf" / "serve" / "static"


def get(server, path: str):
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post(server, path: str, body) -> tuple[int, dict, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        server.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def subset_table(subset_dir) -> pa.Table:
    return ds.dataset(sorted(str(p) for p in subset_dir.rglob("*.parquet"))).to_table()


def test_page_is_served_with_a_strict_csp(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    html = body.decode()
    # no inline script or style: every <script> has a src, no style attributes or blocks, no CDN
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "style=" not in html and "<style" not in html and "//cdn" not in html and "https://" not in html
    for path in ("/static/app.js", "/static/style.css"):
        status, headers, _ = get(server, path)
        assert status == 200 and "Content-Security-Policy" in headers
    assert get(server, "/static/../page.py")[0] == 404
    assert get(server, "/knn-service")[1].get("Content-Security-Policy") == headers["Content-Security-Policy"]


def test_page_script_never_writes_html():
    js = (STATIC / "app.js").read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert sink not in js, sink


def test_images_come_from_the_shards(server, subset_dir, h):
    table = subset_table(subset_dir)
    status, headers, body = get(server, f"/image/{h.INDEX}/3")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == table.column("image")[3].as_py()["bytes"]
    for row in (h.subset.BROKEN_ROW, h.subset.MISSING_ROW, h.subset.N):
        status, _, body = get(server, f"/image/{h.INDEX}/{row}")
        assert status == 404 and str(row).encode() in body
    assert get(server, f"/image/{h.INDEX}/abc")[0] == 400
    status, _, body = get(server, "/image/nope/0")
    assert status == 400 and b"unknown index 'nope'" in body


def test_export_formats(server, subset_dir, tmp_path, h):
    from laion_hf import load_laion

    table = subset_table(subset_dir)
    ids, sims = [5, 2, 40], [0.3, 0.2, 0.1]
    status, headers, body = post(
        server,
        "/export",
        {"indice_name": h.INDEX, "ids": ids, "similarities": sims, "format": "parquet"},
    )
    assert status == 200 and 'filename="laion-hf-export-3.parquet"' in headers["Content-Disposition"]
    exported = pq.read_table(io.BytesIO(body))
    assert "image" not in exported.column_names and "image_embedding" not in exported.column_names
    assert exported.column("query_similarity").to_pylist() == sims
    (tmp_path / "export.parquet").write_bytes(body)
    rows = list(load_laion(str(tmp_path / "export.parquet")))
    assert [r["key"] for r in rows] == [table.column("key")[i].as_py() for i in ids]
    assert [r["caption"] for r in rows] == [table.column("caption")[i].as_py() for i in ids]

    status, headers, body = post(server, "/export", {"ids": ids, "format": "json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert [r["url"] for r in json.loads(body)] == [table.column("url")[i].as_py() for i in ids]
    status, headers, body = post(server, "/export", {"ids": ids, "format": "urls"})
    assert status == 200 and body.decode().splitlines() == [table.column("url")[i].as_py() for i in ids]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not JSON"),
        ([1, 2], "JSON object"),
        ({"ids": [1], "format": "xlsx"}, "unknown export format 'xlsx'"),
        ({"ids": []}, "non-empty list"),
        ({"ids": "1,2"}, "non-empty list"),
        ({"ids": [1, 72]}, "holds 72"),
        ({"ids": [1, -1]}, "holds -1"),
        ({"ids": [True]}, "holds True"),
        ({"ids": [1.5]}, "holds 1.5"),
        ({"ids": [1, 2], "similarities": [0.1]}, "as long as 'ids'"),
        ({"ids": [1], "similarities": ["x"]}, "must hold numbers"),
        ({"ids": list(range(100_001))}, "at most 100,000"),
        ({"ids": [1], "indice_name": "other"}, "unknown index 'other'"),
    ],
)
def test_bad_export_requests_get_a_400(server, body, message):
    status, _, text = post(server, "/export", body)
    assert status == 400 and message in text.decode()


def test_overview_has_the_cards_figures(server, subset_dir, tmp_path, h):
    from laion_hf.serve.page import MetadataSource

    stats = json.loads((subset_dir / "stats.json").read_text())["configs"]["default"]
    status, _, body = get(server, f"/overview?indice_name={h.INDEX}")
    data = json.loads(body)
    assert status == 200 and data["source"] == "stats.json"
    assert data["histograms"] == stats["histograms"]
    assert dict(data["counts"])["rows"] == h.subset.N
    assert sum(data["languages"].values()) == h.subset.N
    # without stats.json (a plain metadata file) the same figures are computed from the rows
    pq.write_table(subset_table(subset_dir).drop_columns(["image"]), tmp_path / "meta.parquet")
    computed = MetadataSource.from_files("meta", [str(tmp_path / "meta.parquet")]).overview()
    assert computed["source"] == "metadata" and computed["histograms"] == stats["histograms"]
    assert dict(computed["counts"]) == {"rows": h.subset.N, "status success": h.subset.N}
    assert get(server, "/overview?indice_name=nope")[0] == 400


def test_only_clip_backs_api_is_readable_from_other_origins(server, h):
    """The page's own routes (images, overview, the page) carry no CORS header, so a web site
    open in the same browser cannot read a user's local subset; clip back's API keeps `*`."""
    _, headers, _ = get(server, f"/image/{h.INDEX}/3")
    assert "Access-Control-Allow-Origin" not in headers
    _, headers, _ = get(server, "/")
    assert "Access-Control-Allow-Origin" not in headers
    _, headers, _ = get(server, "/indices-list")
    assert headers["Access-Control-Allow-Origin"] == "*"
