"""Shards: write any stream of Arrow batches as Hub-ready parquet (default) or webdataset shards.

``write_shards(stream, DIR)`` writes ``DIR/data/{config}/train-{i:05d}-of-{n:05d}.parquet`` (or
``.tar``) and ``DIR/stats.json``; ``read_stats(DIR)`` reads the stats back (the dataset card is
rendered from them). ``laion-hf shards SRC DIR`` does the same from the command line.
"""

from laion_hf.shards.writer import DEFAULT_MAX_SHARD_BYTES, STATS_FILENAME, parse_size, read_stats, write_shards

__all__ = ["write_shards", "read_stats", "parse_size", "STATS_FILENAME", "DEFAULT_MAX_SHARD_BYTES"]
