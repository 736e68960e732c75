"""The local engine: a stage's orders on this machine, in order, on threads or on worker
processes (the stage says which: its ``LOCAL_MODE``), through the one local mapper
(:func:`laion_hf._util.workers.map_orders`; worker processes exit with their parent)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from laion_hf._util.workers import Progress, map_orders


def map_local(
    run_one: Callable[..., Any],
    orders: Sequence[Any],
    *,
    workers: Optional[int] = None,
    mode: Optional[str] = None,
    progress: Optional[Progress] = None,
) -> list[Any]:
    """``run_one`` over ``orders`` with ``workers`` threads or processes (``mode``; None or
    ``workers`` <= 1: in order on this thread). Failed orders come back as
    :class:`~laion_hf._util.workers.Failure` entries."""
    n = int(workers or 1) if mode else 1
    return map_orders(run_one, orders, workers=n, mode=mode or "threads", progress=progress)
