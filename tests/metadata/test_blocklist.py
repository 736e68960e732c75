import hashlib

import numpy as np
import pyarrow as pa
import pytest

from laion_hf import load_laion
from laion_hf.blocklist import Blocklist
from laion_hf.builder import make_builder
from laion_hf.errors import BlocklistError


def test_md5_and_sha256_lists_remove_rows_and_count(tmp_path, synth_dir):
    urls = [r["url"] for r in load_laion(synth_dir, columns=["url"])]
    md5 = tmp_path / "md5.txt"
    md5.write_text(
        "# IWF-style list\n\n" + "\n".join(hashlib.md5(u.encode()).hexdigest().upper() for u in urls[:7]) + "\n"
    )
    sha = tmp_path / "sha.txt"
    sha.write_text("\n".join(hashlib.sha256(u.encode()).hexdigest() for u in urls[5:12]) + "\n")
    b = make_builder(synth_dir, blocklist=[str(md5), str(sha)], columns=["url"])
    kept = [u for t in b.iter_tables() for u in t.column("url").to_pylist()]
    assert set(urls[:12]).isdisjoint(kept)
    assert len(kept) == len(urls) - 12
    assert b.stats.removed_by_blocklist == 12


def test_hash_column_digest(synth_dir):
    rows = list(load_laion(synth_dir, columns=["url", "hash"]))
    target = rows[3]["hash"]
    bl = Blocklist.from_digests([hashlib.md5(str(target).encode()).hexdigest()], column="hash")
    kept = [r["url"] for r in load_laion(synth_dir, columns=["url", "hash"], blocklist=bl)]
    assert rows[3]["url"] not in kept and len(kept) == len(rows) - 1


def test_bad_digest_lines_and_missing_file(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("d41d8cd98f00b204e9800998ecf8427e\nnot-a-digest\n")
    with pytest.raises(BlocklistError, match="bad.txt.*'not-a-digest'"):
        Blocklist.from_files(p)
    q = tmp_path / "badhex.txt"
    q.write_text("z41d8cd98f00b204e9800998ecf8427e\n")
    with pytest.raises(BlocklistError, match="not a hex digest"):
        Blocklist.from_files(q)
    with pytest.raises(BlocklistError, match="not found"):
        Blocklist.from_files(tmp_path / "nope.txt")


def test_scales_to_millions_as_fixed_width_arrays(tmp_path):
    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, size=(1_000_000, 16), dtype=np.uint8)
    path = tmp_path / "big.txt"
    hexes = [bytes(d).hex() for d in digests[:200_000]]
    path.write_text("\n".join(hexes) + "\n")
    bl = Blocklist.from_files(path)
    assert len(bl) == 200_000
    arr = bl.digests["md5"]
    assert arr.dtype == np.dtype("S16") and arr.nbytes == 16 * 200_000  # 16 bytes per digest
    assert np.all(arr[:-1] <= arr[1:])  # sorted for searchsorted
    t = pa.table({"url": ["x", "y"]})
    assert bl.mask(t).tolist() == [False, False]


def test_missing_blocklist_column_is_clear():
    bl = Blocklist.from_digests(["d41d8cd98f00b204e9800998ecf8427e"], column="url_md5")
    with pytest.raises(BlocklistError, match="'url_md5' not in the data"):
        bl.mask(pa.table({"url": ["a"]}))
