"""Promotion rules: stage transitions, aliases with compare-and-swap and rollback, traffic policies.

Every mutation locks the model row first, so changes to one model are serialised across replicas; the
database triggers re-check the invariants (policy, allowed moves, nothing on ARCHIVED versions) whoever
writes. Each change is written to the feed in the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelreg_server.domain import audit, errors
from modelreg_server.domain.names import VersionRef, alias_name, version_name
from modelreg_server.domain.pagination import PageSizeError, PageTokenCodec, PageTokenError, resolve_page_size
from modelreg_server.domain.records import (
    AliasMove,
    AliasRecord,
    Caller,
    ChangeType,
    ModelRecord,
    Page,
    PromotionPolicy,
    Route,
    Stage,
    StageMove,
    TrafficPolicyRecord,
    VersionRecord,
)
from modelreg_server.storage import lifecycle_repo as repo
from modelreg_server.storage import model_repo, version_repo
from modelreg_server.storage.db import Connection, Database

# Allowed stage moves; the database trigger model_versions_stage_rules holds the same table.
ALLOWED_MOVES: dict[Stage, frozenset[Stage]] = {
    Stage.NONE: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.STAGING: frozenset({Stage.PRODUCTION, Stage.NONE, Stage.ARCHIVED}),
    Stage.PRODUCTION: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset({Stage.NONE}),
}

# Compare-and-swap expectation: None = no check, ABSENT = the alias must not exist, else a version number.
ABSENT = 0

CommitHook = Callable[[str, int], None]


class PromotionGuard(Protocol):
    """Checks a move into PRODUCTION or onto a protected alias before it happens (promotion gates and
    approvals plug in here). Runs inside the move's transaction with the model row locked; raises
    errors.FailedPrecondition listing every failed rule."""

    async def check_promotion(
        self,
        conn: Connection,
        model: ModelRecord,
        version: VersionRecord,
        *,
        stage: Stage | None,
        alias: str | None,
        caller: Caller,
        approval_id: str | None,
    ) -> None:
        """Raises when the promotion must not happen."""


@dataclass(frozen=True)
class AliasChangeSpec:
    """One change of UpdateAliases: target None deletes the alias."""

    alias: str
    target: VersionRef | None
    expected: int | None


def _version_payload(version: VersionRecord, **extra: Any) -> dict[str, Any]:
    return {"digest": version.artifact_digest, "stage": int(version.stage), **extra}


class Lifecycle:
    """Stages, aliases and traffic of models."""

    def __init__(
        self,
        db: Database,
        tokens: PageTokenCodec,
        on_commit: CommitHook | None = None,
        guard: PromotionGuard | None = None,
    ) -> None:
        self._db = db
        self._tokens = tokens
        self._on_commit = on_commit
        self.guard = guard

    async def _mutate(self, model_id: str, work: Callable[[Connection, ModelRecord], Awaitable[Any]]) -> Any:
        """Runs work with the model row locked, then tells the cache which revision it wrote."""
        written: list[int] = []

        async def tx(conn: Connection) -> Any:
            written.clear()
            model = await model_repo.get(conn, model_id, lock=True)
            if model is None:
                name = f"models/{model_id}"
                raise errors.NotFound(f"model {name} not found", "MODEL_NOT_FOUND", {"model": name})
            result = await work(conn, model)
            written.append(await repo.current_revision(conn))
            return result

        result = await self._db.transact(tx)
        if self._on_commit is not None and written:
            self._on_commit(model_id, written[0])
        return result

    # --- stages ------------------------------------------------------------------------------------

    async def transition_stage(
        self,
        ref: VersionRef,
        stage: Stage,
        *,
        archive_existing: bool,
        comment: str,
        caller: Caller,
        expected_stage: Stage | None = None,
        approval_id: str | None = None,
    ) -> VersionRecord:
        """Moves a version to `stage`; entering PRODUCTION archives the previous one only if asked.
        `expected_stage` (what the permission check saw) must still be the version's stage."""

        async def work(conn: Connection, model: ModelRecord) -> VersionRecord:
            _require_policy(model, stages=True)
            target = await _resolve_ref(conn, ref, lock=True)
            if expected_stage is not None and target.stage != expected_stage:
                name = version_name(target.model_id, target.version)
                raise errors.Aborted(
                    f"{name} changed stage concurrently; retry",
                    "CONCURRENT_MODIFICATION",
                    {"model_version": name},
                )
            if target.stage == stage:
                return target
            _check_move(target, stage)
            if stage == Stage.PRODUCTION and self.guard is not None:
                await self.guard.check_promotion(
                    conn, model, target, stage=stage, alias=None, caller=caller, approval_id=approval_id
                )
            moves: list[tuple[VersionRecord, Stage]] = []
            if stage == Stage.PRODUCTION:
                current = await repo.production_version(conn, model.model_id, lock=True)
                if current is not None:
                    occupant = await _found_version(conn, model.model_id, current)
                    if not archive_existing:
                        name = version_name(model.model_id, current)
                        raise errors.FailedPrecondition(
                            f"{name} is in PRODUCTION; pass archive_existing=true to archive it "
                            "in the same move",
                            "PRODUCTION_OCCUPIED",
                            {"production_version": name},
                            [
                                errors.PreconditionViolation(
                                    "PRODUCTION_OCCUPIED", name, "already in PRODUCTION"
                                )
                            ],
                        )
                    await _check_can_archive(conn, occupant)
                    moves.append((occupant, Stage.ARCHIVED))
            if stage == Stage.ARCHIVED:
                await _check_can_archive(conn, target)
            moves.append((target, stage))
            # Global locks in one order everywhere: the audit head, then the revision counter.
            await audit.record(
                conn,
                caller,
                version_name(target.model_id, target.version),
                before={"stage": target.stage.name},
                after={"stage": stage.name},
                archived=[version_name(v.model_id, v.version) for v, s in moves if v is not target],
                comment=comment,
            )
            revision = await repo.allocate_revisions(conn, len(moves))
            for offset, (version, to_stage) in enumerate(moves):
                await _apply_stage(conn, version, to_stage, revision + offset, comment, caller)
            updated = await version_repo.get(conn, model.model_id, target.version)
            assert updated is not None
            return updated

        result: VersionRecord = await self._mutate(ref.model_id, work)
        return result

    async def list_transitions(
        self, model_id: str, version: int | None, page_size: int, page_token: str
    ) -> Page[StageMove]:
        """Stage history, newest first."""
        limit, before, binding = self._page(f"transitions/{model_id}/{version}", page_size, page_token)
        async with self._db.connection() as conn:
            await _found_model(conn, model_id)
            moves, next_before = await repo.list_transitions(conn, model_id, version, before, limit)
        return Page(moves, self._token(next_before, binding))

    # --- aliases -----------------------------------------------------------------------------------

    async def get_alias(self, model_id: str, alias: str) -> AliasRecord:
        """An alias or NOT_FOUND."""
        async with self._db.connection() as conn:
            return _found_alias(await repo.get_alias(conn, model_id, alias), model_id, alias)

    async def list_aliases(self, model_id: str) -> list[AliasRecord]:
        """Every alias of a model."""
        async with self._db.connection() as conn:
            await _found_model(conn, model_id)
            return await repo.list_aliases(conn, model_id)

    async def set_alias(
        self,
        model_id: str,
        alias: str,
        target: VersionRef,
        expected: int | None,
        comment: str,
        caller: Caller,
    ) -> AliasRecord:
        """Creates or moves an alias (compare-and-swap on `expected`)."""
        spec = AliasChangeSpec(alias, target, expected)
        records = await self.update_aliases(model_id, [spec], comment, caller)
        return next(r for r in records if r.alias == alias)

    async def delete_alias(self, model_id: str, alias: str, expected: int | None, caller: Caller) -> None:
        """Deletes an alias (compare-and-swap on `expected`)."""
        await self.update_aliases(model_id, [AliasChangeSpec(alias, None, expected)], "", caller)

    async def update_aliases(
        self,
        model_id: str,
        changes: Sequence[AliasChangeSpec],
        comment: str,
        caller: Caller,
        approval_id: str | None = None,
    ) -> list[AliasRecord]:
        """Applies alias changes atomically; targets naming aliases resolve against the state before."""

        async def work(conn: Connection, model: ModelRecord) -> list[AliasRecord]:
            _require_policy(model, aliases=True)
            before = {a.alias: a for a in await repo.list_aliases(conn, model_id)}
            targets = {}
            for change in changes:
                if change.target is not None:
                    targets[change.alias] = await _resolve_ref(conn, change.target, lock=True, aliases=before)
            state: dict[str, int | None] = {name: a.version for name, a in before.items()}
            planned: list[tuple[str, int | None, int | None]] = []  # alias, new version, previous version
            for change in changes:
                current = state.get(change.alias)
                _check_expected(model_id, change, current)
                new = targets[change.alias].version if change.alias in targets else None
                if new is None and current is None:
                    raise _alias_not_found(model_id, change.alias)
                if new is not None:
                    _check_not_archived(targets[change.alias])
                if new is None:
                    await _check_alias_unused_by_traffic(conn, model_id, change.alias)
                if (
                    new is not None
                    and new != current
                    and self.guard
                    and change.alias in model.protected_aliases
                ):
                    await self.guard.check_promotion(
                        conn,
                        model,
                        targets[change.alias],
                        stage=None,
                        alias=change.alias,
                        caller=caller,
                        approval_id=approval_id,
                    )
                if new != current:
                    planned.append((change.alias, new, current))
                state[change.alias] = new
            if planned:
                await audit.record(
                    conn,
                    caller,
                    alias_name(model_id, planned[0][0]) if len(planned) == 1 else f"models/{model_id}",
                    before={a: p for a, _, p in planned},
                    after={a: n for a, n, _ in planned},
                    comment=comment,
                )
                revision = await repo.allocate_revisions(conn, len(planned))
                at = await repo.change_time(conn)
                for offset, (alias, new, previous) in enumerate(planned):
                    rev = revision + offset
                    if new is None:
                        await repo.delete_alias(conn, model_id, alias)
                        await repo.append_event(
                            conn,
                            rev,
                            model_id,
                            ChangeType.ALIAS_DELETED,
                            caller.principal,
                            alias=alias,
                            payload={"previous_version": previous},
                        )
                    else:
                        await repo.upsert_alias(conn, model_id, alias, new, rev, caller.principal, at)
                        await repo.append_event(
                            conn,
                            rev,
                            model_id,
                            ChangeType.ALIAS_SET,
                            caller.principal,
                            alias=alias,
                            version=new,
                            payload=_version_payload(targets[alias], previous_version=previous),
                        )
                    await repo.record_alias_move(
                        conn,
                        model_id,
                        alias,
                        new,
                        previous,
                        actor=caller.principal,
                        comment=comment,
                        revision=rev,
                        at=at,
                    )
            return await repo.list_aliases(conn, model_id)

        result: list[AliasRecord] = await self._mutate(model_id, work)
        return result

    async def alias_history(
        self, model_id: str, alias: str | None, page_size: int, page_token: str
    ) -> Page[AliasMove]:
        """Moves of one alias (or all aliases of a model), newest first."""
        limit, before, binding = self._page(f"history/{model_id}/{alias}", page_size, page_token)
        async with self._db.connection() as conn:
            await _found_model(conn, model_id)
            moves, next_before = await repo.alias_history(conn, model_id, alias, before, limit)
        return Page(moves, self._token(next_before, binding))

    async def rollback_alias(self, model_id: str, alias: str, comment: str, caller: Caller) -> AliasRecord:
        """Points the alias back where it pointed before its last move."""
        async with self._db.connection() as conn:
            last = await repo.last_alias_move(conn, model_id, alias)
        if last is None or last.previous_version is None:
            name = alias_name(model_id, alias)
            raise errors.FailedPrecondition(
                f"{name} has no earlier version to roll back to",
                "NOTHING_TO_ROLL_BACK",
                {"alias": name},
                [
                    errors.PreconditionViolation(
                        "NOTHING_TO_ROLL_BACK", name, "no earlier version in the history"
                    )
                ],
            )
        # Compare-and-swap on the state the history describes, so a concurrent move is not undone blindly.
        spec = AliasChangeSpec(alias, VersionRef(model_id, last.previous_version), last.version or ABSENT)
        note = comment or f"rollback of revision {last.revision}"
        records = await self.update_aliases(model_id, [spec], note, caller)
        return next(r for r in records if r.alias == alias)

    # --- traffic -----------------------------------------------------------------------------------

    async def get_traffic(self, model_id: str) -> TrafficPolicyRecord:
        """The traffic policy; an empty one (revision 0) when none is set."""
        async with self._db.connection() as conn:
            await _found_model(conn, model_id)
            policy = await repo.get_traffic(conn, model_id)
        return policy or TrafficPolicyRecord(model_id, (), 0, "", None)

    async def set_traffic(
        self, model_id: str, routes: Sequence[Route], comment: str, caller: Caller
    ) -> TrafficPolicyRecord:
        """Replaces the traffic policy; routes name existing aliases or non-archived versions."""

        async def work(conn: Connection, model: ModelRecord) -> TrafficPolicyRecord:
            _require_policy(model, aliases=True)
            aliases = {a.alias for a in await repo.list_aliases(conn, model_id)}
            for route in routes:
                if route.alias is not None and route.alias not in aliases:
                    raise _alias_not_found(model_id, route.alias)
                if route.version is not None:
                    _check_not_archived(await _found_version(conn, model_id, route.version))
            previous = await repo.get_traffic(conn, model_id)
            await audit.record(
                conn,
                caller,
                f"models/{model_id}/trafficPolicy",
                before=repo.routes_to_json(previous.routes) if previous else [],
                after=repo.routes_to_json(tuple(routes)),
                comment=comment,
            )
            revision = await repo.allocate_revisions(conn, 1)
            policy = TrafficPolicyRecord(model_id, tuple(routes), revision, caller.principal, None)
            await repo.put_traffic(conn, policy)
            await repo.append_event(
                conn,
                revision,
                model_id,
                ChangeType.TRAFFIC_CHANGED,
                caller.principal,
                payload={"routes": repo.routes_to_json(policy.routes), "comment": comment},
            )
            stored = await repo.get_traffic(conn, model_id)
            return stored or policy

        result: TrafficPolicyRecord = await self._mutate(model_id, work)
        return result

    # --- paging helpers ----------------------------------------------------------------------------

    def _page(self, binding: str, page_size: int, page_token: str) -> tuple[int, int | None, str]:
        try:
            limit = resolve_page_size(page_size)
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        before = None
        if page_token:
            try:
                before = int(str(self._tokens.decode(page_token, binding)[0]))
            except (PageTokenError, ValueError, IndexError) as exc:
                raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc
        return limit, before, binding

    def _token(self, before: int | None, binding: str) -> str:
        return "" if before is None else self._tokens.encode([before], binding)


# --- rules ---------------------------------------------------------------------------------------------


def _require_policy(model: ModelRecord, *, stages: bool = False, aliases: bool = False) -> None:
    policy = PromotionPolicy(model.promotion_policy)
    if (stages and not policy.allows_stages) or (aliases and not policy.allows_aliases):
        what = "stage transitions" if stages else "alias and traffic changes"
        name = f"models/{model.model_id}"
        raise errors.FailedPrecondition(
            f"{name} has promotion policy {policy.name}, which forbids {what}",
            "POLICY_FORBIDS_CHANGE",
            {"model": name, "policy": policy.name},
            [
                errors.PreconditionViolation(
                    "POLICY_FORBIDS_CHANGE", name, f"policy {policy.name} forbids {what}"
                )
            ],
        )


def _check_move(version: VersionRecord, stage: Stage) -> None:
    if stage not in ALLOWED_MOVES[version.stage]:
        name = version_name(version.model_id, version.version)
        allowed = ", ".join(s.name for s in sorted(ALLOWED_MOVES[version.stage]))
        raise errors.FailedPrecondition(
            f"{name} cannot move from {version.stage.name} to {stage.name}; allowed: {allowed}",
            "STAGE_TRANSITION_NOT_ALLOWED",
            {"model_version": name, "from": version.stage.name, "to": stage.name},
            [errors.PreconditionViolation("STAGE_TRANSITION_NOT_ALLOWED", name, f"allowed: {allowed}")],
        )


async def _check_can_archive(conn: Connection, version: VersionRecord) -> None:
    holders = [
        a.alias for a in await repo.list_aliases(conn, version.model_id) if a.version == version.version
    ]
    policy = await repo.get_traffic(conn, version.model_id)
    pinned = policy is not None and any(r.version == version.version for r in policy.routes)
    if holders or pinned:
        name = version_name(version.model_id, version.version)
        what = ", ".join(holders) + (" and a traffic route" if pinned else "")
        raise errors.FailedPrecondition(
            f"{name} still holds {what.lstrip(', ')}; move them before archiving it",
            "VERSION_IN_USE",
            {"model_version": name},
            [errors.PreconditionViolation("VERSION_IN_USE", name, f"held by {what.lstrip(', ')}")],
        )


def _check_not_archived(version: VersionRecord) -> None:
    if version.stage == Stage.ARCHIVED:
        name = version_name(version.model_id, version.version)
        raise errors.FailedPrecondition(
            f"{name} is ARCHIVED and cannot hold aliases or traffic",
            "VERSION_ARCHIVED",
            {"model_version": name},
            [
                errors.PreconditionViolation(
                    "VERSION_ARCHIVED", name, "archived versions hold no alias or traffic"
                )
            ],
        )


def _check_expected(model_id: str, change: AliasChangeSpec, current: int | None) -> None:
    if change.expected is None:
        return
    if (change.expected == ABSENT and current is None) or change.expected == current:
        return
    name = alias_name(model_id, change.alias)
    actual = version_name(model_id, current) if current is not None else "(none)"
    raise errors.Aborted(
        f"{name} points at {actual}, not the expected version; read it again and retry",
        "ALIAS_MOVED",
        {"alias": name, "current_model_version": actual if current is not None else ""},
    )


async def _check_alias_unused_by_traffic(conn: Connection, model_id: str, alias: str) -> None:
    if alias in await repo.aliases_used_by_traffic(conn, model_id):
        name = alias_name(model_id, alias)
        raise errors.FailedPrecondition(
            f"{name} is routed to by the traffic policy; change the policy first",
            "ALIAS_IN_USE",
            {"alias": name},
            [errors.PreconditionViolation("ALIAS_IN_USE", name, "used by the traffic policy")],
        )


async def _apply_stage(
    conn: Connection, version: VersionRecord, stage: Stage, revision: int, comment: str, caller: Caller
) -> None:
    await repo.set_stage(conn, version.model_id, version.version, stage)
    await repo.record_transition(
        conn,
        version.model_id,
        version.version,
        version.stage,
        stage,
        actor=caller.principal,
        comment=comment,
        revision=revision,
    )
    await repo.append_event(
        conn,
        revision,
        version.model_id,
        ChangeType.STAGE_CHANGED,
        caller.principal,
        version=version.version,
        payload={
            "digest": version.artifact_digest,
            "stage": int(stage),
            "previous_stage": int(version.stage),
        },
    )


async def _found_model(conn: Connection, model_id: str) -> ModelRecord:
    model = await model_repo.get(conn, model_id)
    if model is None:
        name = f"models/{model_id}"
        raise errors.NotFound(f"model {name} not found", "MODEL_NOT_FOUND", {"model": name})
    return model


async def _found_version(
    conn: Connection, model_id: str, version: int, *, lock: bool = False
) -> VersionRecord:
    record = await version_repo.get(conn, model_id, version, lock=lock)
    if record is None:
        name = version_name(model_id, version)
        raise errors.NotFound(f"model version {name} not found", "VERSION_NOT_FOUND", {"model_version": name})
    return record


def _alias_not_found(model_id: str, alias: str) -> errors.NotFound:
    name = alias_name(model_id, alias)
    return errors.NotFound(f"alias {name} not found", "ALIAS_NOT_FOUND", {"alias": name})


def _found_alias(record: AliasRecord | None, model_id: str, alias: str) -> AliasRecord:
    if record is None:
        raise _alias_not_found(model_id, alias)
    return record


async def _resolve_ref(
    conn: Connection, ref: VersionRef, *, lock: bool = False, aliases: dict[str, AliasRecord] | None = None
) -> VersionRecord:
    """The version a reference names; `models/m@alias` follows the alias."""
    if ref.version is not None:
        return await _found_version(conn, ref.model_id, ref.version, lock=lock)
    assert ref.alias is not None
    record = (
        aliases.get(ref.alias) if aliases is not None else await repo.get_alias(conn, ref.model_id, ref.alias)
    )
    record = _found_alias(record, ref.model_id, ref.alias)
    return await _found_version(conn, ref.model_id, record.version, lock=lock)


async def resolve_ref(conn: Connection, ref: VersionRef) -> VersionRecord:
    """Public form of _resolve_ref for other domain services."""
    return await _resolve_ref(conn, ref)
