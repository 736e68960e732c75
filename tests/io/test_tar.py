"""laion_hf.io.tar: the one tar reader finds a tar that is cut short or corrupt and names it,
wherever the damage is; an intact tar reads exactly as webdataset reads it."""

from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from laion_hf.errors import ShardError
from laion_hf.io.tar import iter_members, iter_samples, open_samples

DAMAGE = ("header", "data", "boundary", "corrupt")


def _tar_bytes(n: int) -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf) as w:
        for i in range(n):
            w.write({"__key__": f"{i:05d}", "jpg": bytes([i]) * 700, "txt": f"c{i}".encode()})
    return buf.getvalue()


def test_intact_download_tar_reads_like_webdataset(download_dir):
    tar = str(download_dir / "00000.tar")
    ours = list(open_samples(tar))
    theirs = list(wds.WebDataset(tar, shardshuffle=False))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs] and len(ours) > 5
    assert all(a["jpg"] == b["jpg"] and a["txt"] == b["txt"] for a, b in zip(ours, theirs))


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_download_tar_is_an_error_naming_it(damaged, how):
    tar = str(damaged[how] / "00000.tar")
    with pytest.raises(ShardError, match=f"{tar}: cannot read the tar shard") as e:
        list(open_samples(tar))
    assert ("cut short" in str(e.value)) == (how != "corrupt")
    assert ("corrupt member header" in str(e.value)) == (how == "corrupt")


@pytest.mark.parametrize("how", ["header", "boundary"])
def test_plain_tarfile_misses_what_we_catch(damaged, how):
    """The defect: ``tarfile`` reads a tar cut inside (or just before) a header as a shorter,
    valid tar. Our reader fails on the same file (see above)."""
    with tarfile.open(damaged[how] / "00000.tar") as tf:
        assert len(tf.getmembers()) > 0


def test_every_cut_point_is_caught():
    """Cut the tar at every 64th byte up to its end-of-archive block: each cut is an error;
    once the first zero block is whole, the tar reads completely."""
    data = _tar_bytes(4)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + (last.size + 511) // 512 * 512  # where the end-of-archive block starts
    for cut in range(0, end + 512, 64):
        with pytest.raises(ShardError, match="t.tar"):
            list(iter_samples(io.BytesIO(data[:cut]), "t.tar"))
    assert len(list(iter_samples(io.BytesIO(data[: end + 512]), "t.tar"))) == 4


def test_select_passes_members_over_but_still_checks_them():
    data = _tar_bytes(3)
    samples = list(iter_samples(io.BytesIO(data), "t.tar", select=lambda n: n.endswith(".txt")))
    assert [sorted(k for k in s if not k.startswith("__")) for s in samples] == [["txt"]] * 3
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        jpg = tf.getmembers()[-2]
    assert jpg.name.endswith(".jpg")
    with pytest.raises(ShardError, match="cut short"):
        list(
            iter_members(
                io.BytesIO(data[: jpg.offset_data + 10]),
                "t.tar",
                select=lambda n: n.endswith(".txt"),
            )
        )


def test_repeated_member_is_an_error():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("a.txt", "a.txt"):
            ti = tarfile.TarInfo(name)
            ti.size = 1
            tf.addfile(ti, io.BytesIO(b"x"))
    with pytest.raises(ShardError, match="dup.tar: not a webdataset tar: .*duplicate"):
        list(iter_samples(io.BytesIO(buf.getvalue()), "dup.tar"))


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ShardError, match="nope.tar: cannot open"):
        list(open_samples(str(tmp_path / "nope.tar")))
