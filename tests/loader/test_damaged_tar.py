"""The loader reads tars through laion_hf.io.tar: a tar cut short fails the epoch with an error
naming it, instead of ending the shard early with its last samples silently gone."""

from __future__ import annotations

import shutil
import tarfile

import pytest

from laion_hf.errors import ShardError
from laion_hf.loader import make_dataloader


@pytest.mark.parametrize("how", ["header", "data"])
def test_truncated_tar_is_an_error_naming_it(wds_dir, tmp_path, how):
    root = tmp_path / "wds"
    shutil.copytree(wds_dir, root)
    tar = sorted(root.glob("*.tar"))[1]
    with tarfile.open(tar) as tf:
        ms = tf.getmembers()
    m = ms[len(ms) // 2]
    tar.write_bytes(tar.read_bytes()[: m.offset + 100 if how == "header" else m.offset_data + m.size // 2])
    loader = make_dataloader(str(root), batch_size=8, image_size=32, num_workers=0, tokenizer=None, shuffle=False)
    with pytest.raises(ShardError, match=f"{tar}: cannot read the tar shard: .*cut short"):
        for _ in loader:
            pass
