"""The Ray engine: a stage's orders as Ray tasks (``--engine ray`` for ``filter``, ``download``
and ``embed``).

The stages plan, run and finish themselves (``plan``, ``run_one``, ``finish`` in
:mod:`laion_hf.export`, :mod:`laion_hf.images.download`, :mod:`laion_hf.clip.embed`); this
module only maps ``run_one`` over the orders on a Ray cluster (:func:`map_ray`), so the output
names, content, stats and resume rules are the local engine's and a run can start on one
engine and resume on the other. A task whose worker dies is retried by Ray (``max_retries``);
a task that raised anything but a laion-hf error is run again (``retries``); what still fails
is reported by the stage's ``finish``, naming the order.

``embed`` keeps a pipeline of its own: CPU actors read and decode the shards into model
batches (the CLIP stage's ``decode_batch``), model actors (``num_gpus``) run the model on them
(``embed_decoded``), and one task per part writes it (the stage's ``PartAccumulator``); the
stage's ``plan`` and ``finish`` frame it.

On a cluster, ``out_dir`` (and the inputs) must be a path every node sees (a shared file
system); ``address`` is passed to :func:`ray.init` (``"auto"``, ``"ray://head:10001"``, or
None to start a local instance when none is connected). Needs ``pip install 'laion-hf[ray]'``.
"""

from __future__ import annotations

import functools
import os
import pickle
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import pyarrow as pa

from laion_hf._util.workers import Failure, Progress, raise_failures, with_retries
from laion_hf.errors import EngineError, LaionHFError

__all__ = ["init_ray", "map_ray", "filter_to_parquet_ray", "download_ray", "embed_shards_ray"]

RETRIES = 2  # application errors other than laion-hf errors: runs of an order after the first
TASK_RETRIES = 3  # a task whose worker process died: Ray's own retries


# ---------------------------------------------------------------------------- Ray set-up
def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise EngineError(
            f"the Ray engine needs Ray Data: pip install 'laion-hf[ray]' (or 'ray[data]>=2.40'); import failed: {e}"
        ) from None
    return ray


def init_ray(address: Optional[str] = None, **init_kwargs: Any) -> Any:
    """Connect to Ray (or start a local instance) unless already connected; returns ``ray``.

    ``address``: ``"auto"`` (the cluster this machine belongs to), ``"ray://head:10001"``
    (Ray Client), ``"host:6379"``, or None: start a local instance using this machine's cores.
    A connection made earlier (``ray.init(...)`` by the caller) is reused as is.
    """
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, **init_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EngineError(f"cannot connect to Ray at {address!r}: {e}") from e
    return ray


def _cluster_count(resource: str, default: int = 1) -> int:
    import ray

    return max(default, int(ray.cluster_resources().get(resource, 0)))


# ---------------------------------------------------------------------------- the mapper
def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (it travels back to the driver), else an EngineError."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return EngineError(f"{type(e).__name__}: {e}")


def _call(run_one: Callable[..., Any], order: Any) -> tuple[Any, int, float]:
    """Ray task: run one order; ``(result or Failure, worker pid, CPU seconds)``."""
    cpu0 = time.process_time()
    try:
        value = run_one(order, None)
    except Exception as e:  # noqa: BLE001 - returned as data, reported by the stage's finish
        value = Failure(order, _portable(e))
    return value, os.getpid(), time.process_time() - cpu0


def _laion_error(e: BaseException) -> Optional[LaionHFError]:
    """The laion-hf error a Ray task raised, found in the exception chain Ray wraps it in."""
    seen: set[int] = set()
    todo: list[Any] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, LaionHFError):
            return x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def map_ray(
    run_one: Callable[..., Any],
    orders: Sequence[Any],
    *,
    workers: Optional[int] = None,
    num_cpus: float = 1,
    on_result: Optional[Callable[[Any], None]] = None,
    info: Optional[dict] = None,
) -> list[Any]:
    """``run_one`` over ``orders`` as Ray tasks, at most ``workers`` at once (default: the
    cluster's CPUs); each result or a :class:`~laion_hf._util.workers.Failure`. ``info``
    collects ``pids`` (the worker processes) and ``cpu_s`` (their CPU time on these orders)."""
    ray = init_ray()
    task = ray.remote(_call).options(num_cpus=num_cpus, max_retries=TASK_RETRIES)
    limit = max(1, int(workers or _cluster_count("CPU")))
    results: list[Any] = [None] * len(orders)
    todo = list(enumerate(orders))[::-1]
    pending: dict[Any, int] = {}
    while todo or pending:
        while todo and len(pending) < limit:
            i, order = todo.pop()
            pending[task.remote(run_one, order)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i = pending.pop(ref)
            try:
                value, pid, cpu = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the worker died more often than Ray retries
                value, pid, cpu = Failure(orders[i], _laion_error(e) or e), None, 0.0
            results[i] = value
            if info is not None and pid is not None:
                info.setdefault("pids", set()).add(pid)
                info["cpu_s"] = info.get("cpu_s", 0.0) + cpu
            if on_result is not None:
                on_result(value)
    return results


def mapper(
    workers: Optional[int] = None,
    *,
    retries: int = RETRIES,
    on_result: Optional[Callable[[Any], None]] = None,
    info: Optional[dict] = None,
) -> Callable[[Callable[..., Any], Sequence[Any]], list[Any]]:
    """A ``map(fn, orders)`` on Ray with retries (a stage hook such as ``map_parts``)."""

    def run(fn: Callable[..., Any], orders: Sequence[Any]) -> list[Any]:
        one = functools.partial(map_ray, workers=workers, on_result=on_result, info=info)
        return with_retries(one, fn, list(orders), retries)

    return run


def _raising(m: Callable[[Callable[..., Any], Sequence[Any]], list[Any]], what: str) -> Callable[..., list[Any]]:
    """``m`` that raises the first failure (for hooks whose results are used as they come)."""

    def run(fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        out = m(_unary(fn), items)
        raise_failures(out, what)
        return out

    return run


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    return functools.partial(_drop_progress, fn)


def _drop_progress(fn: Callable[..., Any], item: Any, progress: Optional[Progress] = None) -> Any:
    return fn(item)


def _bar(progress: bool, total: int, desc: str, unit: str = "order") -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)


# ---------------------------------------------------------------------------- the stages
def filter_to_parquet_ray(
    source: Any,
    out_dir: str,
    *,
    rows_per_file: int = 1_000_000,
    progress: bool = True,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    **load_kwargs: Any,
) -> dict[str, Any]:
    """:func:`laion_hf.export.filter_to_parquet` on Ray: one task per shard (file × row
    group), then one task per output part; the same parts and stats (plus ``engine="ray"``).

    Args:
        address: Ray address (see :func:`init_ray`).
        workers: at most this many tasks at once (default: as many as the cluster's CPUs).
    """
    from laion_hf import export

    init_ray(address)
    with export.plan(source, out_dir, rows_per_file=rows_per_file, **load_kwargs) as p:
        bar = _bar(progress, len(p.orders), "filter (ray)", "shard")
        try:
            results = mapper(workers, on_result=lambda _: bar and bar.update())(export.run_one, p.orders)
        finally:
            if bar is not None:
                bar.close()
        return export.finish(p, results, map_parts=_raising(mapper(workers), "filter: writing parts"), engine="ray")


def download_ray(
    source: Any,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    processes: Optional[int] = None,
    **kwargs: Any,
) -> dict:
    """:func:`laion_hf.images.download.download` on Ray: local parquet inputs are split by one
    task per file, then one task per shard; the same shards, stats and resume rule.

    ``workers`` (or ``processes``) tasks at once, one CPU each, default one per CPU of the
    cluster; every other argument is the local engine's. Returns the local engine's run stats
    plus ``engine="ray"``, ``workers``, ``worker_pids`` (distinct worker processes that finished
    shards) and ``worker_cpu_seconds`` (CPU time the workers spent on this run's shards).
    """
    from laion_hf.errors import FetchError
    from laion_hf.images import download as dl

    init_ray(address)
    n_workers = int(workers or processes or _cluster_count("CPU"))
    if n_workers < 1:
        raise FetchError(f"workers must be >= 1, got {n_workers}")
    run = dl.plan(source, out_dir, map_split=mapper(n_workers), **kwargs)
    bar = _bar(progress, run.todo_rows, "download (ray)", "img")
    info: dict = {}

    def done(value: Any) -> None:
        if bar is not None and not isinstance(value, Failure):
            bar.update(value["count"])

    try:
        results = mapper(n_workers, on_result=done, info=info)(dl.run_one, run.orders)
    finally:
        if bar is not None:
            bar.close()
    return dl.finish(
        run,
        results,
        engine="ray",
        workers=n_workers,
        worker_pids=len(info.get("pids", ())),
        worker_cpu_seconds=info.get("cpu_s", 0.0),
    )


# ---------------------------------------------------------------------------- embed
def _configure(progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = bool(progress)


def _actor_pool(n: int) -> dict:
    import ray.data

    return {"compute": ray.data.ActorPoolStrategy(size=int(n))}


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


_EMPTY, _FAILED = (
    -1,
    -2,
)  # batch index of an empty shard's row, of an unreadable shard's (payload: the error)


class _PartDecoder:
    """Ray CPU actor: reads input shards and decodes + preprocesses their images into model
    batches (the CLIP stage's ``batches`` and ``decode_batch``: the local engine's batches).
    Yields one row per model batch: ``part``, ``batch``, ``payload`` (pickled arrays + table)."""

    def __init__(self, spec: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from laion_hf.clip.embed import make_pipeline

        self.pipe = make_pipeline(spec, device="cpu", precision="fp32", heads=())  # transforms + tokenizer
        self.pool = ThreadPoolExecutor(self.pipe.num_workers, thread_name_prefix="laion-hf-ray-decode")

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for part, path in zip(batch.column("part").to_pylist(), batch.column("path").to_pylist(), strict=False):
            n_batches = 0
            try:
                for payload in self._part(path):
                    yield _row(part, n_batches, payload)
                    n_batches += 1
            except LaionHFError as e:  # a shard that cannot be read: the stage's finish raises it
                yield _row(part, _FAILED, pickle.dumps(_portable(e)))
                continue
            if n_batches == 0:  # an empty shard still becomes an (empty) part
                yield _row(part, _EMPTY, b"")

    def _part(self, path: str) -> Iterator[bytes]:
        from laion_hf.clip.embed import read_shards

        pipe = self.pipe
        for t in pipe.batches(read_shards(path, batch_rows=max(pipe.batch_size, 256))):
            d = pipe.decode_batch(t, self.pool)
            meta = t.drop_columns([pipe.image_column]) if pipe.image_column in t.column_names else t
            yield pickle.dumps(
                {
                    "table": _ipc(meta),
                    "cand_rows": d.cand_rows,
                    "pre_errors": d.pre_errors,
                    "pixels": d.pixels.numpy(),
                    "slot_errors": d.slot_errors,
                    "text_valid": d.text_valid,
                    "tokens": d.tokens.numpy() if d.tokens is not None else None,
                },
                protocol=5,
            )


def _row(part: int, batch: int, payload: bytes) -> pa.Table:
    return pa.table({"part": [part], "batch": [batch], "payload": pa.array([payload], pa.binary())})


class _BatchEmbedder:
    """Ray model actor (``num_gpus``; CPU when the cluster has none): runs the model and score
    heads on decoded batches (the CLIP stage's ``embed_decoded``), returns the output table."""

    def __init__(self, spec: Any) -> None:
        from laion_hf.clip.embed import make_pipeline

        self.pipe = make_pipeline(replace(spec, num_workers=1))

    def __call__(self, batch: pa.Table) -> pa.Table:
        outs = []
        for part, b, payload in zip(
            batch.column("part").to_pylist(),
            batch.column("batch").to_pylist(),
            batch.column("payload").to_pylist(),
            strict=False,
        ):
            result = payload if b < 0 else _ipc(self.pipe.embed_decoded(self._decoded(payload)))
            outs.append({"part": part, "batch": b, "result": result})
        return pa.Table.from_pylist(
            outs,
            schema=pa.schema([("part", pa.int64()), ("batch", pa.int64()), ("result", pa.binary())]),
        )

    def _decoded(self, payload: bytes) -> Any:
        import torch

        from laion_hf.clip.stream import DecodedBatch

        p = pickle.loads(payload)
        pixels = torch.from_numpy(p["pixels"].copy())
        if self.pipe.embedder.pin_memory and pixels.numel():
            pixels = pixels.pin_memory()
        tokens = torch.from_numpy(p["tokens"]) if p["tokens"] is not None else None
        return DecodedBatch(
            _from_ipc(p["table"]),
            p["cand_rows"],
            p["pre_errors"],
            pixels,
            p["slot_errors"],
            tokens,
            p["text_valid"],
        )


def _write_embed_part(group: pa.Table, orders: dict) -> pa.Table:
    """Ray task: write one part from its embedded batches, as the local engine writes it
    (``PartAccumulator``); returns its stats, or the shard's error (pickled)."""
    import numpy as np

    from laion_hf.clip.embed import PartAccumulator

    order = orders[int(group.column("part")[0].as_py())]
    batches = group.column("batch").to_numpy()
    results = group.column("result").to_pylist()
    if (batches == _FAILED).any():  # the shard could not be read: no part is written
        return _outcome(order.part, results[int(np.flatnonzero(batches == _FAILED)[0])])
    index = np.argsort(batches, kind="stable")
    # a decode task retried after its worker died re-emits the same (deterministic) batches:
    # keep one of each
    index = [i for j, i in enumerate(index) if j == 0 or batches[i] != batches[index[j - 1]]]
    spec = order.spec
    acc = PartAccumulator(spec.embed_dim, np.float16 if spec.dtype == "float16" else np.float32)
    for i in index:
        if results[i]:
            acc.add(_from_ipc(results[i]))
    stats = acc.write(order.out_dir, order.part, order.path, spec.model, spec.pretrained)
    return _outcome(order.part, pickle.dumps(stats))


def _outcome(part: int, payload: bytes) -> pa.Table:
    return pa.table({"part": [part], "outcome": pa.array([payload], pa.binary())})


@dataclass(frozen=True)
class _EmbedResources:
    """The actors of a Ray embed run: GPUs per model actor, their device, how many model and
    decode actors, the cluster's CPUs."""

    num_gpus: float
    model_device: str
    n_model: int
    n_decode: int
    cpus: int

    @classmethod
    def of(cls, device: str, workers: Optional[int], decode_workers: Optional[int],
           num_gpus: Optional[float]) -> "_EmbedResources":  # fmt: skip
        import ray

        gpus = _cluster_count("GPU", default=0)
        if str(device).startswith("cuda") and not gpus:
            raise EngineError(
                f"device={device!r} but the Ray cluster has no GPU (resources: "
                f"{ray.cluster_resources()}); add GPU nodes or use --device auto/cpu"
            )
        if num_gpus is None:
            num_gpus = 1.0 if gpus and device != "cpu" else 0.0
        # an actor sees only its own GPU(s): cuda:N means nothing there
        model_device = "cuda" if num_gpus else "cpu"
        n_model = int(workers or (max(1, int(gpus // num_gpus)) if num_gpus else 1))
        cpus = _cluster_count("CPU")
        n_decode = int(decode_workers or max(1, cpus - (0 if num_gpus else n_model)))
        return cls(num_gpus, model_device, n_model, n_decode, cpus)


def _embed_dataset(orders: dict, spec: Any, res: _EmbedResources) -> Any:
    """decode actors -> model actors -> one writer task per part: one ``outcome`` row each."""
    import ray.data

    items = [{"part": n, "path": o.path} for n, o in orders.items()]
    return (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(_PartDecoder, batch_size=1, batch_format="pyarrow",
                     fn_constructor_kwargs={"spec": spec}, num_cpus=1,
                     **_actor_pool(min(res.n_decode, len(items))))
        .map_batches(_BatchEmbedder, batch_size=1, batch_format="pyarrow",
                     fn_constructor_kwargs={"spec": spec}, num_gpus=res.num_gpus,
                     num_cpus=0 if res.num_gpus else 1, **_actor_pool(res.n_model))
        .groupby("part", num_partitions=max(1, min(len(items), res.cpus)))
        .map_groups(_write_embed_part, batch_format="pyarrow", fn_kwargs={"orders": orders},
                    num_cpus=1)
    )  # fmt: skip


def embed_shards_ray(
    sources: Sequence[str] | str,
    out_dir: str | os.PathLike,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
    allow_download: bool = False,
    progress: bool = True,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    decode_workers: Optional[int] = None,
    num_gpus: Optional[float] = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`laion_hf.clip.embed.embed_shards` on Ray Data: the same parts, config and resume.

    Args:
        workers: model actors (default: one per GPU of the cluster, else 1).
        decode_workers: CPU actors reading and decoding shards (default: the cluster's CPUs
            left over by the model actors, at least 1).
        num_gpus: GPUs per model actor (default 1 when the cluster has GPUs and ``device`` is
            not ``"cpu"``, else 0: the model runs on a CPU actor).
        num_workers: decode threads per decode actor; the rest as the local engine
            (``model``, ``pretrained``, ``heads``, ``dtype``, ``cache_dir``).
    """
    from laion_hf.clip import embed

    if allow_download:
        raise EngineError(
            "--allow-download is not supported with --engine ray: fetch the weights into the HF "
            "cache (or a file) every node reads, then run offline"
        )
    init_ray(address)
    _configure(progress)
    res = _EmbedResources.of(device, workers, decode_workers, num_gpus)
    bs = int(batch_size or (256 if res.model_device == "cuda" else 32))
    # the driver builds the model once (CPU) for the run config, like the local engine
    p = embed.plan(sources, out_dir, device="cpu", precision=precision, batch_size=bs,
                   num_workers=num_workers, **kwargs)  # fmt: skip
    p.pipe = None
    spec = replace(p.spec, device=res.model_device)
    orders = {o.part: replace(o, spec=spec) for o in p.orders}
    by_part: dict = {}
    if orders:
        rows = _collect(_embed_dataset(orders, spec, res))
        by_part = {r["part"]: pickle.loads(r["outcome"]) for r in rows}
    results = [_as_result(orders[o.part], by_part.get(o.part)) for o in p.orders]
    return embed.finish(p, results, engine="ray")


def _as_result(order: Any, outcome: Any) -> Any:
    if isinstance(outcome, BaseException):
        return Failure(order, outcome)
    if outcome is None:
        return Failure(order, EngineError("no result came back for this part"))
    return outcome


def _collect(ds: Any) -> list[dict]:
    """Run a Ray dataset to completion; a laion-hf error raised in a task is re-raised as is."""
    try:
        return list(ds.iter_rows())
    except LaionHFError:
        raise
    except Exception as e:
        err = _laion_error(e)
        if err is not None:
            raise type(err)(*err.args) from e
        raise


def build_index_ray(
    src: Any,
    out: Any,
    *,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    progress: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`laion_hf.index.build_index` with its ``run_one`` on Ray tasks (at most ``workers``
    at once): the index stage plans (index type, training on a sample) and finishes (parts in
    row order, tuning, ``infos.json``); the parts are the local engine's, so a run resumes on
    either engine. On a cluster, ``out`` must be a path every node sees."""
    from laion_hf.index import build

    init_ray(address)
    orders = build.plan(src, out, **kwargs)
    results = with_retries(functools.partial(map_ray, workers=workers), _unary(build.run_one), list(orders), 2)
    raise_failures(results, "index")
    return build.finish(orders, results)
