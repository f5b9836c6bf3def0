"""The frames a dask worker and its job host exchange over a pipe pair.

A frame is a 4-byte big-endian length and a pickle. Pickle is safe here: both ends are
our own code in processes of the same user, and the pipes are private to them.

Worker -> host: ``("run", job_id, JobSpec)``, ``("cancel", job_id)``.
Host -> worker: ``("started", job_id, pid)``, then one of ``("finished", job_id,
JobOutcome)``, ``("cancelled", job_id)``, ``("failed", job_id, message)``.
"""

from __future__ import annotations

import pickle
import struct
from typing import IO, Any

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def body_size(header: bytes) -> int:
    return int(_HEADER.unpack(header)[0])


def decode(body: bytes) -> tuple[Any, ...]:
    message = pickle.loads(body)
    if not isinstance(message, tuple) or not message:
        raise ValueError(f"not a job host message: {message!r:.80}")
    return message


def read_frame(stream: IO[bytes]) -> tuple[Any, ...] | None:
    """The next message from a blocking stream; None at EOF (also EOF mid-frame)."""
    header = stream.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE:
        return None
    size = body_size(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return decode(body)
