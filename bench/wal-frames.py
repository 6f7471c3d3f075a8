#!/usr/bin/env python3
"""Which tables and indexes a run's commits wrote, from a SQLite write-ahead log.

    ./target/release/flowmark bench journey --contacts 5000 --keep-wal
    python3 bench/wal-frames.py target/bench/journey-PID.frames.db

`bench journey --keep-wal` runs without checkpoints, so every page each commit wrote is
still a frame in the log. This counts the frames, then names each frame's page by the
B-tree that holds it at the end of the run (SQLite's `dbstat`, on a copy: opening the
original would checkpoint its log away). A page that changed owner during the run is
counted under its last owner; pages of no B-tree (free, or the header) are `other`.
Standard library only.
"""

import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

WAL_HEADER = 32
FRAME_HEADER = 24


def frames(wal: bytes):
    """Page numbers of the log's frames, in order, and how many frames end a commit."""
    page_size = struct.unpack(">I", wal[8:12])[0]
    pages, commits, offset = [], 0, WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(wal):
        page, commit_size = struct.unpack(">II", wal[offset : offset + 8])
        pages.append(page)
        commits += commit_size != 0
        offset += FRAME_HEADER + page_size
    return page_size, pages, commits


def owners(db: Path):
    """Each page's B-tree, read from a copy of the database and its log."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "copy.db"
        shutil.copy(db, copy)
        shutil.copy(f"{db}-wal", f"{copy}-wal")
        conn = sqlite3.connect(copy)
        try:
            return dict(conn.execute("SELECT pageno, name FROM dbstat"))
        finally:
            conn.close()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    db = Path(sys.argv[1])
    wal = Path(f"{db}-wal").read_bytes()
    page_size, pages, commits = frames(wal)
    if not pages:
        sys.exit(f"{db}-wal holds no frames")
    owner = owners(db)
    counts = collections.Counter(owner.get(page, "other") for page in pages)
    total = len(pages)
    print(f"{total} frames of {page_size} bytes ({total * page_size / 1e6:.1f} MB) in {commits} commits")
    for name, count in counts.most_common():
        print(f"{count:9d} {100 * count / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
