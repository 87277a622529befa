"""Documents for an agent to read: their text, their chunks, and views of them.

A file uploaded to a folder is turned into text (``extract_text``: plain text, Markdown,
JSON, CSV and the like as they are; PDF page by page with pypdf), cut into overlapping
chunks of whole lines for semantic search (``chunk_text``), and shown to the agent as
numbered lines (``window``) or as grep-style matches (``grep``). Plain functions, no I/O
beyond reading the file they are given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from letta_ray.errors import InvalidInputError

# File types read as text, by extension; PDFs are parsed.
TEXT_TYPES = {
    ".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown", ".json": "application/json",
    ".jsonl": "application/jsonl", ".csv": "text/csv", ".tsv": "text/tab-separated-values", ".html": "text/html",
    ".xml": "application/xml", ".yaml": "application/yaml", ".yml": "application/yaml", ".py": "text/x-python",
    ".js": "text/javascript", ".ts": "text/typescript", ".java": "text/x-java", ".go": "text/x-go",
    ".rs": "text/x-rust", ".c": "text/x-c", ".cpp": "text/x-c++", ".h": "text/x-c", ".sql": "application/sql",
    ".sh": "text/x-shellscript", ".toml": "application/toml", ".ini": "text/plain", ".log": "text/plain",
    ".rst": "text/x-rst", ".tex": "text/x-tex",
}
PDF_TYPE = "application/pdf"
CHUNK_CHARS = 1_500
CHUNK_OVERLAP_LINES = 2


def file_type(file_name: str) -> str:
    """The MIME type of a supported file; InvalidInputError naming the supported ones otherwise."""
    suffix = Path(file_name).suffix.lower()
    if suffix == ".pdf":
        return PDF_TYPE
    if suffix in TEXT_TYPES:
        return TEXT_TYPES[suffix]
    raise InvalidInputError(f"cannot read {file_name!r}: supported files are .pdf and "
                            f"{', '.join(sorted(TEXT_TYPES))}")


def extract_text(path: str | Path, file_name: str) -> str:
    """The text of a file; InvalidInputError if it cannot be read as the type its name says."""
    kind = file_type(file_name)
    if kind == PDF_TYPE:
        return _pdf_text(Path(path), file_name)
    data = Path(path).read_bytes()
    if b"\x00" in data[:8192]:
        raise InvalidInputError(f"{file_name!r} is binary, not text")
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if kind == "application/json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{file_name!r} is not valid JSON: {exc}") from None
    return text


def _pdf_text(path: Path, file_name: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise InvalidInputError(f"{file_name!r} is not a readable PDF: {exc}") from None
    return "\n\n".join(f"[page {i}]\n{text.strip()}" for i, text in enumerate(pages, start=1))


@dataclass(frozen=True)
class Chunk:
    """Lines ``first``..``last`` (1-based, inclusive) of a document."""

    first: int
    last: int
    text: str


def chunk_text(text: str, *, size: int = CHUNK_CHARS, overlap_lines: int = CHUNK_OVERLAP_LINES) -> Iterator[Chunk]:
    """Chunks of about ``size`` characters of whole lines (a longer line is cut), each
    starting ``overlap_lines`` lines before the previous one ended."""
    lines = text.split("\n")
    start = 0
    while start < len(lines):
        end, length = start, 0
        while end < len(lines) and (end == start or length + len(lines[end]) + 1 <= size):
            length += len(lines[end]) + 1
            end += 1
        body = "\n".join(lines[start:end]).strip()
        if body:
            for i in range(0, len(body), size):  # one line longer than a chunk
                yield Chunk(start + 1, end, body[i:i + size])
        if end >= len(lines):
            return
        start = max(end - overlap_lines, start + 1)


def window(text: str, offset: int = 0, length: int | None = None, *, char_limit: int = 15_000) -> tuple[str, int, int]:
    """Lines ``offset``.. (0-based) of ``text``, at most ``length`` of them and ``char_limit``
    characters, numbered from 1 as the agent sees them; returns (view, first line, last line)."""
    lines = text.split("\n")
    if offset < 0 or offset >= max(len(lines), 1):
        raise InvalidInputError(f"offset {offset} is past the end of the file ({len(lines)} lines)")
    chosen = lines[offset: offset + length if length is not None else None]
    out, used = [], 0
    for number, line in enumerate(chosen, start=offset + 1):
        row = f"{number}: {line}"
        if used + len(row) > char_limit and out:
            break
        out.append(row[:char_limit])
        used += len(row) + 1
    return "\n".join(out), offset + 1, offset + len(out)


@dataclass(frozen=True)
class Match:
    line: int
    context: str


def grep(text: str, pattern: str, *, context_lines: int = 1) -> list[Match]:
    """Lines of ``text`` matching ``pattern`` (a regular expression; case-insensitive), each
    with ``context_lines`` lines around it, numbered from 1."""
    try:
        regex = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InvalidInputError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    lines = text.split("\n")
    found = []
    for i, line in enumerate(lines):
        if regex.search(line):
            lo, hi = max(0, i - context_lines), min(len(lines), i + context_lines + 1)
            context = "\n".join(f"{'>' if j == i else ' '} {j + 1}: {lines[j]}" for j in range(lo, hi))
            found.append(Match(i + 1, context))
    return found
