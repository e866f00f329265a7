"""The run directory: what a run measured, kept so that nothing is lost on a kill.

Samples are appended one line at a time with a single ``write`` and an ``fsync``: a run
killed at any instant leaves at most a final line without its newline, which readers
skip and ``--resume`` cuts off. run.json is replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

SCHEMA_VERSION = 1
SAMPLES = "samples.ndjson"
RUN_JSON = "run.json"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def _complete_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, line) for every line that ends in a newline."""
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as src:
        for raw in src:
            if not raw.endswith(b"\n"):
                return
            offset += len(raw)
            yield offset, raw


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete sample of a run, in the order written."""
    return list(iter_samples(run_dir))


def iter_samples(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Like read_samples, without holding the whole file: for large runs.

    The file is read in blocks of about a MiB; only lines that end in a newline count
    (a trailing line without one is ignored), blank lines are skipped. Each line is
    parsed with orjson when it is installed (an optional speed-up: 3-4x faster), else
    with the standard library on text decoded once per block. Either way the result is
    what ``json.loads`` gives for the line: anything the fast paths reject or might read
    differently (NaN, integers beyond 64 bits, lone surrogates, a BOM, ...) is parsed
    again by ``json.loads``, which then returns its value or raises its error.
    """
    path = Path(run_dir) / SAMPLES
    parse = _parse_fast if _orjson_loads is not None else _parse_stdlib
    for chunk in _complete_chunks(path):
        yield from parse(chunk)


_CHUNK_BYTES = 1 << 20


def _complete_chunks(path: Path) -> Iterator[bytes]:
    """The file as runs of complete lines, each run ending in (and including) a newline."""
    if not path.exists():
        return
    with path.open("rb") as src:
        pending: list[bytes] = []  # the start of a line longer than one block
        while block := src.read(_CHUNK_BYTES):
            cut = block.rfind(b"\n") + 1
            if not cut:
                pending.append(block)
                continue
            if pending:
                pending.append(block[:cut])
                yield b"".join(pending)
                pending.clear()
            else:
                yield block[:cut] if cut < len(block) else block
            if cut < len(block):
                pending.append(block[cut:])
        # what is left in pending has no newline: a line cut by a kill, ignored


def _lines(chunk: bytes) -> list[bytes]:
    """The non-blank lines of a chunk of complete lines, without their newline (which
    json.loads must be given back: it guesses the encoding of bytes from their length)."""
    lines = chunk.split(b"\n")
    lines.pop()  # the empty string after the final newline
    return [line for line in lines if line.strip()]


def _load_module_function(module: str, name: str) -> Callable[[bytes], Any] | None:
    try:
        return cast("Callable[[bytes], Any]", getattr(importlib.import_module(module), name))
    except ImportError:
        return None


_orjson_loads = _load_module_function("orjson", "loads")
"""orjson.loads if orjson is installed (optional: not a dependency of the package)."""


def _orjson_rounds_big_integers() -> bool:
    """Whether this orjson reads an integer beyond 64 bits as a float (versions to date
    do, silently), where json.loads gives the exact int."""
    assert _orjson_loads is not None
    try:
        return not isinstance(_orjson_loads(b"18446744073709551616"), int)
    except ValueError:  # raising is fine: the fallback below then lets json decide
        return False


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"0" * 9)
_BIG_INTEGERS = (b"0" * 20, b"-" + b"0" * 19)
"""After _DIGITS_AS_ZERO, what an integer outside [-2**63, 2**64) must contain: 20 digits,
or a minus and 19. Floats and strings may match too: then only slower, never wrong."""
_check_big_integers = _orjson_loads is not None and _orjson_rounds_big_integers()


def _may_hold_big_integer(data: bytes) -> bool:
    digits = data.translate(_DIGITS_AS_ZERO)
    return any(needle in digits for needle in _BIG_INTEGERS)


def _parse_fast(chunk: bytes) -> Iterator[dict[str, Any]]:
    loads = _orjson_loads
    assert loads is not None
    careful = _check_big_integers and _may_hold_big_integer(chunk)
    for line in _lines(chunk):
        if careful and _may_hold_big_integer(line):
            yield json.loads(line + b"\n")  # the line as written: see _lines
            continue
        try:
            value = loads(line)
        except ValueError:  # orjson is stricter than json (NaN, lone surrogates, a BOM)
            value = json.loads(line + b"\n")
        yield value


def _parse_stdlib(chunk: bytes) -> Iterator[dict[str, Any]]:
    lines = _lines(chunk)
    try:  # what json.loads does to each line's bytes, once for the whole chunk
        texts = chunk.decode("utf-8", "surrogatepass").split("\n")
    except UnicodeDecodeError:
        texts = []
    texts = [t for t in texts if t.strip(_ASCII_SPACE)]
    if len(texts) != len(lines):  # not UTF-8 (json.loads would detect UTF-16/32)
        texts = [""] * len(lines)
    decode = _JSON_DECODER.decode
    for line, text in zip(lines, texts, strict=True):
        try:
            value = decode(text)
        except ValueError:  # a BOM, another encoding, or invalid: json.loads decides
            value = json.loads(line + b"\n")
        yield value


_ASCII_SPACE = " \t\n\r\x0b\x0c"
"""What bytes.strip() removes: the blank lines skipped by both parsers are the same."""
_JSON_DECODER = json.JSONDecoder()
"""The decoder json.loads uses for a str with default arguments."""


@dataclass
class RunStore:
    run_dir: Path
    run_meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, out_dir: Path, run_id: str, run_meta: dict[str, Any]) -> RunStore:
        run_dir = Path(out_dir) / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / "facts").mkdir()
        (run_dir / "raw").mkdir()
        (run_dir / SAMPLES).touch()
        meta = {"schema": SCHEMA_VERSION, "run_id": run_id, **run_meta}
        store = cls(run_dir=run_dir, run_meta=meta)
        store.save_meta()
        return store

    @classmethod
    def open(cls, run_dir: Path) -> RunStore:
        run_dir = Path(run_dir)
        meta = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
        return cls(run_dir=run_dir, run_meta=meta)

    @property
    def run_id(self) -> str:
        return str(self.run_meta["run_id"])

    def save_meta(self) -> None:
        write_json_atomic(self.run_dir / RUN_JSON, self.run_meta)

    def update_meta(self, **changes: Any) -> None:
        self.run_meta.update(changes)
        self.save_meta()

    def append(self, sample: dict[str, Any]) -> None:
        """Append one sample as one line: a single write, then fsync."""
        line = (json.dumps(sample, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.run_dir / SAMPLES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a short write on a regular file means a full disk
                raise OSError(f"short write to {SAMPLES}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def repair(self) -> int:
        """Cut a trailing partial line left by a kill; returns the bytes removed."""
        path = self.run_dir / SAMPLES
        if not path.exists():
            return 0
        end = 0
        for offset, _ in _complete_lines(path):
            end = offset
        size = path.stat().st_size
        if size != end:
            with path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        return size - end

    def done_keys(self) -> set[tuple[str, int]]:
        """(cell_id, repetition) pairs that already have a sample."""
        return {(s["cell_id"], int(s["repetition"])) for s in iter_samples(self.run_dir)}

    def raw_dir(self, cell_id: str, repetition: int) -> Path:
        path = self.run_dir / "raw" / cell_id / str(repetition)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def facts_dir(self) -> Path:
        return self.run_dir / "facts"
