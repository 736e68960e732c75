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
    import pyarrow as pa
    import pyarrow.parquet as pq

    from laion_hf.errors import LaionHFError

    if stages_through not in STAGES:
        raise LaionHFError(f"unknown demo stage {stages_through!r}; stages: {', '.join(STAGES)}")
    from laion_hf.blocklist import Blocklist
    from laion_hf.builder import make_builder
    from laion_hf.stats import StatsAccumulator, format_stats
    from laion_hf.synth import synthesize

    prepare_demo_dir(out_dir, keep=keep)
    summary: dict[str, Any] = {}

    t = _step(
        f"1. synthesize {rows:,} rows of LAION metadata from the embedded image world "
        f"(captions describe the images; {WORLD_NOISE:.0%} carry LAION-like noise)"
    )
    meta_dir = os.path.join(out_dir, "metadata")
    synthesize(rows, meta_dir, files=2, seed=seed, row_group_size=max(1, rows // 4), world=True, noise=WORLD_NOISE)
    print(f"   wrote {meta_dir} in {time.time() - t:.2f}s")

    t = _step(
        "2. stream (LaionBuilder, as load_laion): preset laion2b-en + 'punsafe < 0.5 and min(width, height) >= 256' + blocklist"
    )
    first_urls = make_builder(meta_dir, columns=["url"]).iter_tables()
    urls = next(first_urls).column("url").to_pylist()[:5]
    import hashlib

    blocklist_path = os.path.join(out_dir, "blocklist_md5.txt")
    with open(blocklist_path, "w") as f:
        f.write("# demo blocklist: MD5 of 5 URLs\n")
        f.writelines(hashlib.md5(u.encode()).hexdigest() + "\n" for u in urls)
    builder = make_builder(
        meta_dir,
        preset="laion2b-en",
        where="punsafe < 0.5 and min(width, height) >= 256",
        blocklist=Blocklist.from_files(blocklist_path),
    )
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
    assert (
        scan["rows_in"]
        == scan["rows_kept"] + scan["removed_by_filter"] + scan["removed_by_blocklist"] + scan["removed_by_sample"]
    ), "stats must sum to the input count"
    summary["scan"] = scan

    _step("3. stats of the filtered stream")
    stats = acc.result()
    print(format_stats(stats))
    summary["stats"] = {"rows": stats["rows"], "languages": stats["languages"]}
    subset = pa.concat_tables(tables) if tables else None
    if subset is None or subset.num_rows == 0:
        raise LaionHFError("the demo's filters kept no rows; use more --rows")
    if stages_through == "metadata":
        return _finish(out_dir, summary)

    from laion_hf.images.download import download
    from laion_hf.images.resize import ResizeConfig
    from laion_hf.testing.image_server import ImageServer

    with ImageServer(latency=(0.005, 0.03), catch_all="image", seed=seed) as srv:
        t = _step(f"4. fetch images from the loopback image server {srv.base_url} (URLs rewritten, paths kept)")
        subset = _rewrite_urls(subset, srv, fault_every=25)
        srv.prerender_world(subset.column("world_key").to_pylist())
        subset_dir = os.path.join(out_dir, "subset")
        os.makedirs(subset_dir, exist_ok=True)
        pq.write_table(subset, os.path.join(subset_dir, "part-00000.parquet"))
        cache = os.path.join(out_dir, "image_cache")
        resize = ResizeConfig(image_size=256, resize_mode="center_crop")
        dl = download(
            subset_dir,
            os.path.join(out_dir, "images_webdataset"),
            output_format="webdataset",
            processes=1,
            shard_size=500,
            cache_dir=cache,
            resize=resize,
            progress=False,
            allow_private_networks=["127.0.0.0/8"],
        )
        print(
            f"   img2dataset-compatible shards in {os.path.join(out_dir, 'images_webdataset')}: "
            f"{dl['count']:,} rows, {dl['successes']:,} successes, errors by class: "
            f"{ {k: v for k, v in dl['status_dict'].items() if k != 'success'} } in {time.time() - t:.2f}s"
        )
        assert dl["count"] == subset.num_rows, "download stats must sum to the input count"
        summary["download"] = {k: dl[k] for k in ("count", "successes", "status_dict")}
        if stages_through == "images":
            return _finish(out_dir, summary)

        t = _step(f"5. stream: load_laion -> with_images (cache from step 4) -> with_clip ({clip_model})")
        from laion_hf import load_laion, with_images
        from laion_hf.clip import clip_stage
        from laion_hf.clip.stream import SimilarityStats, format_similarity_summary

        stream = with_images(
            load_laion(subset_dir), cache_dir=cache, resize=resize, allow_private_networks=["127.0.0.0/8"]
        )
        stream, embedder = clip_stage(stream, clip_model, clip_pretrained, device=clip_device)
        print(f"   {_heads_note(embedder)}")
        sim = SimilarityStats()
        report = _filter_report(clip_model, clip_pretrained)
        sheet_dirs = [out_dir] + ([os.path.join(out_dir, "published", "assets")] if stages_through != "clip" else [])

        def observed(ds):
            for table in ds.with_format("arrow").iter(batch_size=256):
                sim.update(table)
                report.update(table)
                yield table
            summary["clip_filter"] = _write_report(report, clip_model, sheet_dirs)

        if stages_through == "clip":
            for _ in observed(stream):
                pass
            print(format_similarity_summary(sim.result()))
            _print_report(summary["clip_filter"])
            return _finish(out_dir, summary)

        _step("6. shards + dataset card -> push to the local Hub server -> reload with plain load_dataset")
        from laion_hf.testing.local_hub import publish_local

        provenance = {
            "release": builder.release,
            "sources": ["synthetic LAION metadata (laion-hf synth --world: the embedded image world)"],
            "preset": "laion2b-en",
            "filters": builder.filter_spec.descriptions,
            "blocklists": [
                {"name": "blocklist_md5.txt", "entries": 5, "column": "url", "removed": scan["removed_by_blocklist"]}
            ],
            "scan": scan,
            "clip": {"model": clip_model, "pretrained": clip_pretrained, "embedding_dim": embedder.embed_dim},
            "robots": {"disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"]},
            "pretty_name": "laion-hf demo subset",
        }
        pub = publish_local(
            observed(stream),
            os.path.join(out_dir, "published"),
            "laion-hf/demo-subset",
            provenance=provenance,
            hub_root=os.path.join(out_dir, "hub"),
            show=3,
        )
        print(format_similarity_summary(sim.result()))
        _print_report(summary["clip_filter"])
        summary["publish"] = {k: pub[k] for k in ("repo_id", "rows", "rows_written", "num_shards", "reloaded_rows")}
        summary["clip_similarity"] = {k: v for k, v in sim.result().items() if not isinstance(v, (list, dict))}

    if stages_through == "publish":
        return _finish(out_dir, summary)
    _step("7. PyTorch DataLoader on the published shards (2 workers, exact resume)")
    from laion_hf.loader import loader_demo

    ld = loader_demo(os.path.join(out_dir, "published"), batch_size=16, num_workers=2, image_size=64)
    print(f"   {ld}")
    summary["dataloader"] = ld
    _step("8. kNN index over the published shards, to explore them in the browser")
    summary["explore"] = _index_for_page(out_dir, clip_model)
    return _finish(out_dir, summary)


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
        f"{clip_model}: clip_similarity >= {result['threshold']:.3f} keeps "
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
