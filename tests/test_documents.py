"""Documents: reading files as text, chunking them, and the views agents get of them (no Ray)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from letta_ray.documents import chunk_text, extract_text, file_type, grep, window
from letta_ray.errors import InvalidInputError
from letta_ray.testing import tiny_pdf


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_text_files_read_as_they_are_and_pdfs_page_by_page(tmp_path: Path) -> None:
    assert extract_text(write(tmp_path, "notes.md", "# Title\r\nbody"), "notes.md") == "# Title\nbody"
    assert extract_text(write(tmp_path, "t.csv", "a,b\n1,2\n"), "t.csv") == "a,b\n1,2\n"
    assert json.loads(extract_text(write(tmp_path, "d.json", '{"k": [1, 2]}'), "d.json")) == {"k": [1, 2]}
    pdf = extract_text(write(tmp_path, "r.pdf", tiny_pdf(["Quarterly report", "Revenue grew 12 percent"])), "r.pdf")
    assert pdf.startswith("[page 1]") and "Quarterly report" in pdf and "Revenue grew 12 percent" in pdf
    assert file_type("x.PDF") == "application/pdf" and file_type("a.py") == "text/x-python"


def test_unreadable_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="supported files"):
        file_type("movie.mp4")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        extract_text(write(tmp_path, "bad.json", "{nope"), "bad.json")
    with pytest.raises(InvalidInputError, match="binary"):
        extract_text(write(tmp_path, "x.txt", b"\x00\x01\x02"), "x.txt")
    with pytest.raises(InvalidInputError, match="readable PDF"):
        extract_text(write(tmp_path, "broken.pdf", b"%PDF-1.4 garbage"), "broken.pdf")


def test_chunks_are_whole_lines_that_overlap_and_cover_everything() -> None:
    text = "\n".join(f"line {i} " + "word " * 30 for i in range(100))
    chunks = list(chunk_text(text, size=800, overlap_lines=2))
    assert len(chunks) > 5 and all(len(c.text) <= 800 for c in chunks)
    assert chunks[0].first == 1 and chunks[-1].last == 100
    for before, after in itertools.pairwise(chunks):
        assert after.first == before.last - 1  # two lines shared
    covered = {n for c in chunks for n in range(c.first, c.last + 1)}
    assert covered == set(range(1, 101))
    [long] = list(chunk_text("x" * 2500, size=1000))[:1]
    assert len(long.text) == 1000  # a line longer than a chunk is cut
    assert list(chunk_text("\n\n  \n")) == []


def test_a_window_numbers_lines_and_grep_shows_context() -> None:
    text = "\n".join(f"row {i}" for i in range(1, 21))
    view, first, last = window(text, offset=4, length=3)
    assert (view, first, last) == ("5: row 5\n6: row 6\n7: row 7", 5, 7)
    view, first, last = window(text, char_limit=30)
    assert first == 1 and last < 20 and len(view) <= 30
    with pytest.raises(InvalidInputError, match="past the end"):
        window(text, offset=50)
    [hit] = grep(text, r"row 1[5]$", context_lines=1)
    assert hit.line == 15 and hit.context == "  14: row 14\n> 15: row 15\n  16: row 16"
    assert [m.line for m in grep(text, "ROW 2")] == [2, 20]
    with pytest.raises(InvalidInputError, match="regular expression"):
        grep(text, "(")
