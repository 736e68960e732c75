"""Contrastive open_clip training on published shards, with zero-shot evaluation every N steps.

``train(TrainConfig(data="./shards", out="run", eval_sets=["./bench/colour"], eval_every=50))``
trains from parquet or webdataset shards (local or on the Hub) with laion-hf's loader, writes
``run/checkpoints/latest.pt`` (model in open_clip's ``state_dict`` format, optimizer, scheduler,
loader position) every ``save_every`` steps and ``run/log.jsonl`` (loss, learning rate, samples
seen; zero-shot metrics at each evaluation). Rerunning after a crash or ``kill -9`` resumes
from the last checkpoint with exactly the batches that would have come next.
"""

from laion_hf.train.loop import TrainConfig, read_log, train

__all__ = ["TrainConfig", "read_log", "train"]
