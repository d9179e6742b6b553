"""Promotion requests and their approvals (four eyes on guarded moves).

A request is PENDING until enough principals other than the requester approve it (the model's
`required_approvals`, counted when each approval lands), one rejects it, its requester or an admin cancels
it, or it expires (marked lazily, when read or reviewed). The approval that reaches the number moves the
request to APPROVED under its row lock, so concurrent approvers execute it exactly once; the move itself
runs through `Lifecycle` with the request's id as approval, whose guard re-checks the gates and marks the
request EXECUTED in the move's transaction. A refused move marks it FAILED with the reasons. If the
server stops between the two, the request stays APPROVED and the next ApprovePromotion resumes it.
"""

from __future__ import annotations

import enum

from modelreg_server.domain import audit, errors
from modelreg_server.domain.audit import DENIED, AuditLog
from modelreg_server.domain.filtering import FilterError, parse_filter
from modelreg_server.domain.gates import check_target
from modelreg_server.domain.governance_records import (
    PromotionRequestRecord,
    RequestState,
    Target,
    request_name,
)
from modelreg_server.domain.lifecycle import AliasChangeSpec, Lifecycle, resolve_ref
from modelreg_server.domain.names import VersionRef, model_name, version_name
from modelreg_server.domain.pagination import PageSizeError, PageTokenCodec, PageTokenError, resolve_page_size
from modelreg_server.domain.records import Caller, Page, Stage
from modelreg_server.storage import governance_repo as repo
from modelreg_server.storage import lifecycle_repo, model_repo
from modelreg_server.storage.db import Connection, Database

SELF_APPROVAL = "SELF_APPROVAL"
# Who lazy expiry is recorded as in the audit trail.
_EXPIRER = Caller("system", action="ExpirePromotionRequest")


class _Next(enum.Enum):
    """What an approval transaction leaves the call to do after commit."""

    RETURN = 1
    EXECUTE = 2
    EXPIRED = 3
    SELF = 4
    CLOSED = 5


class Approvals:
    """Promotion requests: open, review, cancel, list; executes the approved ones."""

    def __init__(
        self, db: Database, lifecycle: Lifecycle, tokens: PageTokenCodec, audit_log: AuditLog
    ) -> None:
        self._db = db
        self._lifecycle = lifecycle
        self._tokens = tokens
        self._audit = audit_log

    # --- requests ----------------------------------------------------------------------------------

    async def request(
        self, ref: VersionRef, target: Target, *, archive_existing: bool, comment: str, caller: Caller
    ) -> PromotionRequestRecord:
        """Opens a request; ALREADY_EXISTS while another one for the same version and target is open."""

        async def work(conn: Connection) -> PromotionRequestRecord:
            model = await model_repo.get(conn, ref.model_id)
            if model is None:
                raise _model_not_found(ref.model_id)
            check_target(model, target)
            version = await resolve_ref(conn, ref)
            name = version_name(version.model_id, version.version)
            await _check_movable(conn, version.model_id, version.version, version.stage, target)
            gates = await repo.get_gates(conn, model.model_id)
            if gates.required_approvals == 0:
                raise errors.FailedPrecondition(
                    f"{model_name(model.model_id)} requires no approvals: promote {name} directly",
                    "APPROVALS_NOT_REQUIRED",
                    {"model": model_name(model.model_id)},
                    [errors.PreconditionViolation("APPROVALS_NOT_REQUIRED", name, "required_approvals is 0")],
                )
            await _expire_due(conn, model.model_id)
            open_id = await repo.find_open_request(conn, model.model_id, version.version, target)
            if open_id is not None:
                existing = request_name(model.model_id, open_id)
                raise errors.AlreadyExists(
                    f"{existing} already asks to move {name} to {target}",
                    "PROMOTION_REQUEST_EXISTS",
                    {"promotion_request": existing},
                )
            created = await repo.insert_request(
                conn,
                model.model_id,
                version.version,
                target,
                archive_existing=archive_existing,
                requester=caller.principal,
                comment=comment,
                required_approvals=gates.required_approvals,
                ttl=gates.request_ttl,
            )
            await audit.record(
                conn,
                caller,
                created.name,
                after={"state": created.state.name, "model_version": name, "target": str(target)},
                archive_existing=archive_existing,
                comment=comment,
            )
            return created

        return await self._db.transact(work)

    async def get(self, model_id: str, request_id: int) -> PromotionRequestRecord:
        """A request (expired first if due), or NOT_FOUND."""
        await self._db.transact(lambda conn: _expire_due(conn, model_id, request_id))
        async with self._db.connection() as conn:
            found = await repo.get_request(conn, model_id, request_id)
        if found is None:
            raise _request_not_found(model_id, request_id)
        return found

    async def list_requests(
        self, model_id: str, filter_text: str, page_size: int, page_token: str
    ) -> Page[PromotionRequestRecord]:
        """One page of a model's requests, newest first (due ones expired first)."""
        try:
            limit = resolve_page_size(page_size)
            node = parse_filter(filter_text)
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        except FilterError as exc:
            raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc
        binding = f"promotionRequests\x00{model_id}\x00{filter_text}"
        after = None
        if page_token:
            try:
                after = self._tokens.decode(page_token, binding)
            except PageTokenError as exc:
                raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc

        async def work(conn: Connection) -> None:
            if await model_repo.get(conn, model_id) is None:
                raise _model_not_found(model_id)
            await _expire_due(conn, model_id)

        await self._db.transact(work)
        async with self._db.connection() as conn:
            try:
                items, cursor = await repo.list_requests(
                    conn, model_id, filter_node=node, after=after, limit=limit
                )
            except FilterError as exc:
                raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc
        return Page(items, "" if cursor is None else self._tokens.encode(cursor, binding))

    # --- reviews -----------------------------------------------------------------------------------

    async def approve(
        self, model_id: str, request_id: int, comment: str, caller: Caller
    ) -> PromotionRequestRecord:
        """Approves; the approval reaching the required number executes the move (see the module doc)."""

        async def work(conn: Connection) -> tuple[_Next, PromotionRequestRecord]:
            request = await _locked(conn, model_id, request_id)
            if await _expired(conn, request):
                return _Next.EXPIRED, request
            if request.requester == caller.principal:
                return _Next.SELF, request
            reviewed = any(r.principal == caller.principal and r.approved for r in request.reviews)
            if request.state not in (RequestState.PENDING, RequestState.APPROVED):
                return (_Next.RETURN if reviewed else _Next.CLOSED), request
            if not reviewed:
                await repo.add_review(conn, request_id, caller.principal, True, comment)
            state = request.state
            if state == RequestState.PENDING:
                required = max(1, (await repo.get_gates(conn, model_id)).required_approvals)
                if required != request.required_approvals:
                    await repo.set_required_approvals(conn, request_id, required)
                if await repo.count_approvals(conn, request_id) >= required:
                    await repo.set_state(
                        conn, request_id, RequestState.APPROVED, expected=RequestState.PENDING
                    )
                    state = RequestState.APPROVED
            if not reviewed or state != request.state:
                await audit.record(
                    conn,
                    caller,
                    request.name,
                    before={"state": request.state.name},
                    after={"state": state.name},
                    approved_by=caller.principal,
                    comment=comment,
                )
            # Execute when approved just now, or when found APPROVED (an execution cut short: resume it).
            return (_Next.EXECUTE if state == RequestState.APPROVED else _Next.RETURN), request

        step, request = await self._db.transact(work)
        await self._raise_outcome(step, request, caller, "approve")
        if step is _Next.EXECUTE:
            await self._execute(request, caller)
        return await self.get(model_id, request_id)

    async def reject(
        self, model_id: str, request_id: int, comment: str, caller: Caller
    ) -> PromotionRequestRecord:
        """Rejects a pending request for good."""

        async def work(conn: Connection) -> tuple[_Next, PromotionRequestRecord]:
            request = await _locked(conn, model_id, request_id)
            if await _expired(conn, request):
                return _Next.EXPIRED, request
            if request.requester == caller.principal:
                return _Next.SELF, request
            if request.state == RequestState.REJECTED and any(
                r.principal == caller.principal and not r.approved for r in request.reviews
            ):
                return _Next.RETURN, request
            if request.state != RequestState.PENDING:
                return _Next.CLOSED, request
            await repo.record_rejection(conn, request_id, caller.principal, comment)
            note = f"rejected by {caller.principal}" + (f": {comment}" if comment else "")
            await repo.set_state(
                conn, request_id, RequestState.REJECTED, expected=RequestState.PENDING, message=note
            )
            await audit.record(
                conn,
                caller,
                request.name,
                before={"state": "PENDING"},
                after={"state": "REJECTED"},
                comment=comment,
            )
            return _Next.RETURN, request

        step, request = await self._db.transact(work)
        await self._raise_outcome(step, request, caller, "reject")
        return await self.get(model_id, request_id)

    async def cancel(
        self, model_id: str, request_id: int, comment: str, caller: Caller
    ) -> PromotionRequestRecord:
        """Cancels an open request (the servicer checks that the caller is its requester or an admin)."""

        async def work(conn: Connection) -> _Next:
            request = await _locked(conn, model_id, request_id)
            if await _expired(conn, request):
                return _Next.EXPIRED
            if request.state == RequestState.CANCELLED:
                return _Next.RETURN
            if request.state not in (RequestState.PENDING, RequestState.APPROVED):
                return _Next.CLOSED
            note = f"cancelled by {caller.principal}" + (f": {comment}" if comment else "")
            await repo.set_state(
                conn, request_id, RequestState.CANCELLED, expected=request.state, message=note
            )
            await audit.record(
                conn,
                caller,
                request.name,
                before={"state": request.state.name},
                after={"state": "CANCELLED"},
                comment=comment,
            )
            return _Next.RETURN

        step = await self._db.transact(work)
        current = await self.get(model_id, request_id)
        await self._raise_outcome(step, current, caller, "cancel")
        return current

    async def _raise_outcome(
        self, step: _Next, request: PromotionRequestRecord, caller: Caller, verb: str
    ) -> None:
        """Raises what the transaction decided once its changes (an expiry) are committed."""
        if step is _Next.EXPIRED:
            raise errors.FailedPrecondition(
                f"{request.name} expired at {request.expire_time.isoformat()}; request the promotion again",
                "PROMOTION_REQUEST_EXPIRED",
                {"promotion_request": request.name},
                [
                    errors.PreconditionViolation(
                        "PROMOTION_REQUEST_EXPIRED", request.name, "expired while pending"
                    )
                ],
            )
        if step is _Next.SELF:
            await self._audit.record_alone(caller, request.name, outcome=DENIED, reason=SELF_APPROVAL)
            raise errors.PermissionDenied(
                f"{caller.principal} requested {request.name} and cannot {verb} it: another lead or "
                "automation principal must review it (the requester may cancel it)",
                SELF_APPROVAL,
                {"promotion_request": request.name, "principal": f"principals/{caller.principal}"},
            )
        if step is _Next.CLOSED:
            raise errors.FailedPrecondition(
                f"{request.name} is {request.state.name}, not open for review",
                "PROMOTION_REQUEST_CLOSED",
                {"promotion_request": request.name, "state": request.state.name},
                [
                    errors.PreconditionViolation(
                        "PROMOTION_REQUEST_CLOSED", request.name, f"state {request.state.name}"
                    )
                ],
            )

    # --- execution ---------------------------------------------------------------------------------

    async def _execute(self, request: PromotionRequestRecord, caller: Caller) -> None:
        """Makes the approved move as `caller`; a refusal marks the request FAILED instead of raising."""
        ref = VersionRef(request.model_id, request.version)
        note = f"{request.name}: {request.comment}" if request.comment else request.name
        approval = str(request.request_id)
        try:
            if request.target.alias is None:
                await self._lifecycle.transition_stage(
                    ref,
                    Stage.PRODUCTION,
                    archive_existing=request.archive_existing,
                    comment=note,
                    caller=caller,
                    approval_id=approval,
                )
            else:
                change = AliasChangeSpec(request.target.alias, ref, None)
                await self._lifecycle.update_aliases(
                    request.model_id, [change], note, caller, approval_id=approval
                )
        except errors.FailedPrecondition as exc:
            await self._record_failure(request, exc, caller)
            return
        # Normally the guard marked it EXECUTED with the move; not when the move was already in effect.
        await self._db.transact(lambda conn: _mark_in_effect(conn, request, caller))

    async def _record_failure(
        self, request: PromotionRequestRecord, refusal: errors.FailedPrecondition, caller: Caller
    ) -> None:
        await self._db.transact(lambda conn: _mark_failed(conn, request, refusal, caller))


async def _check_movable(conn: Connection, model_id: str, version: int, stage: Stage, target: Target) -> None:
    """Refuses requests that could never execute, or have nothing to do."""
    name = version_name(model_id, version)
    if stage == Stage.ARCHIVED:
        raise errors.FailedPrecondition(
            f"{name} is ARCHIVED and cannot be promoted",
            "VERSION_ARCHIVED",
            {"model_version": name},
            [errors.PreconditionViolation("VERSION_ARCHIVED", name, "archived versions are not promoted")],
        )
    if target.alias is None:
        done = stage == Stage.PRODUCTION
    else:
        alias = await lifecycle_repo.get_alias(conn, model_id, target.alias)
        done = alias is not None and alias.version == version
    if done:
        raise errors.FailedPrecondition(
            f"{name} is already at {target}",
            "ALREADY_PROMOTED",
            {"model_version": name, "target": str(target)},
            [errors.PreconditionViolation("ALREADY_PROMOTED", name, f"already at {target}")],
        )


async def _locked(conn: Connection, model_id: str, request_id: int) -> PromotionRequestRecord:
    request = await repo.get_request(conn, model_id, request_id, lock=True)
    if request is None:
        raise _request_not_found(model_id, request_id)
    return request


async def _expired(conn: Connection, request: PromotionRequestRecord) -> bool:
    """Whether a locked request has expired (marking it EXPIRED now if it just did)."""
    if request.state == RequestState.EXPIRED:
        return True
    return await _expire_due(conn, request.model_id, request.request_id)


async def _expire_due(conn: Connection, model_id: str, request_id: int | None = None) -> bool:
    """Marks due pending requests EXPIRED (audited); whether any was."""
    expired = await repo.expire_due(conn, model_id, request_id)
    for expired_id in expired:
        await audit.record(
            conn,
            _EXPIRER,
            request_name(model_id, expired_id),
            before={"state": "PENDING"},
            after={"state": "EXPIRED"},
        )
    return bool(expired)


async def _mark_failed(
    conn: Connection, request: PromotionRequestRecord, exc: errors.FailedPrecondition, caller: Caller
) -> None:
    subject = version_name(request.model_id, request.version)
    failures = list(exc.violations) or [errors.PreconditionViolation(exc.reason, subject, exc.message)]
    if await repo.set_state(
        conn,
        request.request_id,
        RequestState.FAILED,
        expected=RequestState.APPROVED,
        message=exc.message,
        failures=failures,
    ):
        await audit.record(
            conn,
            caller,
            request.name,
            before={"state": "APPROVED"},
            after={"state": "FAILED"},
            reason=exc.reason,
        )


async def _mark_in_effect(conn: Connection, request: PromotionRequestRecord, caller: Caller) -> None:
    if await repo.set_state(
        conn,
        request.request_id,
        RequestState.EXECUTED,
        expected=RequestState.APPROVED,
        message=f"already in effect when {caller.principal} executed it",
    ):
        await audit.record(
            conn, caller, request.name, before={"state": "APPROVED"}, after={"state": "EXECUTED"}
        )


def _model_not_found(model_id: str) -> errors.NotFound:
    name = model_name(model_id)
    return errors.NotFound(f"model {name} not found", "MODEL_NOT_FOUND", {"model": name})


def _request_not_found(model_id: str, request_id: int) -> errors.NotFound:
    name = request_name(model_id, request_id)
    return errors.NotFound(f"{name} not found", "PROMOTION_REQUEST_NOT_FOUND", {"promotion_request": name})
