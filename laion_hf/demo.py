"""``laion-hf demo``: the whole pipeline, end to end, on the embedded image world.

synthesize metadata (captions and URLs from :mod:`laion_hf.world`: images that match their
captions, 30 % LAION-like caption noise, ground truth in passthrough columns) -> stream +
filter (preset, expression, blocklist) -> stats -> fetch the images from the loopback image
server (img2dataset-compatible shards, error classes) -> stream with images -> CLIP features
(the world's teacher CLIP ``laion-hf-world`` by default) -> the ``clip_similarity >= t``
filter scored against the ground truth (precision, recall, a contact sheet PNG) -> parquet
shards + dataset card -> push to the local Hub-compatible server -> reload with plain
``datasets.load_dataset(repo, streaming=True)`` -> PyTorch DataLoader with exact resume ->
kNN index, and the ``laion-hf serve`` command that opens the explorer page on the subset.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

DEMO_MARKER = ".laion-hf-demo"


def prepare_demo_dir(out_dir: str, *, keep: bool = False) -> None:
    """Make ``out_dir`` ready for a demo run without ever removing a user's files.

    A missing or empty folder is used as is. A folder holding the demo's own marker file
    (a previous demo output) is cleared unless ``keep``. Any other non-empty folder (``--out .``
    in a project, say) is refused with :class:`~laion_hf.errors.OutputError`.
    """
    from laion_hf._util.outdir import check_output_dir
    from laion_hf.errors import OutputError

    check_output_dir(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(os.path.join(out_dir, DEMO_MARKER)):
            raise OutputError(
                f"demo output folder {out_dir!r} is not empty and is not a previous demo output "
                f"(no {DEMO_MARKER} file): choose a new or empty folder"
            )
        if not keep:
            for entry in os.listdir(out_dir):
                path = os.path.join(out_dir, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, DEMO_MARKER), "w") as f:
        f.write("laion-hf demo output: `laion-hf demo --out` may clear this folder\n")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


STAGES = ("metadata", "images", "clip", "publish", "dataloader")


@dataclass
class _Demo:
    """What the demo's steps share: where it writes, its options and the summary it builds."""

    out_dir: str
    rows: int
    seed: int
    clip_model: str
    clip_pretrained: str | None
    clip_device: str
    stages_through: str
    summary: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        return os.path.join(self.out_dir, *parts)


def run_demo(
    out_dir: str = "demo_out",
    rows: int = 2000,
    *,
    seed: int = 0,
    keep: bool = False,
    stages_through: str = "dataloader",
    clip_model: str = "laion-hf-world",
    clip_pretrained: str | None = None,
    clip_device: str = "auto",
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` up to stage ``stages_through`` (one of :data:`STAGES`);
    return a summary dict (also written as ``summary.json``)."""
    from laion_hf.errors import LaionHFError

    if stages_through not in STAGES:
        raise LaionHFError(f"unknown demo stage {stages_through!r}; stages: {', '.join(STAGES)}")
    prepare_demo_dir(out_dir, keep=keep)
    demo = _Demo(out_dir, rows, seed, clip_model, clip_pretrained, clip_device, stages_through)
    meta_dir = _synthesize_step(demo)
    builder, subset = _scan_step(demo, meta_dir)
    if stages_through == "metadata":
        return _finish(out_dir, demo.summary)
    from laion_hf.testing.image_server import ImageServer

    with ImageServer(latency=(0.005, 0.03), catch_all="image", seed=seed) as srv:
        subset_dir, cache, resize = _download_step(demo, subset, srv)
        if stages_through != "images":
            _clip_and_publish_step(demo, builder, subset_dir, cache, resize)
    if stages_through in ("images", "clip", "publish"):
        return _finish(out_dir, demo.summary)
    _step("7. PyTorch DataLoader on the published shards (2 workers, exact resume)")
    from laion_hf.loader import loader_demo

    ld = loader_demo(demo.path("published"), batch_size=16, num_workers=2, image_size=64)
    print(f"   {ld}")
    demo.summary["dataloader"] = ld
    _step("8. kNN index over the published shards, to explore them in the browser")
    demo.summary["explore"] = _index_for_page(out_dir, clip_model)
    return _finish(out_dir, demo.summary)


def _synthesize_step(demo: _Demo) -> str:
    """Step 1: metadata of the embedded world, with LAION-like caption noise."""
    from laion_hf.synth import synthesize

    t = _step(
        f"1. synthesize {demo.rows:,} rows of LAION metadata from the embedded image world "
        f"(captions describe the images; {WORLD_NOISE:.0%} carry LAION-like noise)"
    )
    meta_dir = demo.path("metadata")
    rg = max(1, demo.rows // 4)
    synthesize(demo.rows, meta_dir, files=2, seed=demo.seed, row_group_size=rg, world=True, noise=WORLD_NOISE)
    print(f"   wrote {meta_dir} in {time.time() - t:.2f}s")
    return meta_dir


def _write_blocklist(demo: _Demo, meta_dir: str) -> str:
    """A blocklist file of the MD5 digests of the first 5 URLs."""
    import hashlib

    from laion_hf.builder import make_builder

    urls = next(make_builder(meta_dir, columns=["url"]).iter_tables()).column("url").to_pylist()[:5]
    path = demo.path("blocklist_md5.txt")
    with open(path, "w") as f:
        f.write("# demo blocklist: MD5 of 5 URLs\n")
        f.writelines(hashlib.md5(u.encode()).hexdigest() + "\n" for u in urls)
    return path


def _scan_step(demo: _Demo, meta_dir: str) -> tuple[Any, "pa.Table"]:
    """Steps 2-3: stream the metadata through a preset, a filter and a blocklist; print stats."""
    from laion_hf.blocklist import Blocklist
    from laion_hf.builder import make_builder
    from laion_hf.errors import LaionHFError
    from laion_hf.stats import StatsAccumulator, format_stats

    t = _step(
        "2. stream (LaionBuilder, as load_laion): preset laion2b-en + 'punsafe < 0.5 and min(width, height) >= 256' + blocklist"
    )
    where = "punsafe < 0.5 and min(width, height) >= 256"
    blocklist = Blocklist.from_files(_write_blocklist(demo, meta_dir))
    builder = make_builder(meta_dir, preset="laion2b-en", where=where, blocklist=blocklist)
    acc = StatsAccumulator()
    tables = []
    for table in builder.iter_tables():
        acc.update(table)
        tables.append(table)
    scan = builder.stats.as_dict()
    print(f"   release detected: {builder.release}; filters: {builder.filter_spec.descriptions}")
    print(
        f"   rows in {scan['rows_in']:,} -> kept {scan['rows_kept']:,} (filter -{scan['removed_by_filter']:,}, "
        f"blocklist -{scan['removed_by_blocklist']:,}) in {time.time() - t:.2f}s"
    )
    removed = scan["removed_by_filter"] + scan["removed_by_blocklist"] + scan["removed_by_sample"]
    assert scan["rows_in"] == scan["rows_kept"] + removed, "stats must sum to the input count"
    demo.summary["scan"] = scan
    _step("3. stats of the filtered stream")
    stats = acc.result()
    print(format_stats(stats))
    demo.summary["stats"] = {"rows": stats["rows"], "languages": stats["languages"]}
    subset = pa.concat_tables(tables) if tables else None
    if subset is None or subset.num_rows == 0:
        raise LaionHFError("the demo's filters kept no rows; use more --rows")
    return builder, subset


def _download_step(demo: _Demo, subset: "pa.Table", srv: Any) -> tuple[str, str, Any]:
    """Step 4: fetch the subset's images from the loopback server into img2dataset shards."""
    import pyarrow.parquet as pq

    from laion_hf.images.download import download
    from laion_hf.images.resize import ResizeConfig

    t = _step(f"4. fetch images from the loopback image server {srv.base_url} (URLs rewritten, paths kept)")
    subset = _rewrite_urls(subset, srv, fault_every=25)
    srv.prerender_world(subset.column("world_key").to_pylist())
    subset_dir = demo.path("subset")
    os.makedirs(subset_dir, exist_ok=True)
    pq.write_table(subset, os.path.join(subset_dir, "part-00000.parquet"))
    cache, shards = demo.path("image_cache"), demo.path("images_webdataset")
    resize = ResizeConfig(image_size=256, resize_mode="center_crop")
    dl = download(subset_dir, shards, output_format="webdataset", processes=1, shard_size=500, cache_dir=cache,
                  resize=resize, progress=False, allow_private_networks=["127.0.0.0/8"])  # fmt: skip
    errors = {k: v for k, v in dl["status_dict"].items() if k != "success"}
    print(
        f"   img2dataset-compatible shards in {shards}: {dl['count']:,} rows, {dl['successes']:,} successes, "
        f"errors by class: {errors} in {time.time() - t:.2f}s"
    )
    assert dl["count"] == subset.num_rows, "download stats must sum to the input count"
    demo.summary["download"] = {k: dl[k] for k in ("count", "successes", "status_dict")}
    return subset_dir, cache, resize


def _provenance(demo: _Demo, builder: Any, embed_dim: int) -> dict[str, Any]:
    """The record the dataset card renders."""
    scan = demo.summary["scan"]
    return {
        "release": builder.release,
        "sources": ["synthetic LAION metadata (laion-hf synth --world: the embedded image world)"],
        "preset": "laion2b-en",
        "filters": builder.filter_spec.descriptions,
        "blocklists": [
            {"name": "blocklist_md5.txt", "entries": 5, "column": "url", "removed": scan["removed_by_blocklist"]}
        ],
        "scan": scan,
        "clip": {"model": demo.clip_model, "pretrained": demo.clip_pretrained, "embedding_dim": embed_dim},
        "robots": {"disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"]},
        "pretty_name": "laion-hf demo subset",
    }


def _clip_and_publish_step(demo: _Demo, builder: Any, subset_dir: str, cache: str, resize: Any) -> None:
    """Steps 5-6: stream images + CLIP scores, score the filter against the ground truth,
    then (unless the demo stops at ``clip``) publish shards with a card and reload them."""
    from laion_hf import load_laion, with_images
    from laion_hf.clip import clip_stage
    from laion_hf.clip.stream import SimilarityStats, format_similarity_summary

    _step(f"5. stream: load_laion -> with_images (cache from step 4) -> with_clip ({demo.clip_model})")
    stream = with_images(load_laion(subset_dir), cache_dir=cache, resize=resize, allow_private_networks=["127.0.0.0/8"])
    stream, embedder = clip_stage(stream, demo.clip_model, demo.clip_pretrained, device=demo.clip_device)
    print(f"   {_heads_note(embedder)}")
    sim, report = SimilarityStats(), _filter_report(demo.clip_model, demo.clip_pretrained)
    publish = demo.stages_through != "clip"
    sheet_dirs = [demo.out_dir] + ([demo.path("published", "assets")] if publish else [])

    def observed(ds):
        for table in ds.with_format("arrow").iter(batch_size=256):
            sim.update(table)
            report.update(table)
            yield table
        demo.summary["clip_filter"] = _write_report(report, demo.clip_model, sheet_dirs)

    if not publish:
        for _ in observed(stream):
            pass
    else:
        _step("6. shards + dataset card -> push to the local Hub server -> reload with plain load_dataset")
        from laion_hf.testing.local_hub import publish_local

        pub = publish_local(observed(stream), demo.path("published"), "laion-hf/demo-subset",
                            provenance=_provenance(demo, builder, embedder.embed_dim),
                            hub_root=demo.path("hub"), show=3)  # fmt: skip
        demo.summary["publish"] = {
            k: pub[k] for k in ("repo_id", "rows", "rows_written", "num_shards", "reloaded_rows")
        }
    print(format_similarity_summary(sim.result()))
    _print_report(demo.summary["clip_filter"])
    if publish:
        demo.summary["clip_similarity"] = {k: v for k, v in sim.result().items() if not isinstance(v, (list, dict))}


def _index_for_page(out_dir: str, clip_model: str) -> dict[str, Any]:
    """Index the published shards (``laion-hf index``) and print the command that serves the
    explorer page on them; skipped with a note when the index extra (faiss) is missing."""
    published, index_dir = os.path.join(out_dir, "published"), os.path.join(out_dir, "index")
    try:
        from laion_hf.index import build_index
    except ImportError as e:
        print(f"   skipped: the index extra is missing ({e}); pip install 'laion-hf[index]'")
        return {"skipped": str(e)}
    t = time.time()
    infos = build_index(published, index_dir, clip_model=clip_model)
    kinds = ", ".join(f"{k} {v['index_key']}" for k, v in infos["kinds"].items())
    command = f"laion-hf serve {index_dir}"
    print(f"   {infos['rows']:,} rows indexed ({kinds}) in {time.time() - t:.2f}s -> {index_dir}")
    print(f"   explore the subset: {command}  then open http://127.0.0.1:1234/")
    return {"index": index_dir, "rows": infos["rows"], "command": command, "url": "http://127.0.0.1:1234/"}


#: Share of noisy captions in the demo's world rows.
WORLD_NOISE = 0.3
CONTACT_SHEET = "contact_sheet.png"


def _heads_note(embedder: Any) -> str:
    if embedder.embed_dim in (512, 768):
        return "score heads: LAION aesthetic V1 for this embedding size (column aesthetic_score_v1)"
    return (
        f"score heads: none. LAION's aesthetic (V1/V2) and NSFW heads were trained on ViT-B/32 and "
        f"ViT-L/14 embeddings; on this {embedder.embed_dim}-d space their scores would mean nothing"
    )


def _filter_report(clip_model: str, clip_pretrained: str | None) -> Any:
    """The ground-truth scorer of ``clip_similarity >= t``: the teacher's validated threshold,
    LAION's 0.28 for any other model."""
    from laion_hf.world.report import FilterReport
    from laion_hf.world.teacher import TEACHER_MODEL, teacher_threshold

    teacher = clip_model == TEACHER_MODEL and not clip_pretrained
    return FilterReport(teacher_threshold() if teacher else 0.28)


def _write_report(report: Any, clip_model: str, folders: list[str]) -> dict[str, Any]:
    """Score the filter and write the contact sheet into ``folders``; returns the summary."""
    result = report.result()
    png = report.sheet(
        f"{clip_model}: clip_similarity >= {result['threshold']:.4f} keeps "
        f"{result['kept']:,} of {result['scored']:,} pairs; precision {result['precision']:.1%}, "
        f"recall {result['recall']:.1%} (green: caption matches the image, red: noisy)"
    )
    result["contact_sheet"] = []
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, CONTACT_SHEET)
        with open(path, "wb") as f:
            f.write(png)
        result["contact_sheet"].append(path)
    return result


def _print_report(result: dict[str, Any]) -> None:
    from laion_hf.world.report import format_report

    print(format_report(result))
    print(
        f"   contact sheet (kept and removed pairs with captions and similarity): {', '.join(result['contact_sheet'])}"
    )


def _rewrite_urls(table: "pa.Table", srv: Any, fault_every: int = 0) -> "pa.Table":
    """Point every URL at the loopback server (scheme+host replaced, path and query kept);
    every ``fault_every``-th row gets one of the server's faults instead, so the demo's stats
    show real error classes."""
    faults = ["404", "corrupt-jpeg", "robots", "410", "html-as-image"]
    urls = []
    for i, url in enumerate(table.column("url").to_pylist()):
        if fault_every and i % fault_every == fault_every - 1:
            urls.append(srv.fault_url(faults[(i // fault_every) % len(faults)]))
        else:
            urls.append(srv.rewrite_url(url))
    return table.set_column(table.column_names.index("url"), "url", pa.array(urls, pa.string()))


def _finish(out_dir: str, summary: dict[str, Any]) -> dict[str, Any]:
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"\ndemo done: {os.path.join(out_dir, 'summary.json')}")
    return summary
