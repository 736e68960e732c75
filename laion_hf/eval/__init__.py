"""Zero-shot evaluation of CLIP models, compatible with CLIP_benchmark 1.6.2.

``evaluate(model, dataset)`` → ``{"dataset", "model", "pretrained", "task", "metrics", "language"}``;
datasets in CLIP_benchmark's webdataset layout (local or ``hf://``) or any Hugging Face dataset
with an image column and a label or caption column (:func:`load_eval_dataset`).
"""

from laion_hf.eval.data import (
    BUILTIN_TEMPLATES,
    CLASSIFICATION,
    RETRIEVAL,
    EvalDataset,
    EvalSample,
    load_eval_dataset,
    write_benchmark,
)
from laion_hf.eval.metrics import (
    classification_metrics,
    classifier_from_text_embeddings,
    retrieval_metrics,
)
from laion_hf.eval.zeroshot import (
    build_table,
    evaluate,
    load_model,
    result_path,
    write_result,
    write_table,
    zeroshot_classification,
    zeroshot_retrieval,
)

__all__ = [
    "BUILTIN_TEMPLATES",
    "CLASSIFICATION",
    "RETRIEVAL",
    "EvalDataset",
    "EvalSample",
    "build_table",
    "classification_metrics",
    "classifier_from_text_embeddings",
    "evaluate",
    "load_eval_dataset",
    "load_model",
    "result_path",
    "retrieval_metrics",
    "write_benchmark",
    "write_result",
    "write_table",
    "zeroshot_classification",
    "zeroshot_retrieval",
]
