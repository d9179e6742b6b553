"""Request validation shared by the servicers: collects every field violation before failing."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from modelreg_server.domain import errors

LABEL_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
METRIC_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
DATA_DIGEST_RE = re.compile(r"[a-z0-9]+:[A-Za-z0-9+/=_-]{8,256}")
DTYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\[\]<>, ]{0,63}")

MAX_STRING = 64 * 1024
MAX_DESCRIPTION = 16 * 1024
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_METRICS = 512
MAX_REQUEST_ID = 128
# The ranges google.protobuf.Timestamp and Duration define; outside them the conversions to datetime and
# timedelta raise (ValueError, OverflowError).
MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years
MAX_NANOS = 999_999_999


class Violations:
    """Accumulates field violations; `check()` raises one InvalidArgument listing them all."""

    def __init__(self) -> None:
        self.items: list[errors.FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        """Records one violation."""
        self.items.append(errors.FieldViolation(field, description))

    def check(self) -> None:
        """Raises InvalidArgument if anything was recorded."""
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items[:5])
            more = f" (and {len(self.items) - 5} more)" if len(self.items) > 5 else ""
            raise errors.InvalidArgument(
                f"invalid request: {summary}{more}",
                "INVALID_ARGUMENT",
                {"fields": str(len(self.items))},
                self.items,
            )


def _strings(message: Message, prefix: str) -> Iterator[tuple[str, str]]:
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str):
                    yield f"{path}[{key[:40]!r}]", key
                if value_fd.type == FieldDescriptor.TYPE_STRING:
                    yield f"{path}[{str(key)[:40]!r}]", item
                elif value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    yield from _strings(item, f"{path}[{str(key)[:40]!r}].")
        elif fd.type == FieldDescriptor.TYPE_STRING:
            items = value if fd.is_repeated else [value]
            for i, item in enumerate(items):
                yield (f"{path}[{i}]" if fd.is_repeated else path), item
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for i, item in enumerate(value):
                    yield from _strings(item, f"{path}[{i}].")
            else:
                yield from _strings(value, f"{path}.")


def check_strings(message: Message, v: Violations, prefix: str = "") -> None:
    """Rejects NUL characters (PostgreSQL text cannot hold them) and strings over 64 KiB, anywhere."""
    for path, text in _strings(message, prefix):
        if "\x00" in text:
            v.add(path, "must not contain NUL characters")
        if len(text) > MAX_STRING:
            v.add(path, f"longer than {MAX_STRING} characters")


def check_labels(field: str, labels: Mapping[str, str], v: Violations) -> None:
    """Label keys: letter first, then letters, digits, `_ . -` (≤63); values ≤256 chars; ≤64 labels."""
    if len(labels) > MAX_LABELS:
        v.add(field, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            v.add(
                f"{field}[{key[:40]!r}]",
                "key must start with a letter and hold only letters, digits, '_', '.', '-' (≤63)",
            )
        if len(value) > MAX_LABEL_VALUE:
            v.add(f"{field}[{key[:40]!r}]", f"value longer than {MAX_LABEL_VALUE} characters")


def check_metrics(field: str, metrics: Mapping[str, float], v: Violations) -> None:
    """Metric names like `auc`, `val/loss`; values must be finite numbers."""
    if len(metrics) > MAX_METRICS:
        v.add(field, f"at most {MAX_METRICS} metrics")
    for key, value in metrics.items():
        if not METRIC_KEY_RE.fullmatch(key):
            v.add(
                f"{field}[{key[:40]!r}]",
                "name must start with a letter or '_' and hold letters, digits, '_./-' (≤128)",
            )
        if not math.isfinite(value):
            v.add(f"{field}[{key[:40]!r}]", "must be a finite number")


def check_length(field: str, text: str, maximum: int, v: Violations) -> None:
    """Rejects text longer than maximum characters."""
    if len(text) > maximum:
        v.add(field, f"longer than {maximum} characters")


def check_digest(field: str, digest: str, v: Violations, *, required: bool = False) -> None:
    """`sha256:` followed by 64 lowercase hex digits."""
    if (digest or required) and not DIGEST_RE.fullmatch(digest):
        v.add(field, "must be 'sha256:' followed by 64 lowercase hex digits")


def require(field: str, value: Any, v: Violations) -> None:
    """Records a violation when a required field is empty."""
    if not value:
        v.add(field, "required")


def check_timestamp(field: str, value: timestamp_pb2.Timestamp, v: Violations) -> bool:
    """Rejects timestamps outside 0001-01-01..9999-12-31 or with nanos outside 0..999,999,999."""
    valid = MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= value.nanos <= MAX_NANOS
    if not valid:
        v.add(field, "must be a timestamp between 0001-01-01 and 9999-12-31 (nanos 0 to 999,999,999)")
    return valid


def check_duration(field: str, value: duration_pb2.Duration, v: Violations) -> bool:
    """Rejects durations beyond ±10,000 years or whose nanos are out of range or of the other sign."""
    seconds, nanos = value.seconds, value.nanos
    valid = (
        abs(seconds) <= MAX_DURATION_SECONDS
        and abs(nanos) <= MAX_NANOS
        and not (seconds > 0 > nanos or seconds < 0 < nanos)
    )
    if not valid:
        v.add(field, "must be a duration of at most 10,000 years (nanos with the sign of seconds)")
    return valid
