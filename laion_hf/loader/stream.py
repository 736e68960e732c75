"""One reader's stream: units through a bounded, reproducible shuffle buffer into batches,
with a small resumable state."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from laion_hf.errors import LoaderError
from laion_hf.loader.sources import _balanced_plan, _Unit

if TYPE_CHECKING:
    from laion_hf.loader.dataset import LaionTorchDataset


_STATE_VERSION = 1
_BLOCK = 4096  # shuffle draws are generated in blocks of this many rows
_COMPACT_SLACK = 2048  # held rows beyond 2 x buffer_size that trigger a compaction of the buffer


# --------------------------------------------------------------------------- one reader
class _Segment:
    """Rows held by a reader: a table, the ingest ids of its rows (sorted), and where each row
    comes from (position in the reader's unit sequence, row in that unit)."""

    __slots__ = ("table", "ids", "pos", "row", "live")

    def __init__(self, table: pa.Table, ids: np.ndarray, pos: np.ndarray, row: np.ndarray):
        self.table, self.ids, self.pos, self.row = table, ids, pos, row
        self.live = len(ids)


class _ReaderStream:
    """The iterator of one reader (rank x worker) for one epoch; its state is exact at every
    yielded batch."""

    def __init__(
        self, ds: LaionTorchDataset, gid: int, readers: int, worker: int, workers: int, epoch: int, resume: dict | None
    ):
        self.ds, self.gid, self.readers, self.epoch = ds, gid, readers, epoch
        self.units = ds.units_for(readers)
        self.S, self.B = ds.buffer_size, ds.batch_size
        self.resampled = ds.samples_per_epoch is not None
        self.balanced = not self.resampled and ds._balanced(readers // workers)
        if self.resampled:
            per_rank = math.ceil(ds.samples_per_epoch / ((readers // workers) * self.B))
            self.quota = per_rank // workers + (1 if worker < per_rank % workers else 0)
            self.seq = None
        else:
            self.quota = None
            if self.balanced:
                self.units = ds._base_units
            order = np.arange(len(self.units))
            if ds.shuffle:
                order = np.random.default_rng([ds.seed, epoch, 0x5A4D]).permutation(len(self.units))
            if self.balanced:
                rows = ds._unit_rows()
                self.seq = _balanced_plan(
                    self.units, [rows[i] for i in order], order, gid, readers, pad=not ds.drop_last
                )
            else:
                self.seq = [self.units[i] for i in order[gid::readers]]
        self.pos = 0  # position in this reader's unit sequence of the next row to ingest
        self.row = 0  # row in that unit
        self.t = 0  # rows ingested so far
        self.slots: list[int] = []  # the shuffle buffer: ingest ids
        self.flushing = False
        self.flush_i = 0
        self.pending: list[int] = []
        self.segments: list[_Segment] = []
        self.batches = 0
        self.stats = {"rows": 0, "skipped": 0, "marked": 0}
        self.done = False
        self._draw_block = -1
        self._draws: list[int] = []
        self._carry_skipped = 0
        if resume is not None:
            self._restore(resume)
        self._gen = self._run()

    # -- unit sequence and random draws ---------------------------------------------
    def _unit_at(self, p: int) -> _Unit | None:
        if self.seq is not None:
            return self.seq[p] if p < len(self.seq) else None
        block = np.random.default_rng([self.ds.seed, self.epoch, self.gid, p // 1024, 0x5E0]).integers(
            0, len(self.units), 1024
        )
        return self.units[int(block[p % 1024])]

    def _draw(self, tid: int) -> int:
        b = tid // _BLOCK
        if b != self._draw_block:
            self._draws = (
                np.random.default_rng([self.ds.seed, self.epoch, self.gid, b, 0xB0F])
                .integers(0, 2**62, _BLOCK)
                .tolist()
            )
            self._draw_block = b
        return self._draws[tid % _BLOCK] % self.S

    # -- held rows -------------------------------------------------------------------
    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """For ``ids``: per segment index, (segment, positions in ``ids``, local rows)."""
        firsts = np.array([s.ids[0] for s in self.segments])
        si = np.searchsorted(firsts, ids, side="right") - 1
        groups = []
        for s in np.unique(si):
            where = np.nonzero(si == s)[0]
            seg = self.segments[s]
            groups.append((int(s), where, np.searchsorted(seg.ids, ids[where])))
        return si, groups

    def _gather(self, ids: list[int], consume: bool = True) -> pa.Table:
        arr = np.asarray(ids, dtype=np.int64)
        _, groups = self._lookup(arr)
        parts, order = [], []
        for s, where, local in groups:
            seg = self.segments[s]
            parts.append(seg.table.take(pa.array(local)))
            order.append(where)
            if consume:
                seg.live -= len(where)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        cat = np.concatenate(order)
        if len(parts) > 1 or not np.array_equal(cat, np.arange(len(cat))):
            table = table.take(pa.array(np.argsort(cat, kind="stable")))
        if consume:
            self.segments = [s for s in self.segments if s.live > 0]
        return table

    def _refs(self, ids: list[int]) -> tuple[list[int], list[int]]:
        if not ids:
            return [], []
        arr = np.asarray(ids, dtype=np.int64)
        pos = np.empty(len(arr), dtype=np.int64)
        row = np.empty(len(arr), dtype=np.int64)
        _, groups = self._lookup(arr)
        for s, where, local in groups:
            pos[where] = self.segments[s].pos[local]
            row[where] = self.segments[s].row[local]
        return pos.tolist(), row.tolist()

    def _buffered(self) -> list[int]:
        return self.slots[self.flush_i :] if self.flushing else self.slots

    def _compact(self) -> None:
        """Copy the rows still buffered into one segment so old tables can be freed."""
        live = sorted(self._buffered() + self.pending)
        if not live:
            self.segments = []
            return
        pos, row = self._refs(live)
        table = self._gather(live, consume=False)
        self.segments = [_Segment(table, np.asarray(live, dtype=np.int64), np.asarray(pos), np.asarray(row))]

    # -- state -------------------------------------------------------------------------
    def _mode(self) -> str:
        return "resampled" if self.resampled else "balanced" if self.balanced else "exact"

    def state(self) -> dict[str, Any]:
        ids = list(self._buffered())
        pos, row = self._refs(ids)
        return {
            "v": _STATE_VERSION,
            "epoch": self.epoch,
            "reader": self.gid,
            "readers": self.readers,
            "units": len(self.units),
            "mode": self._mode(),
            "pos": self.pos,
            "row": self.row,
            "t": self.t,
            "slots": ids,
            "slot_pos": pos,
            "slot_row": row,
            "flushing": self.flushing,
            "batches": self.batches,
            "done": self.done,
            "stats": dict(self.stats),
        }

    def _restore(self, st: dict[str, Any]) -> None:
        mode = self._mode()
        if st.get("reader") != self.gid or st.get("readers") != self.readers or st.get("mode") != mode:
            raise LoaderError(
                f"saved loader state was made by reader {st.get('reader')} of {st.get('readers')} in {st.get('mode')} "
                f"mode; this is reader {self.gid} of {self.readers} in {mode} mode. Resume with the same world_size, "
                f"num_workers, samples_per_epoch and balance."
            )
        if st.get("units") != len(self.units):
            raise LoaderError(
                f"saved loader state was made on a source of {st.get('units')} units (files x row groups); this "
                f"source has {len(self.units)}: the shards changed since the checkpoint, an exact resume is impossible"
            )
        self.pos, self.row, self.t = int(st["pos"]), int(st["row"]), int(st["t"])
        self.batches, self.done, self.flushing = int(st["batches"]), bool(st["done"]), bool(st["flushing"])
        self.stats = dict(st["stats"])
        ids = [int(x) for x in st["slots"]]
        self.slots = ids
        if ids:
            order = np.argsort(ids, kind="stable")
            sid = np.asarray(ids, dtype=np.int64)[order]
            spos = np.asarray(st["slot_pos"], dtype=np.int64)[order]
            srow = np.asarray(st["slot_row"], dtype=np.int64)[order]
            table = self._reread(spos, srow)
            self.segments = [_Segment(table, sid, spos, srow)]

    def _reread(self, pos: np.ndarray, row: np.ndarray) -> pa.Table:
        """Rows (pos[i], row[i]) read back from the source, in that order."""
        pieces, where_all = [], []
        for p in np.unique(pos):
            where = np.nonzero(pos == p)[0]
            wanted = row[where]
            lo, hi = int(wanted.min()), int(wanted.max()) + 1
            unit = self._unit_at(int(p))
            tables, got = [], 0
            for t in self.ds._read(unit, lo):
                tables.append(t)
                got += t.num_rows
                if got >= hi - lo:
                    break
            if got < hi - lo:
                raise LoaderError(f"cannot resume: unit {unit} of the source has fewer rows than the saved state says")
            span = pa.concat_tables(tables)
            pieces.append(span.take(pa.array(wanted - lo)))
            where_all.append(where)
        table = pa.concat_tables(pieces)
        cat = np.concatenate(where_all)
        return table.take(pa.array(np.argsort(cat, kind="stable")))

    # -- the loop ------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._gen)

    def _emit(self) -> dict[str, Any] | None:
        table = self._gather(self.pending)
        self.pending = []
        batch = self.ds._decode(table, self._carry_skipped, keep_empty=self.balanced)
        self.stats["rows"] += table.num_rows
        if batch is None:  # every row of this batch was skipped: carry the count to the next one
            self._carry_skipped += table.num_rows
            self.stats["skipped"] += table.num_rows
            return None
        self._carry_skipped = 0
        if self.ds.on_error == "mark":
            self.stats["marked"] += int((~batch["valid"]).sum())
        else:
            self.stats["skipped"] += table.num_rows - len(batch["key"])
        self.batches += 1
        return batch

    def _run(self) -> Iterator[dict[str, Any]]:
        if self.done:
            return
        yield from self._read_units()
        if self.done:  # the quota of batches was reached
            return
        self._start_flush()
        yield from self._drain()
        yield from self._emit_rest()
        self.done = True

    def _quota_reached(self) -> bool:
        return self.quota is not None and self.batches >= self.quota

    def _read_units(self) -> Iterator[dict[str, Any]]:
        """Read this reader's units from (pos, row) on, until they end or the quota is reached."""
        empty_units = 0  # consecutive units without a row (resampling an empty source must not spin)
        while not self.flushing:
            if self._quota_reached():
                self.done = True
                return
            unit = self._unit_at(self.pos)
            if unit is None:
                break
            empty_units += 1
            if self.resampled and empty_units > 4 * len(self.units) + 64:
                raise LoaderError(f"resampled {empty_units} units in a row without finding a row: the source is empty")
            for table in self.ds._read(unit, self.row):
                if not table.num_rows:
                    continue
                empty_units = 0
                yield from self._take_table(table)
                if self.done:
                    return
            self.pos += 1
            self.row = 0

    def _take_table(self, table: pa.Table) -> Iterator[dict[str, Any]]:
        """Hold the rows of ``table`` (next in the unit) and emit every batch they complete."""
        n = table.num_rows
        # between tables every held row is buffered or pending: a safe point to compact
        if self.S and sum(len(s.ids) for s in self.segments) > 2 * self.S + _COMPACT_SLACK:
            self._compact()
        t0 = self.t
        self.segments.append(
            _Segment(
                table,
                np.arange(t0, t0 + n, dtype=np.int64),
                np.full(n, self.pos, dtype=np.int64),
                np.arange(self.row, self.row + n, dtype=np.int64),
            )
        )
        for tid in range(t0, t0 + n):
            self.t += 1
            self.row += 1
            out = self._admit(tid)
            if out is None:
                continue
            self.pending.append(out)
            if len(self.pending) == self.B:
                batch = self._emit()
                if batch is not None:
                    yield batch
                    if self._quota_reached():
                        self.done = True
                        return

    def _admit(self, tid: int) -> int | None:
        """Row ``tid`` enters the shuffle buffer; return the row it pushes out (``tid`` itself
        without a buffer), or None while the buffer fills."""
        if not self.S:
            return tid
        if len(self.slots) < self.S:
            self.slots.append(tid)
            return None
        j = self._draw(tid)
        out = self.slots[j]
        self.slots[j] = tid
        return out

    def _start_flush(self) -> None:
        """End of this reader's units (exact pass): empty the buffer in a seeded random order."""
        if self.flushing:
            return
        rest = list(self.slots)
        if self.ds.shuffle and rest:
            perm = np.random.default_rng([self.ds.seed, self.epoch, self.gid, 0xF1]).permutation(len(rest))
            rest = [rest[k] for k in perm]
        self.slots, self.flush_i, self.flushing = rest, 0, True

    def _drain(self) -> Iterator[dict[str, Any]]:
        """Emit the buffered rows in batches of B (a short last one unless ``drop_last``)."""
        B = self.B
        while self.flush_i < len(self.slots):
            take = min(B - len(self.pending), len(self.slots) - self.flush_i)
            self.pending += self.slots[self.flush_i : self.flush_i + take]
            self.flush_i += take
            if len(self.pending) == B or self.flush_i == len(self.slots):
                if len(self.pending) < B and self.ds.drop_last:
                    self.pending = []
                    break
                if self.flush_i == len(self.slots):
                    self.done = True
                batch = self._emit()
                if batch is not None:
                    yield batch

    def _emit_rest(self) -> Iterator[dict[str, Any]]:
        if self.pending and not self.ds.drop_last:
            self.done = True
            batch = self._emit()
            if batch is not None:
                yield batch
