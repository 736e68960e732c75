import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_hf import load_laion
from laion_hf.errors import SchemaError
from laion_hf.schema import CANONICAL_COLUMNS, CANONICAL_SCHEMA, detect_release, normalize_table
from laion_hf.synth import LAYOUTS, synthesize_table


@pytest.mark.parametrize(
    "layout,release",
    [
        ("laion-aesthetics", "laion-aesthetics"),
        ("laion-original", "laion-original"),
        ("laion2b-multi-joined", "laion2b-multi-joined"),
        ("relaion", "relaion"),
        ("datacomp", "datacomp"),
    ],
)
def test_every_release_maps_to_the_canonical_schema(layout, release):
    src = synthesize_table(50, layout=layout, seed=3)
    assert detect_release(src.column_names) == release
    out = normalize_table(src, key_prefix="00000")
    assert out.schema.names[: len(CANONICAL_COLUMNS)] == list(CANONICAL_COLUMNS)
    for f in CANONICAL_SCHEMA:
        assert out.schema.field(f.name).type == f.type
    url_src = next(c for c in ("URL", "url") if c in src.column_names)
    assert out.column("url").to_pylist() == src.column(url_src).to_pylist()
    assert out.column("key").null_count == 0
    assert out.column("width").null_count == 0 and out.column("similarity").null_count == 0
    if layout == "datacomp":
        # DataComp keeps its own columns as passthrough and maps the B/32 score to similarity
        assert "clip_l14_similarity_score" in out.column_names
        np.testing.assert_allclose(
            out.column("similarity").to_numpy(), src.column("clip_b32_similarity_score").to_numpy(), rtol=1e-7
        )
        assert out.column("key").to_pylist() == src.column("uid").to_pylist()
    if layout == "laion-original":
        assert out.column("key").to_pylist() == [str(i) for i in src.column("SAMPLE_ID").to_pylist()]
        assert out.column("punsafe").null_count == 50  # missing optional column -> null
        assert set(out.column("nsfw").to_pylist()) <= {"NSFW", "UNSURE", "UNLIKELY"}


def test_float_sizes_are_rounded_and_nan_becomes_null():
    t = pa.table(
        {
            "URL": ["a", "b", "c"],
            "TEXT": ["x", "y", "z"],
            "WIDTH": [640.0, float("nan"), 1023.6],
            "HEIGHT": pa.array([480, None, 2], pa.int64()),
        }
    )
    out = normalize_table(t)
    assert out.column("width").to_pylist() == [640, None, 1024]
    assert out.column("height").to_pylist() == [480, None, 2]
    assert out.column("width").type == pa.int32()


def test_numeric_strings_parse_and_garbage_names_the_column():
    ok = normalize_table(pa.table({"url": ["u"], "similarity": [" 0.31 "]}))
    assert ok.column("similarity").to_pylist() == [0.31]
    with pytest.raises(SchemaError, match=r"column 'WIDTH'.*int32"):
        normalize_table(pa.table({"URL": ["u"], "WIDTH": ["wide"]}), where="part-7.parquet")


def test_missing_url_column_is_a_clear_error(tmp_path):
    path = tmp_path / "nourl.parquet"
    pq.write_table(pa.table({"TEXT": ["a"], "WIDTH": [1]}), path)
    with pytest.raises(SchemaError, match=r"nourl.parquet: no URL column.*columns present: TEXT, WIDTH"):
        list(load_laion(str(path)))


def test_non_utf8_and_null_captions_are_kept(tmp_path):
    t = pa.table({"URL": ["u1", "u2", "u3"], "TEXT": pa.array([b"caf\xe9", None, b"ok"], pa.binary())})
    out = normalize_table(t)
    assert out.column("caption").to_pylist() == ["caf\ufffd", None, "ok"]
    path = tmp_path / "bin.parquet"
    pq.write_table(t, path)
    rows = list(load_laion(str(path)))
    assert [r["caption"] for r in rows] == ["caf\ufffd", None, "ok"]


def test_passthrough_columns_survive_and_types_are_declared(tmp_path):
    src = synthesize_table(20, layout="laion-aesthetics")
    src = src.append_column("my_extra", pa.array(range(20)))
    pq.write_table(src, tmp_path / "x.parquet")
    ds = load_laion(str(tmp_path))
    assert list(ds.features)[: len(CANONICAL_COLUMNS)] == list(CANONICAL_COLUMNS)
    assert ds.features["width"].dtype == "int32" and ds.features["my_extra"].dtype == "int64"
    assert [r["my_extra"] for r in ds] == list(range(20))


def test_all_layouts_listed():
    assert set(LAYOUTS) >= {"laion-original", "relaion", "datacomp"}
