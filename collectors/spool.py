"""Durable local journal of Kafka envelopes the broker did not take.

Why a journal and not a retry queue in memory: a collector must lose nothing when the broker
is away for minutes or when the collector itself restarts in the meantime. Envelopes are
appended to segment files (`<n>.seg`) as length-prefixed, CRC-checked records and fsynced; a
cursor file remembers how far replay got, so replay resumes in order after a restart.

Record layout: u32 body length | u32 crc32(body) | body, where body is
u32 rows | u16 key length | key | value. A torn record at the tail (crash mid-write) fails the
length/CRC check and is cut off when the spool is opened.

Replay is at-least-once: a crash between a delivery and the cursor update can send an envelope
twice; consumers deduplicate on `request_id` (and GPU samples on (gpu_uuid, timestamp)).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_HEAD = struct.Struct("<II")
_BODY_HEAD = struct.Struct("<IH")
_CURSOR = struct.Struct("<QQ")
SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SpoolRecord:
    key: bytes
    value: bytes
    rows: int
    end: tuple[int, int]  # (segment, offset) just after this record: the cursor once delivered


class SpoolBusyError(RuntimeError):
    """Another live process holds this spool folder."""


class Spool:
    """Append-only segment files plus a replay cursor, owned by one process (flock)."""

    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_file = open(self.folder / ".lock", "a+b")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolBusyError(f"spool {self.folder} is in use by another process") from None
        self._cursor_path = self.folder / "cursor"
        self._cursor = self._read_cursor()
        segments = self._segments()
        self._write_segment = segments[-1] if segments else self._cursor[0] + 1
        self._writer: BinaryIO | None = None
        self._repair_tail()
        self.pending_rows = sum(r.rows for r in self._scan(self._cursor, limit=None))
        self.pending_records = sum(1 for _ in self._scan(self._cursor, limit=None))

    # ------------------------------------------------------------------ writing

    def append(self, records: Iterable[tuple[bytes, bytes, int]]) -> int:
        """Journal (key, value, rows) envelopes, fsync once; returns rows written."""
        written = 0
        with self._lock:
            writer = self._open_writer()
            for key, value, rows in records:
                body = _BODY_HEAD.pack(rows, len(key)) + key + value
                writer.write(_HEAD.pack(len(body), zlib.crc32(body)) + body)
                written += rows
                self.pending_records += 1
                if writer.tell() >= self._segment_bytes:
                    self._sync(writer)
                    writer.close()
                    self._write_segment += 1
                    writer = self._writer = open(self._path(self._write_segment), "ab")  # noqa: SIM115
            self._sync(writer)
            self.pending_rows += written
        return written

    def _open_writer(self) -> BinaryIO:
        if self._writer is None:
            self._writer = open(self._path(self._write_segment), "ab")  # noqa: SIM115
        return self._writer

    @staticmethod
    def _sync(writer: BinaryIO) -> None:
        writer.flush()
        os.fsync(writer.fileno())

    # ------------------------------------------------------------------ reading

    @property
    def empty(self) -> bool:
        return self.pending_records == 0

    def read(self, limit: int) -> list[SpoolRecord]:
        """The next `limit` records after the cursor, oldest first."""
        with self._lock:
            if self._writer is not None:
                self._writer.flush()
            return list(self._scan(self._cursor, limit=limit))

    def commit(self, record: SpoolRecord, rows: int, records: int) -> None:
        """Advance the cursor past `record` (delivered), durably; drop finished segments."""
        with self._lock:
            self._cursor = record.end
            tmp = self._cursor_path.with_suffix(".tmp")
            with open(tmp, "wb") as handle:
                handle.write(_CURSOR.pack(*record.end))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._cursor_path)
            self.pending_rows -= rows
            self.pending_records -= records
            for segment in self._segments():
                if segment < record.end[0]:
                    self._path(segment).unlink(missing_ok=True)
            if self.pending_records == 0 and self._writer is not None:
                # Everything replayed: start a fresh segment so old bytes can go.
                self._writer.close()
                self._writer = None
                current = self._path(self._write_segment)
                if current.exists() and record.end[0] == self._write_segment:
                    current.unlink()
                    self._write_segment += 1

    def pending_bytes(self) -> int:
        """Bytes on disk not yet replayed (segments from the cursor on); a few stat calls."""
        with self._lock:
            segment, offset = self._cursor
            total = 0
            for number in self._segments():
                if number < segment:
                    continue
                try:
                    size = self._path(number).stat().st_size
                except FileNotFoundError:
                    continue
                total += max(0, size - offset) if number == segment else size
            return total

    def _scan(self, cursor: tuple[int, int], limit: int | None) -> Iterable[SpoolRecord]:
        count = 0
        segment, offset = cursor
        for number in self._segments():
            if number < segment:
                continue
            start = offset if number == segment else 0
            path = self._path(number)
            with open(path, "rb") as handle:
                handle.seek(start)
                while True:
                    record = _read_one(handle, number)
                    if record is None:
                        break
                    yield record
                    count += 1
                    if limit is not None and count >= limit:
                        return

    def _repair_tail(self) -> None:
        """Cut a torn last record (crash mid-append) so appends continue on a clean boundary."""
        path = self._path(self._write_segment)
        if not path.exists():
            return
        good = 0
        with open(path, "rb") as handle:
            while _read_one(handle, self._write_segment) is not None:
                good = handle.tell()
        if good != path.stat().st_size:
            with open(path, "r+b") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())

    # ------------------------------------------------------------------ housekeeping

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.seg") if p.stem.isdigit())

    def _path(self, number: int) -> Path:
        return self.folder / f"{number:012d}.seg"

    def _read_cursor(self) -> tuple[int, int]:
        try:
            raw = self._cursor_path.read_bytes()
        except FileNotFoundError:
            return (0, 0)
        if len(raw) != _CURSOR.size:
            return (0, 0)
        segment, offset = _CURSOR.unpack(raw)
        return (int(segment), int(offset))

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._sync(self._writer)
                self._writer.close()
                self._writer = None
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()


def _read_one(handle: BinaryIO, segment: int) -> SpoolRecord | None:
    head = handle.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    length, crc = _HEAD.unpack(head)
    body = handle.read(length)
    if len(body) < length or zlib.crc32(body) != crc or length < _BODY_HEAD.size:
        return None
    rows, key_length = _BODY_HEAD.unpack_from(body)
    start = _BODY_HEAD.size
    key = body[start : start + key_length]
    value = body[start + key_length :]
    return SpoolRecord(key, value, rows, (segment, handle.tell()))
