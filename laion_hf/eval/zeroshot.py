"""Zero-shot evaluation of open_clip models: classification and retrieval, CLIP_benchmark-style.

Images go through the model's own eval transform (open_clip's resize, centre crop, RGB,
normalise; no JPEG draft decoding), decoded by a thread pool a few batches ahead of the model.
The model runs in fp32 unless ``precision`` asks for fp16/bf16 autocast (which changes the
numbers), on the GPU when there is one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from laion_hf.errors import EvalError, ModelError
from laion_hf.eval.data import CLASSIFICATION, RETRIEVAL, EvalDataset, EvalSample, load_eval_dataset
from laion_hf.eval.metrics import (
    classification_logits,
    classification_metrics,
    classifier_from_text_embeddings,
    retrieval_metrics,
)

__all__ = [
    "DEFAULT_RECALL_K",
    "build_table",
    "encode_images",
    "evaluate",
    "load_model",
    "result_path",
    "zeroshot_classification",
    "zeroshot_retrieval",
]

DEFAULT_RECALL_K = (1, 5, 10)


def load_model(
    model: str,
    pretrained: str | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int | None = None,
    cache_dir: str | None = None,
    allow_download: bool = False,
) -> Any:
    """An open_clip model as a :class:`~laion_hf.clip.model.ClipEmbedder`: a name plus a
    pretrained tag or weights file, ``hf-hub:org/name``, ``local-dir:/folder``, or a checkpoint
    written by ``laion-hf train`` (pass the file as ``model``; its model name is inside)."""
    from laion_hf.clip.model import ClipEmbedder

    if pretrained is None and os.path.isfile(model):
        model, pretrained = checkpoint_model_name(model), model
    return ClipEmbedder(
        model,
        pretrained,
        device=device,
        precision=precision,
        batch_size=batch_size,
        cache_dir=cache_dir,
        allow_download=allow_download,
    )


def checkpoint_model_name(path: str) -> str:
    """The open_clip model name stored in a ``laion-hf train`` checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of every kind
        raise ModelError(f"{path} is not a readable torch checkpoint: {e}") from e
    name = ckpt.get("model_name") if isinstance(ckpt, dict) else None
    if not name:
        raise ModelError(
            f"{path} does not record its model name; pass the model name and "
            "pretrained={path} (--model NAME --pretrained FILE)"
        )
    return str(name)


# ---------------------------------------------------------------- images
def _batched(items: Iterable[EvalSample], n: int) -> Iterator[list[EvalSample]]:
    batch: list[EvalSample] = []
    for s in items:
        batch.append(s)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _decode(buf: torch.Tensor, batch: list[EvalSample], slots: range, embedder: Any) -> list[str | None]:
    from laion_hf.clip.decode import decode_into

    return [decode_into(buf, s, batch[s].image, None, embedder, draft=False) for s in slots]


def _submit(
    pool: ThreadPoolExecutor, embedder: Any, batch: list[EvalSample], workers: int
) -> tuple[torch.Tensor, list[tuple[Future, range]]]:
    h, w = embedder.image_size
    shape, dtype = (
        ((len(batch), h, w, 3), torch.uint8) if embedder.uint8_path else ((len(batch), 3, h, w), torch.float32)
    )
    buf = torch.empty(shape, dtype=dtype, pin_memory=embedder.pin_memory)
    step = max(1, -(-len(batch) // workers))
    jobs = [
        (
            pool.submit(_decode, buf, batch, range(s, min(s + step, len(batch))), embedder),
            range(s, min(s + step, len(batch))),
        )
        for s in range(0, len(batch), step)
    ]
    return buf, jobs


def _finish(embedder: Any, batch: list[EvalSample], buf: torch.Tensor, jobs: list, source: str) -> torch.Tensor:
    for fut, slots in jobs:
        for s, err in zip(slots, fut.result()):
            if err is not None:
                raise EvalError(f"{source}: sample {batch[s].key!r}: image cannot be decoded ({err})")
    return embedder.encode_image_batch(buf)


def encode_images(
    embedder: Any,
    samples: Iterable[EvalSample],
    *,
    num_workers: int | None = None,
    prefetch: int = 2,
    source: str = "",
) -> Iterator[tuple[list[EvalSample], torch.Tensor]]:
    """Yield ``(samples, L2-normalised image embeddings on the device)`` per model batch, the
    images decoded ``prefetch`` batches ahead by ``num_workers`` threads."""
    workers = int(num_workers or min(16, os.cpu_count() or 1))
    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="laion-hf-eval-decode") as pool:
        try:
            for batch in _batched(samples, embedder.batch_size):
                pending.append((batch, *_submit(pool, embedder, batch, workers)))
                if len(pending) > prefetch:
                    batch0, buf, jobs = pending.popleft()
                    yield batch0, _finish(embedder, batch0, buf, jobs, source)
            while pending:
                batch0, buf, jobs = pending.popleft()
                yield batch0, _finish(embedder, batch0, buf, jobs, source)
        finally:
            for _, _, jobs in pending:
                for fut, _ in jobs:
                    fut.cancel()


def _progress(total: int | None, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True)


# ---------------------------------------------------------------- tasks
def encode_texts(embedder: Any, texts: Sequence[str]) -> torch.Tensor:
    """``(len(texts), D)`` L2-normalised text embeddings on the device. Each distinct token
    sequence is encoded once (texts that tokenise alike get bit-identical embeddings, so they
    tie exactly), in batches of similar length (the embedder runs only up to the last
    end-of-text token of a batch)."""
    if not texts:
        return torch.zeros((0, embedder.embed_dim), dtype=torch.float32, device=embedder.device)
    tokens = embedder.tokenizer(list(texts))
    unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    order = torch.argsort(unique.argmax(dim=-1), stable=True)  # end-of-text position ~ length
    out = torch.empty((len(unique), embedder.embed_dim), dtype=torch.float32, device=embedder.device)
    bs = embedder.batch_size
    for i in range(0, len(order), bs):
        idx = order[i : i + bs]
        out[idx.to(embedder.device)] = embedder.encode_token_batch(unique[idx])
    return out[inverse.to(embedder.device)]


def text_classifier(embedder: Any, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """The ``(D, C)`` zero-shot classifier of ``classnames`` with ``templates`` (built once per
    evaluation; classes whose texts tokenise alike get bit-identical classifiers)."""
    emb = encode_texts(embedder, [t.format(c=c) for c in classnames for t in templates])
    return classifier_from_text_embeddings(emb, len(classnames))


def zeroshot_classification(
    embedder: Any,
    dataset: EvalDataset,
    *,
    num_workers: int | None = None,
    progress: bool = False,
    ties: str = "index",
) -> dict[str, float]:
    """``acc1``, ``acc5``, ``mean_per_class_recall`` of ``embedder`` on ``dataset`` (``ties``:
    see :mod:`laion_hf.eval.metrics`)."""
    if not dataset.classnames or not dataset.templates:
        raise EvalError(f"{dataset.source}: classification needs class names and templates")
    classifier = text_classifier(embedder, dataset.classnames, dataset.templates)
    logits, targets = [], []
    with _progress(dataset.num_samples, progress, f"eval {dataset.name}") as bar:
        for batch, emb in encode_images(embedder, dataset.samples(), num_workers=num_workers, source=dataset.source):
            logits.append(classification_logits(emb, classifier).cpu())
            targets.extend(s.label for s in batch)
            bar.update(len(batch))
    if not targets:
        raise EvalError(f"{dataset.source}: the dataset has no samples")
    return classification_metrics(torch.cat(logits), torch.tensor(targets), ties=ties)


def zeroshot_retrieval(
    embedder: Any,
    dataset: EvalDataset,
    *,
    recall_k: Sequence[int] = DEFAULT_RECALL_K,
    num_workers: int | None = None,
    progress: bool = False,
    ties: str = "index",
) -> dict[str, float]:
    """``image_retrieval_recall@k`` and ``text_retrieval_recall@k`` of ``embedder`` on ``dataset``."""
    images, captions, owner = [], [], []
    with _progress(dataset.num_samples, progress, f"eval {dataset.name}") as bar:
        for batch, emb in encode_images(embedder, dataset.samples(), num_workers=num_workers, source=dataset.source):
            base = sum(len(i) for i in images)
            for j, s in enumerate(batch):
                captions.extend(s.captions or [])
                owner.extend([base + j] * len(s.captions or []))
            images.append(emb.cpu())
            bar.update(len(batch))
    if not images:
        raise EvalError(f"{dataset.source}: the dataset has no samples")
    text_emb = encode_texts(embedder, captions).cpu()
    return retrieval_metrics(torch.cat(images), text_emb, owner, recall_k, ties=ties)


# ---------------------------------------------------------------- runs and results
def evaluate(
    model: str | Any,
    dataset: str | EvalDataset,
    *,
    pretrained: str | None = None,
    task: str = "auto",
    recall_k: Sequence[int] = DEFAULT_RECALL_K,
    num_workers: int | None = None,
    progress: bool = False,
    language: str = "en",
    ties: str = "index",
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` (a name/``hf-hub:``/``local-dir:``/checkpoint, or a loaded
    ``ClipEmbedder``) on ``dataset`` (a source for :func:`load_eval_dataset`, or a loaded one).

    Returns CLIP_benchmark's result record: ``dataset, model, pretrained, task, metrics, language``.
    """
    ds = dataset if isinstance(dataset, EvalDataset) else load_eval_dataset(dataset, task=task)
    embedder = model if hasattr(model, "encode_image_batch") else load_model(model, pretrained, **model_kwargs)
    if ds.task == CLASSIFICATION:
        metrics = zeroshot_classification(embedder, ds, num_workers=num_workers, progress=progress, ties=ties)
    elif ds.task == RETRIEVAL:
        metrics = zeroshot_retrieval(
            embedder, ds, recall_k=recall_k, num_workers=num_workers, progress=progress, ties=ties
        )
    else:
        raise EvalError(f"unsupported task {ds.task!r}")
    return {
        "dataset": ds.name,
        "model": embedder.model_name,
        "pretrained": embedder.pretrained or "",
        "task": ds.task,
        "metrics": metrics,
        "language": language,
    }


def result_path(
    result: dict[str, Any],
    out_dir: str | Path = ".",
    template: str = "{dataset}_{pretrained}_{model}_{language}_{task}.json",
) -> Path:
    """CLIP_benchmark's output file name for a result (``/`` in names become ``_``)."""
    pretrained = str(result.get("pretrained") or "")
    pretrained = os.path.basename(pretrained) if os.path.isfile(pretrained) else pretrained
    fields = {k: str(result.get(k) or "").replace("/", "_").replace(":", "_") for k in ("model", "task", "language")}
    dataset = str(result["dataset"]).removeprefix("wds/").replace("/", "_")
    return Path(out_dir) / template.format(dataset=dataset, pretrained=pretrained.replace("/", "_") or "none", **fields)


def write_result(result: dict[str, Any], out_dir: str | Path = ".", template: str | None = None) -> Path:
    """Write one result JSON (CLIP_benchmark's shape); returns its path."""
    path = result_path(result, out_dir, template) if template else result_path(result, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result), encoding="utf-8")
    return path


_FIRST = ("dataset", "model", "pretrained", "model_fullname", "task", "language")


def build_table(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of result JSON files (folders: their ``*.json``): the fields plus the metrics and
    ``model_fullname`` (``model + ' ' + pretrained``), as ``clip_benchmark build``."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            row = {**data["metrics"], **{k: v for k, v in data.items() if k != "metrics"}}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EvalError(f"{f}: not a result file with 'metrics' ({e})") from e
        row["model_fullname"] = f"{row.get('model', '')} {row.get('pretrained', '')}"
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Write :func:`build_table` rows as CSV (identity columns first, then the metrics)."""
    names: list[str] = [c for c in _FIRST if any(c in r for r in rows)]
    for r in rows:
        names.extend(k for k in r if k not in names)
    out = Path(out)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(v) for k, v in r.items()})
    return out


def _cell(v: Any) -> Any:
    return "nan" if isinstance(v, float) and math.isnan(v) else v
