"""Map a stage's ``run_one`` over its work orders on this machine: in order on this thread, on a
thread pool, or on worker processes that die with their parent.

The one local mapper: the stages' own functions (``filter_to_parquet``, ``download``,
``embed_shards``) and the local engine (:mod:`laion_hf.engines.local`) both run through it.
Every order is attempted; a failed one is returned as a :class:`Failure` (never raised here),
so the caller decides whether to retry it and how to report it.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

Progress = Callable[[int, int], None]


@dataclass
class Failure:
    """An order whose ``run_one`` raised: the order, the exception and the tries made."""

    order: Any
    error: BaseException
    tries: int = 1

    def describe(self) -> str:
        """``<order>: <ExceptionClass>: <message>``: names the culprit."""
        return f"{describe_order(self.order)}: {type(self.error).__name__}: {self.error}"


def describe_order(order: Any) -> str:
    """An order's own ``describe()`` (e.g. ``shard 00003 (in.parquet)``), else its repr."""
    fn = getattr(order, "describe", None)
    return fn() if callable(fn) else repr(order)


def map_orders(
    run_one: Callable[..., Any],
    orders: Sequence[Any],
    *,
    workers: int = 1,
    mode: str = "processes",
    progress: Optional[Progress] = None,
    on_result: Optional[Callable[[int, Any], None]] = None,
) -> list[Any]:
    """``[run_one(order, progress) for order in orders]``, each result or a :class:`Failure`.

    Args:
        workers: at most this many orders at once (1: in order, on this thread).
        mode: ``"threads"`` or ``"processes"`` (spawned workers that exit when this process
            dies, see :func:`exit_with_parent`) for ``workers > 1``.
        progress: ``progress(rows, successes)``, forwarded to ``run_one`` (from worker
            processes through a queue, called on this thread).
        on_result: ``on_result(index, result)`` as each order ends (in completion order).
    """
    results: list[Any] = [None] * len(orders)

    def done(i: int, value: Any) -> None:
        results[i] = value
        if on_result is not None:
            on_result(i, value)

    if workers <= 1 or len(orders) <= 1:
        for i, order in enumerate(orders):
            try:
                value = run_one(order, progress)
            except Exception as e:  # noqa: BLE001 - returned, reported by the caller
                value = Failure(order, e)
            done(i, value)
    elif mode == "threads":
        with ThreadPoolExecutor(min(workers, len(orders)), thread_name_prefix="laion-hf-order") as pool:
            _collect({pool.submit(run_one, o, progress): i for i, o in enumerate(orders)}, orders, done)
    elif mode == "processes":
        _process_map(run_one, orders, workers, progress, done)
    else:
        from laion_hf.errors import EngineError

        raise EngineError(f"mode must be 'threads' or 'processes', got {mode!r}")
    return results


def _collect(
    futs: dict[Future, int],
    orders: Sequence[Any],
    done: Callable[[int, Any], None],
    poll: Optional[Callable[[], None]] = None,
) -> None:
    remaining = set(futs)
    while remaining:
        finished, remaining = wait(remaining, timeout=0.2, return_when=FIRST_COMPLETED)
        if poll is not None:
            poll()
        for f in finished:
            i = futs[f]
            try:
                done(i, f.result())
            except Exception as e:  # noqa: BLE001 - a dead worker process is a failure too
                done(i, Failure(orders[i], e))


def _process_map(
    run_one: Callable[..., Any],
    orders: Sequence[Any],
    workers: int,
    progress: Optional[Progress],
    done: Callable[[int, Any], None],
) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    drain = (lambda: _drain(q, progress)) if progress is not None else None
    with ProcessPoolExecutor(
        max_workers=min(workers, len(orders)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(q, os.getpid()),
    ) as pool:
        futs = {pool.submit(_call_in_worker, run_one, o): i for i, o in enumerate(orders)}
        _collect(futs, orders, done, drain)
    if drain is not None:
        drain()


_QUEUE: Any = None


def _init_worker(queue: Any, parent_pid: Optional[int] = None) -> None:
    global _QUEUE
    _QUEUE = queue
    if parent_pid is not None:
        exit_with_parent(parent_pid)


def _call_in_worker(run_one: Callable[..., Any], order: Any) -> Any:
    """Worker process entry point: run one order, its progress sent to the parent's queue."""

    def progress(d: int, s: int) -> None:
        if _QUEUE is not None and (d or s):
            _QUEUE.put((d, s))

    return run_one(order, progress)


def _drain(q: Any, progress: Progress) -> None:
    import queue as queue_mod

    while True:
        try:
            d, s = q.get_nowait()
        except (queue_mod.Empty, EOFError, OSError):
            return
        progress(d, s)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this (worker) process exit as soon as ``parent_pid``, its parent, dies.

    On Linux the kernel kills it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); everywhere a daemon
    thread also polls the parent pid (a dead parent's children are re-parented), which covers
    other systems and the race of a parent dying before the ``prctl``.
    """
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog thread still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)  # nothing to save: the parent that would merge this order is gone

    threading.Thread(target=watch, name="laion-hf-parent-watch", daemon=True).start()


def failures_of(results: Sequence[Any]) -> list[Failure]:
    """The :class:`Failure` entries of ``results``."""
    return [r for r in results if isinstance(r, Failure)]


def raise_failures(results: Sequence[Any], what: str) -> None:
    """Raise the first failure of ``results``: a laion-hf error as its own class (its message
    names the culprit), anything else as an :class:`~laion_hf.errors.EngineError` naming the
    order; ``(and N more failure(s): ...)`` when several orders failed."""
    from laion_hf.errors import EngineError, LaionHFError

    failed = failures_of(results)
    if not failed:
        return
    first = failed[0]
    more = ""
    if len(failed) > 1:
        more = f" (and {len(failed) - 1} more failure(s): " + "; ".join(f.describe() for f in failed[1:4]) + ")"
    if isinstance(first.error, LaionHFError):
        raise type(first.error)(f"{first.error}{more}") from first.error
    tries = f" after {first.tries} tries" if first.tries > 1 else ""
    raise EngineError(f"{what}: {first.describe()}{tries}{more}") from first.error


def with_retries(
    mapper: Callable[[Callable[..., Any], Sequence[Any]], list[Any]],
    run_one: Callable[..., Any],
    orders: Sequence[Any],
    retries: int,
) -> list[Any]:
    """``mapper(run_one, orders)``, then the orders that failed with anything but a laion-hf
    error (those name bad input: running them again gives the same answer) mapped again, up to
    ``retries`` more times; a failure still there keeps its count of tries."""
    from laion_hf.errors import LaionHFError

    results = list(mapper(run_one, orders))
    for _ in range(max(0, retries)):
        redo = [i for i, r in enumerate(results) if isinstance(r, Failure) and not isinstance(r.error, LaionHFError)]
        if not redo:
            break
        again = list(mapper(run_one, [orders[i] for i in redo]))
        for i, r in zip(redo, again, strict=False):
            if isinstance(r, Failure):
                r.tries = results[i].tries + 1
            results[i] = r
    return results
