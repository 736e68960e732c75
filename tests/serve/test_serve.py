"""``laion-hf serve``: clip-retrieval's own ClipClient against our server, clip back's rules
(dedup, safety), bad requests, and the guarded image_url fetch."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _npy(embed: Path, kind: str) -> np.ndarray:
    d, pre = {"image": ("img_emb", "img_emb_"), "text": ("text_emb", "text_emb_")}[kind]
    files = sorted((embed / d).glob(f"{pre}*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return np.concatenate([np.load(f).astype(np.float32) for f in files])


def _meta(embed: Path) -> list[dict]:
    files = sorted((embed / "metadata").glob("*.parquet"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _exact_ids(x: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return np.argsort(-(x @ q.ravel()), kind="stable")[:k].tolist()


def _client(module, url: str, **kw):
    opts = {
        "indice_name": "index",
        "num_images": 5,
        "deduplicate": False,
        "use_safety_model": False,
        "use_violence_detector": False,
    }
    return module.ClipClient(f"{url}/knn-service", **{**opts, **kw})


def _jpeg(tiny, row: int) -> bytes:
    return pq.read_table(tiny[0] / "00000.parquet")["image"][row].as_py()["bytes"]


def test_clip_client_by_text_image_and_embedding(served, clip_client, tiny, embedder, tmp_path):
    _, embed, _ = tiny
    img, meta = _npy(embed, "image"), _meta(embed)
    client = _client(clip_client, served)
    q = embedder.encode_text(["a red thing"])
    got = client.query(text="a red thing")
    assert [r["id"] for r in got] == _exact_ids(img, q, 5)
    for r in got:
        assert r["url"] == meta[r["id"]]["url"] and r["caption"] == meta[r["id"]]["caption"]
        assert r["similarity"] == pytest.approx(float(img[r["id"]] @ q.ravel()), abs=1e-4)
    (tmp_path / "q.jpg").write_bytes(_jpeg(tiny, 6))
    got = client.query(image=str(tmp_path / "q.jpg"))
    with Image.open(tmp_path / "q.jpg") as im:
        qi = embedder.encode_pil([im.convert("RGB")])
    assert [r["id"] for r in got] == _exact_ids(img, qi, 5) and got[0]["id"] == 6
    assert got[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    got = client.query(embedding_input=img[11].tolist())
    assert [r["id"] for r in got] == _exact_ids(img, img[11], 5) and got[0]["id"] == 11
    text_client = _client(clip_client, served, modality=clip_client.Modality.TEXT, num_images=3)
    got = text_client.query(text="a red thing")
    assert [r["id"] for r in got] == _exact_ids(_npy(embed, "text"), q, 3)


def _clip_back_post_filter(emb: np.ndarray, punsafe: np.ndarray) -> np.ndarray:
    """clip back's rule, written here independently: connected components of the graph of
    similarity > 0.94 (keep each component's first), then drop punsafe > 0.5."""
    n = len(emb)
    x = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    adj = (x @ x.T) > 0.94
    seen, remove = set(), set()
    for start in range(n):
        if start in seen:
            continue
        comp, todo = [], [start]
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            comp.append(v)
            todo += [int(w) for w in np.flatnonzero(adj[v]) if w not in seen]
        remove |= set(comp) - {min(comp)}
    return np.array([i not in remove and not punsafe[i] > 0.5 for i in range(n)])


def test_dedup_safety_and_unavailable_filters_reported(served, tiny, embedder):
    _, embed, _ = tiny
    img, meta = _npy(embed, "image"), _meta(embed)
    q = embedder.encode_text(["a green thing"])
    body = {"text": "a green thing", "modality": "image", "num_images": 4, "num_result_ids": 30,
            "indice_name": "index", "deduplicate": True, "use_safety_model": True,
            "use_violence_detector": True, "aesthetic_score": 9, "aesthetic_weight": 0.5, "use_mclip": False}  # fmt: skip
    r = requests.post(f"{served}/knn-service", data=json.dumps(body), timeout=60)
    assert r.status_code == 200
    unavailable = r.headers["X-Unavailable-Filters"]
    assert "use_violence_detector" in unavailable and "aesthetic_score" in unavailable
    assert "use_safety_model" not in unavailable  # the metadata has punsafe
    top = np.array(_exact_ids(img, q, 30))
    keep = _clip_back_post_filter(img[top], np.array([meta[i]["punsafe"] for i in top]))
    got = r.json()
    assert [g["id"] for g in got] == top[keep].tolist() and 0 < len(got) < 30
    assert all("url" in g for g in got[:4]) and not any("url" in g for g in got[4:])
    assert all(meta[g["id"]]["punsafe"] <= 0.5 for g in got)


def test_routes_of_clip_back_and_metadata(served, tiny):
    meta = _meta(tiny[1])
    assert requests.get(f"{served}/indices-list", timeout=10).json() == ["index"]
    cfg = requests.get(f"{served}/config.json", timeout=10).json()
    assert cfg == {"defaultBackend": served, "defaultIndex": "index", "urlColumn": "url"}
    assert requests.get(f"{served}/health", timeout=10).text == "ok"
    assert "laion-hf explorer" in requests.get(f"{served}/", timeout=10).text  # the page (serve/page.py)
    r = requests.post(f"{served}/metadata", data=json.dumps({"ids": [3, 0], "indice_name": "index"}), timeout=10)
    assert r.json() == [{"id": 3, "metadata": meta[3]}, {"id": 0, "metadata": meta[0]}]


GOOD = {"text": "a red thing", "modality": "image", "num_images": 3, "indice_name": "index"}
BAD = [
    ({k: v for k, v in GOOD.items() if k != "modality"}, "modality"),
    ({k: v for k, v in GOOD.items() if k != "num_images"}, "num_images"),
    ({**GOOD, "aesthetic_score": None}, "aesthetic_score"),
    ({**GOOD, "aesthetic_score": "pretty"}, "aesthetic_score"),
    ({**GOOD, "aesthetic_weight": [1]}, "aesthetic_weight"),
    ({**GOOD, "num_images": "3"}, "num_images"),
    ({**GOOD, "num_images": 0}, "num_images"),
    ({**GOOD, "num_result_ids": 10**9}, "num_result_ids"),
    ({**GOOD, "modality": "video"}, "modality"),
    ({**GOOD, "deduplicate": "yes"}, "deduplicate"),
    ({**GOOD, "text": 5}, "text"),
    ({**GOOD, "indice_name": "laion5B"}, "unknown index"),
    ({k: v for k, v in GOOD.items() if k != "text"}, "give one of"),
    ({**GOOD, "text": None, "embedding_input": [0.1] * 3}, "embedding_input"),
    ({**GOOD, "text": None, "embedding_input": ["a"] * 512}, "embedding_input"),
    ({**GOOD, "text": None, "image": "not base64!"}, "base64"),
    (
        {**GOOD, "text": None, "image": base64.b64encode(b"not an image").decode()},
        "does not decode",
    ),
    ({**GOOD, "text": None, "image_url": "file:///etc/passwd"}, "image_url"),
    ([GOOD], "JSON object"),
]


@pytest.mark.parametrize("body,culprit", BAD, ids=[c for _, c in BAD])
def test_bad_knn_requests_get_400(served, body, culprit):
    r = requests.post(f"{served}/knn-service", data=json.dumps(body), timeout=60)
    assert r.status_code == 400, r.text
    assert culprit in r.json()["error"]


@pytest.mark.parametrize("data,culprit", [
    (b"{not json", "not valid JSON"),
    (b"x" * (16 * 2**20 + 1), "larger than"),
    (json.dumps({"ids": [0, 40]}).encode(), "out of range"),
    (json.dumps({"ids": "0"}).encode(), "ids"),
    (json.dumps({"ids": [0], "indice_name": "nope"}).encode(), "unknown index"),
])  # fmt: skip
def test_bad_metadata_and_raw_bodies_get_400(served, data, culprit):
    route = "/knn-service" if culprit in ("not valid JSON", "larger than") else "/metadata"
    r = requests.post(f"{served}{route}", data=data, timeout=60)
    assert r.status_code == 400, r.text
    assert culprit in r.json()["error"]


def test_image_url_to_a_private_address_is_refused_by_default(served, clip_client, image_server):
    url = image_server.image_url(64, 64)
    got = _client(clip_client, served).query(image=url)  # ClipClient sends http(s) images as image_url
    assert isinstance(got, dict) and "ssrf_blocked" in got["error"]


def test_image_url_fetched_by_the_guarded_fetcher_when_allowed(served_private, clip_client, image_server,
                                                               tiny, embedder):  # fmt: skip
    url = image_server.image_url(80, 64, seed=3)
    data = requests.get(url, timeout=10).content
    with Image.open(io.BytesIO(data)) as im:
        q = embedder.encode_pil([im.convert("RGB")])
    got = _client(clip_client, served_private).query(image=url)
    assert [r["id"] for r in got] == _exact_ids(_npy(tiny[1], "image"), q, 5)
    assert (
        requests.post(
            f"{served_private}/knn-service",
            timeout=30,
            data=json.dumps({**GOOD, "text": None, "image_url": image_server.url("/nothing-here.jpg")}),
        ).status_code
        == 400
    )


def test_serve_refuses_misaligned_metadata(tiny, tmp_path):
    src = tiny[1] / "metadata" / "metadata_1.parquet"
    (tmp_path / "meta").mkdir()
    for f in (tiny[1] / "metadata").glob("*.parquet"):
        (tmp_path / "meta" / f.name).write_bytes(f.read_bytes())
    t = pq.read_table(src)
    pq.write_table(t.take(list(range(t.num_rows))[::-1]), tmp_path / "meta" / src.name)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", "import sys; from laion_hf.cli import main; sys.exit(main())",
                        "serve", str(tiny[2]), "--metadata", str(tmp_path / "meta"), "--port", "0"],
                       capture_output=True, text=True, timeout=300, env=env, check=False)  # fmt: skip
    assert r.returncode == 1 and "does not match the index" in r.stderr


def test_results_carry_the_shards_images(shards_index, serve_inprocess, clip_client, tiny):
    shards, index = shards_index
    rows = [r for f in sorted(shards.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    vec = rows[7]["image_embedding"]
    with serve_inprocess([index]) as url:
        got = _client(clip_client, url, num_images=2).query(embedding_input=vec)
        many = requests.post(f"{url}/knn-service", timeout=30, data=json.dumps(
            {"embedding_input": vec, "modality": "image", "num_images": 2, "num_result_ids": 6}))  # fmt: skip
    assert got[0]["id"] == 7 and got[0]["key"] == rows[7]["key"]
    for g in got:
        assert base64.b64decode(g["image"]) == rows[g["id"]]["image"]["bytes"]
        assert "image_embedding" not in g
    items = many.json()
    assert len(items) == 6 and all("image" in g for g in items[:2])
    assert not any("image" in g or "url" in g for g in items[2:])
