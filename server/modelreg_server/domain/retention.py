"""Retention and legal holds: what keeps a model (and the blobs of its promoted versions) from deletion.

A version is *held* while it is in PRODUCTION or a protected alias points at it, and *retained* while held
and for its retention period after it last was (migration 0005 tracks this with triggers, whoever writes).
A model with a retained version, or under legal hold (label `legal-hold=true` on the model or a version),
cannot be deleted: a trigger on `models` refuses it, and `check_deletable` explains it first with a
PreconditionFailure. Garbage collection skips blobs listed in `retained_blobs` until their time is up.
"""

from __future__ import annotations

from datetime import timedelta

from modelreg_server.domain import errors
from modelreg_server.domain.names import model_name, version_name
from modelreg_server.storage import governance_repo as repo
from modelreg_server.storage import model_repo
from modelreg_server.storage.db import Connection

LEGAL_HOLD_LABEL = "legal-hold"
LEGAL_HOLD = "LEGAL_HOLD"
RETENTION = "RETENTION"


def under_legal_hold(labels: dict[str, str]) -> bool:
    """Whether labels put their resource under legal hold."""
    return labels.get(LEGAL_HOLD_LABEL, "").lower() == "true"


async def stamp(conn: Connection, model_id: str, version: int, period: timedelta) -> None:
    """Records the retention period in force for a version being promoted now."""
    await repo.stamp_retention(conn, model_id, version, period)


async def check_deletable(conn: Connection, model_id: str) -> None:
    """FAILED_PRECONDITION (LEGAL_HOLD, else RETENTION) listing every version that blocks deletion."""
    model = await model_repo.get(conn, model_id)
    if model is None:
        return
    name = model_name(model_id)
    violations = []
    if under_legal_hold(model.labels):
        violations.append(
            errors.PreconditionViolation(LEGAL_HOLD, name, f"the model carries label {LEGAL_HOLD_LABEL}=true")
        )
    for block in await repo.deletion_blocks(conn, model_id):
        subject = version_name(model_id, block.version)
        if block.reason == LEGAL_HOLD:
            text = f"the version carries label {LEGAL_HOLD_LABEL}=true"
        elif block.held_now or block.retain_until is None:
            text = "in PRODUCTION or holding a protected alias; retained for its retention period after that"
        else:
            text = f"held PRODUCTION or a protected alias; retained until {block.retain_until.isoformat()}"
        violations.append(errors.PreconditionViolation(block.reason, subject, text))
    if not violations:
        return
    reason = LEGAL_HOLD if any(v.type == LEGAL_HOLD for v in violations) else RETENTION
    what = "under legal hold" if reason == LEGAL_HOLD else "within its retention period"
    listed = ", ".join(v.subject for v in violations if v.type == reason)
    raise errors.FailedPrecondition(
        f"{name} cannot be deleted: {what}: {listed}",
        reason,
        {"model": name, "blocking": str(len(violations))},
        violations,
    )
