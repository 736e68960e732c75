"""The engines layer: every stage's plan is picklable, the local and Ray engines map
``run_one`` to the same output, and a failing order is retried, then reported naming it."""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_hf import engines, export
from laion_hf.errors import EngineError, ShardError, SourceError
from laion_hf.images import download as dl
from laion_hf.synth import synthesize

from .conftest import FAST


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines-meta")
    synthesize(300, out, files=2, seed=5, row_group_size=60)
    return str(out)


def test_filter_plan_is_picklable_and_its_orders_run_anywhere(meta, tmp_path):
    with export.plan(meta, str(tmp_path / "out"), where="similarity >= 0.3", rows_per_file=40) as p:
        assert len(p.orders) == 6  # 2 files x 3 row groups
        again = pickle.loads(pickle.dumps(p.orders))
        assert again == p.orders
        # an unpickled order runs in this process as in any other: it names its own builder
        r = export.run_one(again[0])
        assert r["shard"] == 0 and r["rows"] == r["stats"]["rows_kept"] and r["stats"]["rows_in"] == 60


def test_download_plan_is_picklable(tmp_path):
    t = pa.table({"url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(7)]})
    run = dl.plan(t, tmp_path / "out", shard_size=3, **FAST)
    assert [o.shard_id for o in run.orders] == [0, 1, 2]
    assert pickle.loads(pickle.dumps(run.orders)) == run.orders
    assert run.orders[1].describe() == "shard 00001"


def test_embed_plan_is_picklable(tmp_path):
    pytest.importorskip("open_clip", reason="embed needs the clip extra")
    from laion_hf.clip import embed

    shard = tmp_path / "00000.parquet"
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"key": ["a"], "caption": ["x"], "image": pa.array([None], image),
                             "status": ["failed_to_download"]}), shard)  # fmt: skip
    p = embed.plan(str(shard), tmp_path / "out", model="laion-hf-tiny", device="cpu", batch_size=4)
    assert [o.part for o in p.orders] == [0]
    assert pickle.loads(pickle.dumps(p.orders)) == p.orders
    stats = embed.run_one(pickle.loads(pickle.dumps(p.orders[0])))  # the pipeline rebuilt from the spec
    assert stats["count"] == 1 and stats["embedded"] == 0
    assert embed.finish(p, [stats])["status_dict"] == {"failed_to_download": 1}


def _filter(meta: str, out: Path, engine: str) -> dict:
    with export.plan(meta, str(out), where="similarity >= 0.3", rows_per_file=45) as p:
        results = engines.run("filter", p.orders, engine=engine, workers=2)
        return export.finish(p, results)


def test_local_and_ray_engines_write_the_same_parts(ray_local, meta, tmp_path):
    a = _filter(meta, tmp_path / "local", "local")
    b = _filter(meta, tmp_path / "ray", "ray")
    kw = dict(where="similarity >= 0.3", rows_per_file=45, progress=False)
    c = export.filter_to_parquet(meta, str(tmp_path / "stage"), **kw)
    for stats in (b, c):
        assert {k: v for k, v in stats.items() if k != "duration_s"} == {
            k: v for k, v in a.items() if k != "duration_s"
        }
    assert len(a["output_files"]) == -(-a["rows_kept"] // 45) >= 2
    for name in a["output_files"]:
        x = pq.read_table(tmp_path / "local" / name)
        assert x.equals(pq.read_table(tmp_path / "ray" / name)) and x.equals(pq.read_table(tmp_path / "stage" / name))


def _missing_input_order(tmp_path: Path) -> dl.DownloadOrder:
    """A real download order whose input shard is gone (an OSError, not bad user input)."""
    t = pa.table({"url": ["http://127.0.0.1:9/a.jpg"]})
    run = dl.plan(t, tmp_path / "out", shard_size=5, **FAST)
    os.unlink(run.orders[0].input_path)
    return run.orders[0]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_failing_order_is_retried_then_reported_naming_it(request, engine, tmp_path):
    if engine == "ray":
        request.getfixturevalue("ray_local")
    order = _missing_input_order(tmp_path)
    with pytest.raises(
        EngineError,
        match=r"download: shard 00000: FileNotFoundError: .*00000\.arrow.* after 3 tries",
    ):
        engines.run("download", [order], engine=engine, retries=2)
    # or handed to the stage's finish, which names every failed shard
    results = engines.run("download", [order], engine=engine, retries=0, raise_errors=False)
    with pytest.raises(ShardError, match="shard 00000 failed: FileNotFoundError"):
        dl.finish(dl.DownloadRun(tmp_path / "out", {"shards": 1, "rows": [1]}, [0], 0.0, [order]), results)


def test_bad_input_keeps_its_error_class(tmp_path):
    """A laion-hf error names bad input: it is raised as is (class and message), not retried."""
    src = tmp_path / "in"
    synthesize(50, src, files=1, seed=6)
    with export.plan(str(src), str(tmp_path / "out")) as p:
        broken = replace(p.orders[0], file=p.orders[0].file + ".missing.parquet")
        with pytest.raises(SourceError, match="missing.parquet"):
            engines.run("filter", [broken], engine="local", retries=5)


@dataclass(frozen=True)
class _Flaky:
    """An order of the flaky stage below: fails while ``marker`` does not exist, creating it."""

    marker: str

    def describe(self) -> str:
        return f"flaky order {self.marker}"


def _flaky_run_one(order: _Flaky, progress=None) -> str:
    if not os.path.exists(order.marker):
        Path(order.marker).touch()
        raise OSError(f"{order.marker}: first try fails")
    return "ok"


def test_a_transient_failure_is_healed_by_a_retry(tmp_path):
    """A stage (a module with ``run_one``) whose orders fail once, then succeed."""
    stage = type(sys)("flaky_stage")
    stage.NAME, stage.LOCAL_MODE, stage.run_one = "flaky", None, _flaky_run_one
    orders = [_Flaky(str(tmp_path / "m0")), _Flaky(str(tmp_path / "m1"))]
    assert engines.run(stage, orders, retries=1) == ["ok", "ok"]
    with pytest.raises(EngineError, match=r"flaky: flaky order .*m2: OSError: .*first try fails"):
        engines.run(stage, [_Flaky(str(tmp_path / "m2"))], retries=0)


def test_unknown_stage_or_engine_is_a_clear_error():
    with pytest.raises(EngineError, match="unknown stage 'nope'"):
        engines.run("nope", [])
    with pytest.raises(EngineError, match="unknown engine 'spark'"):
        engines.run("filter", [], engine="spark")


def test_engine_ray_is_a_deprecated_shim_of_engines_ray():
    import importlib

    from laion_hf.engines import ray as ray_engine

    sys.modules.pop("laion_hf.engine_ray", None)
    with pytest.warns(DeprecationWarning, match="laion_hf.engines.ray"):
        shim = importlib.import_module("laion_hf.engine_ray")
    for name in ("filter_to_parquet_ray", "download_ray", "embed_shards_ray", "init_ray"):
        assert getattr(shim, name) is getattr(ray_engine, name)
