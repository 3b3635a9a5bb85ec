"""Damage a real journal file the way a failing disk does: bytes flipped inside b-tree pages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

FLIPPED = 200
TABLE_INTERIOR, TABLE_LEAF = 0x05, 0x0D


def _page_size(data: bytes) -> int:
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


def root_pages(path: Path, table: str) -> list[int]:
    """The root page of `table` and of each of its indexes (read before damaging anything)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = ? AND rootpage > 0 ORDER BY type DESC", (table,)
            )
        ]


def first_leaf(path: Path, table: str) -> int:
    """The leftmost leaf of `table`'s b-tree: the oldest rows, which nothing at start reads."""
    data = path.read_bytes()
    size = _page_size(data)
    page = root_pages(path, table)[0]
    while data[(page - 1) * size] == TABLE_INTERIOR:
        start = (page - 1) * size
        cell = int.from_bytes(data[start + 12 : start + 14], "big")  # the first cell pointer
        page = int.from_bytes(data[start + cell : start + cell + 4], "big")  # its left child
    assert data[(page - 1) * size] == TABLE_LEAF, f"page {page} is not a table leaf"
    assert page not in root_pages(path, table), f"{table} has only one page: add rows"
    return page


def flip(path: Path, pages: list[int]) -> None:
    """Invert FLIPPED bytes at the start of each page (its header and cell pointers)."""
    with open(path, "r+b") as handle:
        size = _page_size(handle.read(100))
        for page in pages:
            handle.seek((page - 1) * size)
            chunk = handle.read(FLIPPED)
            handle.seek((page - 1) * size)
            handle.write(bytes(b ^ 0xFF for b in chunk))
