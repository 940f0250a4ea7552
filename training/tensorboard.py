"""TensorBoard logging without TensorBoard: metrics.jsonl's rows as scalars in an event file.

An event file is a sequence of records (TFRecord framing), each one serialized `Event` protocol buffer:

    record = length (uint64 LE) | masked crc32c of length (uint32 LE) | event bytes | masked crc32c of them
    Event   { 1: wall_time (double), 2: step (int64), 3: file_version (string), 5: summary (Summary) }
    Summary { 1: value (repeated Value) }
    Value   { 1: tag (string), 2: simple_value (float) }

Those few fields are all a scalar needs, so they are written here by hand (about as long as the code that
would import them); `tensorboard --logdir RUN/tensorboard` reads the file, and so does the test.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

# CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, one table lookup per byte.
_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's mask: rotate right by 15 and add a constant, so a CRC of CRCs is not a CRC."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# Protocol buffer wire format: a key (field number << 3 | wire type), then the value.
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s take ten bytes, as two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, data: bytes) -> bytes:  # wire type 2: length-delimited
    return _field(number, 2, _varint(len(data)) + data)


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    value_msg = _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value))  # float: wire type 5
    summary = _bytes_field(1, value_msg)
    return _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step)) + _bytes_field(5, summary)


def version_event(wall_time: float) -> bytes:
    """The first event of every file: which event format follows."""
    return _field(1, 1, struct.pack("<d", wall_time)) + _bytes_field(3, b"brain.Event:2")


class EventWriter:
    """Appends scalars to FOLDER/events.out.tfevents.<time>.<host>, the file name TensorBoard looks for."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self.file = open(self.path, "ab")
        self._record(version_event(now))

    def _record(self, event: bytes) -> None:
        length = struct.pack("<Q", len(event))
        self.file.write(
            length + struct.pack("<I", masked_crc(length)) + event + struct.pack("<I", masked_crc(event))
        )

    def add_row(self, row: dict) -> None:
        """Every number of a metrics.jsonl row but its step, as a scalar named by its key, at that step."""
        now = time.time()
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._record(scalar_event(key, float(value), int(row["step"]), now))
        self.file.flush()

    def close(self) -> None:
        self.file.close()
