"""The records of ftrace's ring buffer pages, found for all pages at once (numpy) rather than one by one.

Why: a capture holds a million records or more; walking their headers in a Python loop costs ~1 us each.
Records are chained inside a page (each header gives the next one's offset), but pages are independent,
so this advances every page's cursor together: one numpy step per record of the fullest page (~50 for
4 KiB pages of kvmmmu events), each over all pages.

Format, as libtraceevent's kbuffer-parse.c reads it (and `tracedat.py` describes): a page is a u64
timestamp, a u64 `commit` (its low 27 bits the data size; bit 31 missing events, bit 30 their count stored
after the data), then records with a u32 header, type_len in its low 5 bits: 1..28 has type_len*4 bytes of
data, 0 a u32 length (including itself) first, 29 padding (to the page's end when the header's
time_delta is 0), 30/31 a time extend/stamp (one more u32, no data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

COMMIT_MASK = (1 << 27) - 1
MISSING_EVENTS = 1 << 31
MISSING_STORED = 1 << 30
TYPE_PADDING, TYPE_TIME_EXTEND = 29, 30
PAGE_HEADER = 16


class RingBufferError(ValueError):
    """A page whose records do not fit its data; `where` names the page by its file offset."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class Records:
    """Every data record's data offset in the file and its data's length in bytes (page order, then record
    order: each CPU's own order), and ftrace's missing-events marks: pages marked, and the events they say
    were lost where stored."""

    offsets: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    lost_markers: int
    lost_events: int


def _u64(words: npt.NDArray[np.uint32], byte_off: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    w = byte_off >> 2
    out: npt.NDArray[np.uint64] = words[w].astype(np.uint64) | words[w + 1].astype(np.uint64) << np.uint64(32)
    return out


def find_records(words: npt.NDArray[np.uint32], cpus: list[tuple[int, int]], page_size: int) -> Records:
    """The data records of every ring buffer page in `cpus` ((file offset, size) each) of a file read as
    little-endian u32 `words`. Raises RingBufferError for a commit beyond the page or a record that runs
    past its page's data (a corrupt file: never half read)."""
    starts = [np.arange(off, off + size - page_size + 1, page_size, dtype=np.int64) for off, size in cpus]
    page = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    if page.size == 0:
        return Records(np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0)
    commit = _u64(words, page + 8)
    end = page + PAGE_HEADER + (commit & np.uint64(COMMIT_MASK)).astype(np.int64)
    bad = np.flatnonzero(end > page + page_size)
    if bad.size:
        raise RingBufferError(f"page at {int(page[bad[0]]):#x}", f"ring buffer page commit"
                              f" {int(end[bad[0]] - page[bad[0]]) - PAGE_HEADER} beyond the page size {page_size}")
    missing = (commit & np.uint64(MISSING_EVENTS)) != 0
    stored = missing & ((commit & np.uint64(MISSING_STORED)) != 0)
    lost_events = int(_u64(words, end[stored]).sum()) if stored.any() else 0

    # out[page, k]: the data offset of the page's k-th record (0: none); grown as the fullest page needs
    out = np.zeros((page.size, 64), np.int64)
    out_len = np.zeros((page.size, 64), np.int64)
    pos = page + PAGE_HEADER
    count = np.zeros(page.size, np.int64)
    live = np.flatnonzero(pos < end)
    while live.size:
        p = pos[live]
        h = words[p >> 2]
        tl = h & 31
        data = (tl >= 1) & (tl <= 28)
        big = tl == 0
        pad = tl == TYPE_PADDING
        length = np.where(big | pad, words[np.minimum(p + 4, words.size * 4 - 4) >> 2], 0).astype(np.int64)
        nxt = np.where(data, p + 4 + (tl.astype(np.int64) << 2),
                       np.where(big, p + 8 + ((length - 4 + 3) & ~3),
                                np.where(pad, p + 4 + length, p + 8)))
        has = data | big
        if has.any():
            rows = live[has]
            k = count[rows]
            if int(k.max()) >= out.shape[1]:
                out = np.concatenate([out, np.zeros_like(out)], axis=1)
                out_len = np.concatenate([out_len, np.zeros_like(out_len)], axis=1)
            out[rows, k] = np.where(big[has], p[has] + 8, p[has] + 4)
            out_len[rows, k] = np.where(big[has], length[has] - 4, tl[has].astype(np.int64) << 2)
            count[rows] = k + 1
        done = pad & (h >> 5 == 0)  # padding to the page's end
        pos[live] = np.where(done, end[live], nxt)
        over = live[pos[live] > end[live]]
        if over.size:
            raise RingBufferError(f"page at {int(page[over[0]]):#x}", "a record runs past the page's data")
        live = live[pos[live] < end[live]]
    width = int(count.max()) if count.size else 0
    taken = np.arange(width) < count[:, None]
    return Records(out[:, :width][taken], out_len[:, :width][taken], int(missing.sum()), lost_events)
