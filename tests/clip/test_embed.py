"""`laion-hf embed`: clip-retrieval layout from img2dataset tars and parquet shards, resume."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_hf.cli import main
from laion_hf.clip import embed_shards, read_shards, with_clip
from laion_hf.errors import ShardError


def _write_img2dataset_shard(folder, shard: int, images: list[bytes], h) -> list[str]:
    """One img2dataset output shard: {shard}.tar ({key}.jpg/.txt/.json), {shard}.parquet, {shard}_stats.json."""
    keys = []
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tf:
        for i, data in enumerate(images):
            key = f"{shard:05d}{i:04d}"
            keys.append(key)
            meta = {"url": f"http://127.0.0.1/img/{key}.jpg", "caption": f"caption {key}", "key": key,
                    "status": "success", "error_message": None, "width": 256, "height": 256, "similarity": 0.3}  # fmt: skip
            for ext, payload in (("jpg", data), ("txt", meta["caption"].encode()), ("json", json.dumps(meta).encode())):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
    pq.write_table(pa.table({"key": keys, "status": ["success"] * len(keys)}), folder / f"{shard:05d}.parquet")
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(keys), "successes": len(keys)}))
    return keys


@pytest.fixture()
def shards(tmp_path, h):
    folder = tmp_path / "shards"
    folder.mkdir()
    imgs0 = [h.jpeg(256, 256, seed=i) for i in range(7)]
    imgs0[3] = b"\xff\xd8\xff\xe0 corrupt jpeg"
    imgs1 = [h.jpeg(300, 200, seed=10 + i) for i in range(5)]
    keys = [_write_img2dataset_shard(folder, 0, imgs0, h), _write_img2dataset_shard(folder, 1, imgs1, h)]
    return folder, keys, [imgs0, imgs1]


def test_embed_writes_clip_retrieval_layout_row_aligned(shards, tmp_path, tiny, h, capsys):
    folder, keys, imgs = shards
    out = tmp_path / "out"
    rc = main(
        ["embed", str(folder), "--out", str(out), "--head", "aesthetic_v1", "--no-progress", "--dtype", "float32"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "embedded 11/12 rows" in printed and "images/s" in printed
    for n, (k, im) in enumerate(zip(keys, imgs)):
        img = np.load(out / "img_emb" / f"img_emb_{n}.npy")
        txt = np.load(out / "text_emb" / f"text_emb_{n}.npy")
        meta = pq.read_table(out / "metadata" / f"metadata_{n}.parquet")
        stats = json.loads((out / "stats" / f"stats_{n}.json").read_text())
        good = [i for i in range(len(k)) if not (n == 0 and i == 3)]
        assert img.shape == txt.shape == (len(good), tiny.embed_dim) and img.dtype == np.float32
        assert meta["key"].to_pylist() == [k[i] for i in good]  # row-aligned, tar order kept
        assert meta["caption"].to_pylist() == [f"caption {k[i]}" for i in good]
        assert meta["url"].to_pylist()[0].startswith("http://127.0.0.1/img/")
        assert {"clip_similarity", "aesthetic_score_v1", "similarity", "width"} <= set(meta.column_names)
        assert "image" not in meta.column_names
        # row i of the npy files is the embedding of metadata row i (checked against the stream)
        ref = with_clip(h.image_table([im[i] for i in good], [f"caption {k[i]}" for i in good]), tiny)
        np.testing.assert_allclose(img, h.as_matrix(ref["image_embedding"]), atol=1e-5)
        np.testing.assert_allclose(txt, h.as_matrix(ref["text_embedding"]), atol=1e-5)
        np.testing.assert_allclose((img * txt).sum(1), meta["clip_similarity"].to_numpy(), atol=1e-4)
        # every input row is counted
        assert stats["count"] == len(k) and stats["embedded"] + stats["failed"] == stats["count"]
        assert sum(stats["status_dict"].values()) == stats["count"]
    assert json.loads((out / "stats" / "stats_0.json").read_text())["status_dict"] == {"success": 6, "decode_error": 1}
    cfg = json.loads((out / "embed_config.json").read_text())
    assert cfg["model"] == "laion-hf-tiny" and cfg["dtype"] == "float32" and cfg["embed_dim"] == 512


def test_embed_resumes_per_part(shards, tmp_path):
    folder, _, _ = shards
    out = tmp_path / "out"
    first = embed_shards([str(folder)], out, progress=False)
    assert first["parts"] == 2 and first["parts_skipped"] == 0 and first["count"] == 12 and first["embedded"] == 11
    assert np.load(out / "img_emb" / "img_emb_0.npy").dtype == np.float16  # clip-retrieval's default
    mtime0 = os.stat(out / "metadata" / "metadata_0.parquet").st_mtime_ns
    saved1 = np.load(out / "img_emb" / "img_emb_1.npy")
    # a kill during part 1: its embeddings were written, its metadata (written last) was not
    os.remove(out / "metadata" / "metadata_1.parquet")
    (out / "img_emb" / "img_emb_1.npy").write_bytes(b"half-written")
    second = embed_shards([str(folder)], out, progress=False)
    assert second["parts_skipped"] == 1 and second["count"] == 5 and second["embedded"] == 5
    assert os.stat(out / "metadata" / "metadata_0.parquet").st_mtime_ns == mtime0  # part 0 untouched
    np.testing.assert_array_equal(np.load(out / "img_emb" / "img_emb_1.npy"), saved1)
    third = embed_shards([str(folder)], out, progress=False)
    assert third["parts_skipped"] == 2 and third["count"] == 0
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    with pytest.raises(ShardError, match="another configuration"):
        embed_shards([str(folder)], out, progress=False, dtype="float32")


def test_embed_parquet_shards_with_image_struct(tmp_path, h, tiny):
    table = h.image_table([h.jpeg(256, 256, i) for i in range(6)], [f"c{i}" for i in range(6)])
    pq.write_table(table.slice(0, 4), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(4), tmp_path / "part-1.parquet")
    res = embed_shards([str(tmp_path / "*.parquet")], tmp_path / "out", embedder=tiny, progress=False)
    assert res["count"] == res["embedded"] == 6
    meta = pq.read_table(tmp_path / "out" / "metadata" / "metadata_1.parquet")
    assert meta["key"].to_pylist() == ["000000004", "000000005"]
    assert np.load(tmp_path / "out" / "img_emb" / "img_emb_0.npy").shape == (4, 512)


def test_embed_input_errors_name_the_culprit(tmp_path, shards):
    folder, _, _ = shards
    with pytest.raises(ShardError, match="no 'image' column"):
        embed_shards([str(folder / "00000.parquet")], tmp_path / "o1", progress=False)
    with pytest.raises(ShardError, match="no such file"):
        embed_shards([str(tmp_path / "nope-*.tar")], tmp_path / "o2", progress=False)
    broken = tmp_path / "broken.tar"
    broken.write_bytes((folder / "00000.tar").read_bytes()[:700] + b"\x00garbage" * 10)
    with pytest.raises(ShardError, match="broken.tar"):
        embed_shards([str(broken)], tmp_path / "o3", progress=False)
    assert main(["embed", str(tmp_path / "missing.tar"), "--out", str(tmp_path / "o4"), "--no-progress"]) == 1


def test_read_shards_groups_tar_members_by_key(shards):
    folder, keys, _ = shards
    t = pa.concat_tables(list(read_shards(str(folder / "00001.tar"), batch_rows=2)))
    assert t["key"].to_pylist() == keys[1]
    assert t["status"].to_pylist() == ["success"] * 5
    assert t.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_a_failed_first_run_does_not_lock_the_output_folder(tmp_path, shards):
    """Issue 11 item 13: the first run fails on its input; a rerun with the right input works."""
    folder, _, _ = shards
    out = tmp_path / "out"
    with pytest.raises(ShardError, match="no 'image' column"):
        embed_shards([str(folder / "00000.parquet")], out, progress=False)
    res = embed_shards([str(folder / "00000.tar")], out, progress=False)
    assert res["count"] == 7 and json.loads((out / "embed_config.json").read_text())["inputs"] == [
        str(folder / "00000.tar")
    ]
