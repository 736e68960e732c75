"""``laion-hf index --engine ray``: the index stage's work orders mapped over Ray tasks.

The driver plans (chooses the index type, trains on a sample) and finishes (assembles the parts
in row order, tunes, writes ``infos.json``); Ray runs :func:`~laion_hf.index.build.run_one` on
every order, in parallel, each writing its own part file. The parts are what the local engine
writes, so the finished index is the same, and a run can resume on either engine. On a cluster,
``out`` (and the source, unless remote) must be a path every node sees.
"""

from __future__ import annotations

import os
from typing import Any

from laion_hf.index.build import finish, plan, run_one


def build_index_ray(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`~laion_hf.index.build.build_index` with ``run_one`` on Ray (at most ``workers``
    orders at once; default: one per CPU of the cluster). Returns the infos."""
    from laion_hf.engine_ray import init_ray

    ray = init_ray(address)
    orders = plan(src, out, **kwargs)
    task = ray.remote(num_cpus=1, max_retries=3)(run_one)
    limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending, results = [], []
    for order in orders:
        if len(pending) >= limit:
            done, pending = ray.wait(pending, num_returns=1)
            results += ray.get(done)
        pending.append(task.remote(order))
    results += ray.get(pending)
    return finish(orders, results)
