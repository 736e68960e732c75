"""Evaluation sets: CLIP_benchmark's webdataset Hub layout (read and written) and any Hugging
Face dataset with an image column plus a label or caption column.

The layout (``clip-benchmark/wds_<name>`` on the Hub, or a local folder)::

    classnames.txt                          one class name per line (classification)
    zeroshot_classification_templates.txt   one template per line, ``{c}`` is the class name
    dataset_type.txt                        ``retrieval`` for retrieval sets
    test/nshards.txt                        N
    test/0.tar .. test/N-1.tar              samples: __key__ + webp|png|jpg|jpeg + cls (int) or txt

``load_eval_dataset("hf://datasets/org/name")``, ``("wds/name")`` (CLIP_benchmark's naming:
``clip-benchmark/wds_name`` on the Hub), ``("./folder")``, or a Hub dataset id / local
parquet or image folder readable by ``datasets.load_dataset``.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laion_hf.errors import EvalError

__all__ = [
    "BUILTIN_TEMPLATES",
    "CLASSIFICATION",
    "RETRIEVAL",
    "EvalDataset",
    "EvalSample",
    "load_eval_dataset",
    "write_benchmark",
]

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference

#: templates used when neither the dataset nor the caller gives any (CLIP's short ensemble)
BUILTIN_TEMPLATES = {
    "simple": ["a photo of a {c}."],
    "clip-short": [
        "itap of a {c}.",
        "a bad photo of the {c}.",
        "a origami {c}.",
        "a photo of the large {c}.",
        "a {c} in a video game.",
        "art of the {c}.",
        "a photo of the small {c}.",
    ],
}


@dataclass
class EvalSample:
    """One evaluation sample: its key, encoded image bytes and a label (classification) or
    captions (retrieval)."""

    key: str
    image: bytes
    label: int | None = None
    captions: list[str] | None = None


@dataclass
class EvalDataset:
    """An evaluation set: what to evaluate and how to read its samples (in a fixed order)."""

    name: str
    task: str
    classnames: list[str] | None
    templates: list[str] | None
    read: Callable[[], Iterator[EvalSample]] = field(repr=False)
    source: str = ""
    num_samples: int | None = None

    def samples(self) -> Iterator[EvalSample]:
        """The samples, checked: an image, and a label in range or captions."""
        n = len(self.classnames or [])
        for s in self.read():
            if self.task == CLASSIFICATION:
                if s.label is None:
                    raise EvalError(f"{self.source}: sample {s.key!r} has no label (cls)")
                if not 0 <= s.label < n:
                    raise EvalError(
                        f"{self.source}: sample {s.key!r} has label {s.label}, outside the {n} class names (0..{n - 1})"
                    )
            elif s.captions is None:
                raise EvalError(f"{self.source}: sample {s.key!r} has no captions (txt)")
            yield s


# ---------------------------------------------------------------- text files
def _read_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def read_list_file(path: str | Path, what: str) -> list[str]:
    """Class names / templates, one per line (CLIP_benchmark: stripped, empty lines kept
    except at the end)."""
    try:
        lines = _read_lines(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise EvalError(f"cannot read {what} file {path}: {e}") from e
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise EvalError(f"{what} file {path} is empty")
    return lines


def resolve_templates(templates: Sequence[str] | str | None, own: list[str] | None) -> list[str]:
    """Explicit templates (a list, a file, or a built-in set name) win over the dataset's own,
    which win over the built-in ``clip-short`` set. Each must hold ``{c}``."""
    if isinstance(templates, str):
        templates = (
            BUILTIN_TEMPLATES[templates] if templates in BUILTIN_TEMPLATES else read_list_file(templates, "templates")
        )
    out = list(templates or own or BUILTIN_TEMPLATES["clip-short"])
    for t in out:
        if "{c}" not in t:
            raise EvalError(f"template {t!r} has no {{c}} placeholder for the class name")
        try:
            t.format(c="x")
        except (KeyError, IndexError, ValueError) as e:
            raise EvalError(f"template {t!r} cannot be formatted with the class name: {e}") from e
    return out


# ---------------------------------------------------------------- the webdataset layout
def _to_fs(source: str) -> tuple[Any, str]:
    import fsspec

    if source.startswith("wds/"):
        source = f"hf://datasets/clip-benchmark/wds_{source[4:].replace('/', '-')}"
    if source.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        return HfFileSystem(skip_instance_cache=True), source[len("hf://") :].rstrip("/")
    fs, path = fsspec.core.url_to_fs(source)
    return fs, path.rstrip("/")


def _read_text(fs: Any, path: str) -> str | None:
    try:
        with fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except FileNotFoundError:
        return None


def is_wds_layout(source: str, split: str = "test") -> bool:
    """Whether ``source`` holds ``<split>/nshards.txt`` (CLIP_benchmark's layout)."""
    try:
        fs, root = _to_fs(source)
        return fs.isfile(posixpath.join(root, split, "nshards.txt"))
    except Exception:  # noqa: BLE001 - not a path or repo we can list: another kind of source
        return False


def _tar_samples(fs: Any, path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with fs.open(path, "rb") as fh:
        members = ({**m, "__url__": path} for m in tar_file_iterator(fh))
        for sample in group_by_keys(members):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}


def _parse_sample(path: str, key: str, parts: dict[str, bytes], task: str) -> EvalSample:
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if ext is None:
        raise EvalError(f"{path}: sample {key!r} has no image ({'|'.join(IMAGE_EXTS)}); it has {sorted(parts)}")
    if task == RETRIEVAL:
        txt = parts.get("txt")
        captions = txt.decode("utf-8").splitlines() if txt is not None else None
        return EvalSample(key, parts[ext], captions=captions)
    cls = parts.get("cls")
    if cls is None:
        raise EvalError(f"{path}: sample {key!r} has no label (no {key}.cls member); it has {sorted(parts)}")
    try:
        label = int(cls.decode("utf-8").strip())
    except ValueError as e:
        raise EvalError(f"{path}: sample {key!r} has a label that is not an integer: {cls[:40]!r}") from e
    return EvalSample(key, parts[ext], label=label)


def _load_wds(source: str, split: str, task: str, classnames: Any, templates: Any, name: str | None) -> EvalDataset:
    fs, root = _to_fs(source)
    nshards_txt = _read_text(fs, posixpath.join(root, split, "nshards.txt"))
    try:
        nshards = int((nshards_txt or "").strip())
    except ValueError as e:
        raise EvalError(f"{source}: {split}/nshards.txt does not hold a number: {nshards_txt!r}") from e
    kind = (_read_text(fs, posixpath.join(root, "dataset_type.txt")) or "classification").strip().lower()
    layout_task = RETRIEVAL if kind == "retrieval" else CLASSIFICATION
    task = layout_task if task == "auto" else task
    if task != layout_task:
        raise EvalError(f"{source}: dataset_type is {kind!r}, so it cannot be evaluated as {task}")
    tars = [posixpath.join(root, split, f"{i}.tar") for i in range(nshards)]

    def read() -> Iterator[EvalSample]:
        for tar in tars:
            for key, parts in _tar_samples(fs, tar):
                yield _parse_sample(tar, key, parts, task)

    names, tmpl = None, None
    if task == CLASSIFICATION:
        own = _read_text(fs, posixpath.join(root, "classnames.txt"))
        names = _classnames(classnames, _read_lines(own) if own is not None else None, source)
        own_t = _read_text(fs, posixpath.join(root, "zeroshot_classification_templates.txt"))
        tmpl = resolve_templates(templates, _read_lines(own_t) if own_t is not None else None)
    label = name or posixpath.basename(root).removeprefix("wds_")
    return EvalDataset(label, task, names, tmpl, read, source=source)


def _classnames(given: Any, own: list[str] | None, source: str) -> list[str]:
    if isinstance(given, (str, Path)):
        return read_list_file(given, "class names")
    if given:
        return list(given)
    if own is None:
        raise EvalError(
            f"{source}: no class names (no classnames.txt, no ClassLabel feature); "
            "pass classnames=FILE (--classnames FILE, one name per line)"
        )
    return own


# ---------------------------------------------------------------- any Hugging Face dataset
_IMAGE_NAMES = ("image", "img", "jpg", "png", "webp", "jpeg")
_LABEL_NAMES = ("label", "labels", "cls", "class", "fine_label")
_CAPTION_NAMES = ("caption", "captions", "text", "txt", "sentences", "answer")


def _pick(
    features: dict,
    wanted: str | None,
    names: Sequence[str],
    what: str,
    source: str,
    kind: str | None = None,
) -> str | None:
    if wanted:
        if wanted not in features:
            raise EvalError(f"{source}: no column {wanted!r} ({what}); columns: {list(features)}")
        return wanted
    typed = [c for c, f in features.items() if kind and type(f).__name__ == kind]
    return typed[0] if typed else next((c for c in names if c in features), None)


def _load_hf(
    source: str,
    split: str,
    task: str,
    classnames: Any,
    templates: Any,
    name: str | None,
    image_column: str | None,
    label_column: str | None,
    caption_column: str | None,
) -> EvalDataset:
    import datasets

    src = source.removeprefix("hf://datasets/")
    try:
        ds = datasets.load_dataset(src, split=split, streaming=True)
    except Exception as e:  # datasets raises many kinds (FileNotFound, DatasetNotFound, ValueError)
        raise EvalError(f"cannot load dataset {source!r} (split {split!r}): {e}") from e
    feats = dict(ds.features or {})
    img = _pick(feats, image_column, _IMAGE_NAMES, "image column", source, "Image")
    if img is None:
        raise EvalError(f"{source}: no image column (columns: {list(feats)}); pass --image-column")
    lab = _pick(feats, label_column, _LABEL_NAMES, "label column", source, "ClassLabel")
    cap = _pick(feats, caption_column, _CAPTION_NAMES, "caption column", source)
    if task == "auto":
        task = CLASSIFICATION if lab else RETRIEVAL
    if task == CLASSIFICATION and lab is None:
        raise EvalError(f"{source}: no label column (columns: {list(feats)}); pass --label-column")
    if task == RETRIEVAL and cap is None:
        raise EvalError(f"{source}: no caption column (columns: {list(feats)}); pass --caption-column")
    ds = ds.cast_column(img, datasets.Image(decode=False))
    names = tmpl = None
    if task == CLASSIFICATION:
        own = feats[lab].names if isinstance(feats[lab], datasets.ClassLabel) else None
        names = _classnames(classnames, own, source)
        tmpl = resolve_templates(templates, None)
    read = _hf_reader(ds, img, lab if task == CLASSIFICATION else cap, task, source)
    return EvalDataset(name or src.rstrip("/").split("/")[-1], task, names, tmpl, read, source=source)


def _hf_reader(ds: Any, img: str, target: str, task: str, source: str) -> Callable[[], Iterator[EvalSample]]:
    def read() -> Iterator[EvalSample]:
        for i, row in enumerate(ds):
            key = str(row.get("__key__", i))
            im = row[img] or {}
            data = im.get("bytes") or (Path(im["path"]).read_bytes() if im.get("path") else None)
            if data is None:
                raise EvalError(f"{source}: row {key} has no image")
            value = row[target]
            if task == CLASSIFICATION:
                yield EvalSample(key, data, label=None if value is None else int(value))
            else:
                caps = None if value is None else ([value] if isinstance(value, str) else list(value))
                yield EvalSample(key, data, captions=caps)

    return read


# ---------------------------------------------------------------- entry point
def load_eval_dataset(
    source: str,
    *,
    task: str = "auto",
    split: str = "test",
    classnames: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] | str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    caption_column: str | None = None,
    name: str | None = None,
) -> EvalDataset:
    """Open an evaluation set (see module docs). ``task``: ``"auto"``, ``"zeroshot_classification"``
    or ``"zeroshot_retrieval"``; ``classnames``/``templates``: lists or files (templates also a
    built-in set name: ``"simple"``, ``"clip-short"``) that override the dataset's own."""
    if task not in ("auto", CLASSIFICATION, RETRIEVAL):
        raise EvalError(f"task={task!r}: use auto, {CLASSIFICATION} or {RETRIEVAL}")
    if is_wds_layout(source, split):
        return _load_wds(source, split, task, classnames, templates, name)
    local = Path(source)
    if local.exists() and local.is_dir() and (local / "classnames.txt").exists():
        raise EvalError(f"{source}: looks like CLIP_benchmark's layout but has no {split}/nshards.txt")
    return _load_hf(source, split, task, classnames, templates, name, image_column, label_column, caption_column)


# ---------------------------------------------------------------- writer
def write_benchmark(
    out: str | Path,
    samples: Iterable[EvalSample],
    *,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    image_ext: str = "png",
    shard_size: int = 1000,
    split: str = "test",
) -> int:
    """Write ``samples`` in CLIP_benchmark's layout under ``out``: a classification set when
    ``classnames`` are given, else a retrieval set. Returns the number of samples written."""
    from webdataset import TarWriter

    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    if classnames is not None:
        (out / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
        if templates:
            (out / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n", encoding="utf-8")
    else:
        (out / "dataset_type.txt").write_text("retrieval\n", encoding="utf-8")
    n, shard, writer = 0, 0, None
    for s in samples:
        if writer is None or n % shard_size == 0 and n:
            if writer is not None:
                writer.close()
                shard += 1
            writer = TarWriter(str(out / split / f"{shard}.tar"), encoder=False)
        record = {"__key__": s.key, image_ext: s.image}
        if classnames is not None:
            record["cls"] = str(int(s.label)).encode()
        else:
            record["txt"] = "\n".join(s.captions or []).encode("utf-8")
        writer.write(record)
        n += 1
    if writer is not None:
        writer.close()
    (out / split / "nshards.txt").write_text(f"{shard + 1 if n else 0}\n", encoding="utf-8")
    return n


def encode_png(image: Any) -> bytes:
    """A PIL image (or HxWx3 uint8 array) → PNG bytes."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
