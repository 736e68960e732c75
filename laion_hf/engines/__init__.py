"""Engines: the layer above the stages that runs a heavy stage's work orders.

Each heavy stage has one driver shape (``plan(...) -> plan`` with ``plan.orders``, a list of
picklable work orders; ``run_one(order) -> stats``; ``finish(plan, results) -> result``), in
:mod:`laion_hf.export` (``filter``), :mod:`laion_hf.images.download` (``download``) and
:mod:`laion_hf.clip.embed` (``embed``). An engine only maps ``run_one`` over the orders and
retries: :mod:`laion_hf.engines.local` (this machine: in order, threads or processes, as the
stage says) and :mod:`laion_hf.engines.ray` (Ray tasks). Part cutting, stats files and totals
live in the stages, once.

    from laion_hf import engines, export
    with export.plan("meta/", "out/", where="similarity >= 0.3") as p:
        results = engines.run("filter", p.orders, engine="ray", raise_errors=False)
        stats = export.finish(p, results)

or, for a whole stage, :func:`run_stage` (what ``laion-hf filter|download|embed --engine``
calls).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any, Optional, Sequence

from laion_hf._util.workers import Progress, raise_failures, with_retries
from laion_hf.errors import EngineError

__all__ = ["STAGES", "ENGINES", "stage_module", "run", "run_stage"]

#: stage name -> the module holding its driver (plan, run_one, finish, NAME, LOCAL_MODE)
STAGES = {
    "filter": "laion_hf.export",
    "download": "laion_hf.images.download",
    "embed": "laion_hf.clip.embed",
    "index": "laion_hf.index.build",
}
ENGINES = ("local", "ray")
#: each stage's whole-run function on the local engine (plan, map, finish) and on Ray
_LOCAL = {
    "filter": ("laion_hf.export", "filter_to_parquet"),
    "download": ("laion_hf.images.download", "download"),
          "embed": ("laion_hf.clip.embed", "embed_shards"),
          "index": ("laion_hf.index.build", "build_index")}  # fmt: skip
_RAY = {
    "filter": "filter_to_parquet_ray",
    "download": "download_ray",
    "embed": "embed_shards_ray",
    "index": "build_index_ray",
}


def stage_module(stage: str | ModuleType) -> ModuleType:
    """The driver module of ``stage`` (a name of :data:`STAGES`, or the module itself)."""
    if isinstance(stage, ModuleType):
        return stage
    if stage not in STAGES:
        raise EngineError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return importlib.import_module(STAGES[stage])


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; engines are {', '.join(ENGINES)}")


def run(
    stage: str | ModuleType,
    orders: Sequence[Any],
    *,
    engine: str = "local",
    address: Optional[str] = None,
    workers: Optional[int] = None,
    retries: int = 2,
    progress: Optional[Progress] = None,
    raise_errors: bool = True,
) -> list[Any]:
    """Run ``stage``'s ``run_one`` over ``orders`` on ``engine``; the results, in order.

    An order that fails with anything but a laion-hf error (those name bad input) is run again
    up to ``retries`` times. With ``raise_errors`` the first failure left is raised (a laion-hf
    error as its own class, anything else an :class:`EngineError` naming the order and its
    tries); else failed orders come back as :class:`~laion_hf._util.workers.Failure` entries,
    for the stage's ``finish`` to report.

    Args:
        engine: ``"local"`` (``workers`` threads or processes, as the stage runs locally) or
            ``"ray"`` (Ray tasks; ``address`` as :func:`laion_hf.engines.ray.init_ray`).
        progress: ``progress(rows, successes)`` as the local engine's orders advance.
    """
    _check_engine(engine)
    mod = stage_module(stage)
    if engine == "local":
        from laion_hf.engines.local import map_local

        mode = getattr(mod, "LOCAL_MODE", None)
        mapper = functools.partial(map_local, workers=workers, mode=mode,
                                   progress=progress)  # fmt: skip
    else:
        from laion_hf.engines import ray as ray_engine

        ray_engine.init_ray(address)
        mapper = functools.partial(ray_engine.map_ray, workers=workers)
    results = with_retries(mapper, mod.run_one, list(orders), retries)
    if raise_errors:
        raise_failures(results, getattr(mod, "NAME", str(stage)))
    return results


def run_stage(
    stage: str,
    *args: Any,
    engine: str = "local",
    address: Optional[str] = None,
    workers: Optional[int] = None,
    **kwargs: Any,
) -> Any:
    """A whole stage run (plan, map, finish) on ``engine``:
    :func:`laion_hf.export.filter_to_parquet`,
    :func:`laion_hf.images.download.download` or :func:`laion_hf.clip.embed.embed_shards` with
    the same arguments; on Ray, ``address`` and ``workers`` (tasks or model actors at once).
    On the local engine ``workers`` is download's ``processes``."""
    _check_engine(engine)
    stage_module(stage)  # a clear error for an unknown stage
    if engine == "ray":
        from laion_hf.engines import ray as ray_engine

        if stage == "download":
            kwargs.pop("processes", None)  # local worker processes; Ray uses workers
        return getattr(ray_engine, _RAY[stage])(*args, address=address, workers=workers, **kwargs)
    module, name = _LOCAL[stage]
    if stage == "download" and workers is not None:
        kwargs["processes"] = workers
    return getattr(importlib.import_module(module), name)(*args, **kwargs)
