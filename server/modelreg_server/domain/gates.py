"""Promotion gates: their configuration, dry runs, and the guard `Lifecycle` calls before a guarded move.

A guarded move is entering PRODUCTION or setting a protected alias. The guard runs inside the move's
transaction with the model row locked: it refuses the move when approvals are required and none were
given (APPROVAL_REQUIRED) or when any rule fails (PROMOTION_GATES_FAILED), listing every failure; when an
approved promotion request is executed it marks the request EXECUTED in that same transaction. It also
stamps the retention period in force on the version (see `retention`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from modelreg_server.domain import audit, errors
from modelreg_server.domain import retention as retention_rules
from modelreg_server.domain.gate_rules import (
    CHAMPION_ALIAS,
    Baselines,
    Rule,
    RuleResult,
    evaluate,
    needs_champion,
    needs_production,
    needs_signatures,
    rule_to_json,
)
from modelreg_server.domain.governance_records import (
    GatesRecord,
    PromotionRequestRecord,
    RequestState,
    Target,
)
from modelreg_server.domain.lifecycle import resolve_ref
from modelreg_server.domain.names import VersionRef, model_name, version_name
from modelreg_server.domain.records import Caller, ModelRecord, Stage, VersionRecord
from modelreg_server.storage import governance_repo as repo
from modelreg_server.storage import lifecycle_repo, model_repo, version_repo
from modelreg_server.storage.db import Connection, Database

APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
GATES_FAILED = "PROMOTION_GATES_FAILED"


def gates_name(model_id: str) -> str:
    """`models/{model}/promotionGates`."""
    return f"models/{model_id}/promotionGates"


def gates_etag(gates: GatesRecord) -> str:
    """Opaque etag of the gates' current state."""
    stamp = gates.update_time.isoformat() if gates.update_time else ""
    state = f"{gates.model_id}:{gates.revision}:{stamp}"
    return '"' + hashlib.blake2b(state.encode(), digest_size=8).hexdigest() + '"'


def check_target(model: ModelRecord, target: Target) -> None:
    """A guarded target: PRODUCTION, or an alias the model protects."""
    if target.alias is None:
        if target.stage != Stage.PRODUCTION:
            raise errors.invalid("target.stage", "only STAGE_PRODUCTION is guarded")
        return
    if target.alias not in model.protected_aliases:
        name = model_name(model.model_id)
        raise errors.FailedPrecondition(
            f"alias {target.alias} of {name} is not protected: moving it needs neither gates nor approvals",
            "ALIAS_NOT_PROTECTED",
            {"model": name, "alias": target.alias},
            [
                errors.PreconditionViolation(
                    "ALIAS_NOT_PROTECTED", name, f"protects {list(model.protected_aliases)}"
                )
            ],
        )


@dataclass(frozen=True)
class Verdict:
    """What the gates say about one version and target."""

    version: VersionRecord
    target: Target
    results: list[RuleResult]
    required_approvals: int
    champion: VersionRecord | None
    production: VersionRecord | None

    @property
    def passed(self) -> bool:
        """Whether every rule passed."""
        return all(r.passed for r in self.results)


async def load_baselines(conn: Connection, model_id: str, version: int, rules: Sequence[Rule]) -> Baselines:
    """The champion (the `champion` alias, else the PRODUCTION version), the PRODUCTION version and the
    candidate's verified signature keys, as far as the rules need them."""
    champion = production = None
    keys: frozenset[str] = frozenset()
    if needs_champion(rules) or needs_production(rules):
        production_number = await lifecycle_repo.production_version(conn, model_id)
        if production_number is not None:
            production = await version_repo.get(conn, model_id, production_number)
        if needs_champion(rules):
            alias = await lifecycle_repo.get_alias(conn, model_id, CHAMPION_ALIAS)
            champion = production if alias is None else await version_repo.get(conn, model_id, alias.version)
    if needs_signatures(rules):
        keys = await repo.verified_key_ids(conn, model_id, version)
    return Baselines(champion, production, keys)


class PromotionGates:
    """Gate configuration and evaluation; the `PromotionGuard` of `Lifecycle`."""

    def __init__(self, db: Database, *, retention: timedelta) -> None:
        self._db = db
        self._retention = max(retention, timedelta(0))

    # --- configuration -----------------------------------------------------------------------------

    async def get(self, model_id: str) -> GatesRecord:
        """The model's gates (empty when never configured), or NOT_FOUND for the model."""
        async with self._db.connection() as conn:
            await _found_model(conn, model_id)
            return await repo.get_gates(conn, model_id)

    async def update(self, model_id: str, changes: dict[str, Any], etag: str, caller: Caller) -> GatesRecord:
        """Replaces `rules`, `required_approvals` and/or `request_ttl` if the etag (when given) matches."""

        async def work(conn: Connection) -> GatesRecord:
            await _found_model(conn, model_id, lock=True)  # serialises with promotions of the model
            current = await repo.get_gates(conn, model_id)
            if etag and etag != gates_etag(current):
                name = gates_name(model_id)
                raise errors.Aborted(
                    f"etag mismatch for {name}: it changed since you read it; get it again and retry",
                    "ETAG_MISMATCH",
                    {"resource": name, "current_etag": gates_etag(current)},
                )
            if not changes:
                return current
            wanted = replace(current, **changes)
            updated = await repo.put_gates(
                conn, model_id, wanted.rules, wanted.required_approvals, wanted.request_ttl, caller.principal
            )
            await audit.record(
                conn, caller, gates_name(model_id), before=_summary(current), after=_summary(updated)
            )
            return updated

        return await self._db.transact(work)

    # --- evaluation --------------------------------------------------------------------------------

    async def dry_run(self, ref: VersionRef, target: Target) -> Verdict:
        """Evaluates the gates for a version and target, changing nothing."""

        async def work(conn: Connection) -> Verdict:
            model = await _found_model(conn, ref.model_id)
            check_target(model, target)
            version = await resolve_ref(conn, ref)
            gates = await repo.get_gates(conn, model.model_id)
            baselines = await load_baselines(conn, model.model_id, version.version, gates.rules)
            results = evaluate(gates.rules, version, baselines)
            return Verdict(
                version, target, results, gates.required_approvals, baselines.champion, baselines.production
            )

        # One snapshot for the version, its baselines and the rules.
        return await self._db.transact(work, isolation="repeatable_read")

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
        """The PromotionGuard: raises FailedPrecondition listing every failed check, else lets the move go."""
        target = Target(stage, alias)
        name = version_name(version.model_id, version.version)
        gates = await repo.get_gates(conn, model.model_id)
        violations: list[errors.PreconditionViolation] = []
        request = None
        if approval_id is not None:
            request = await _approved_request(conn, model.model_id, approval_id, version, target)
        elif gates.required_approvals > 0:
            violations.append(
                errors.PreconditionViolation(
                    APPROVAL_REQUIRED,
                    name,
                    f"{model_name(model.model_id)} requires {gates.required_approvals} approval(s) to move a "
                    f"version to {target}: ask for them with GovernanceService.RequestPromotion",
                )
            )
        baselines = await load_baselines(conn, model.model_id, version.version, gates.rules)
        for result in evaluate(gates.rules, version, baselines):
            if not result.passed:
                violations.append(errors.PreconditionViolation(result.kind, name, result.message))
        if violations:
            reason = APPROVAL_REQUIRED if violations[0].type == APPROVAL_REQUIRED else GATES_FAILED
            summary = "; ".join(f"{v.type}: {v.description}" for v in violations[:5])
            more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
            raise errors.FailedPrecondition(
                f"{name} cannot move to {target}: {summary}{more}",
                reason,
                {"model_version": name, "target": str(target), "failed_checks": str(len(violations))},
                violations,
            )
        if request is not None:
            await repo.set_state(
                conn,
                request.request_id,
                RequestState.EXECUTED,
                expected=RequestState.APPROVED,
                message=f"executed by {caller.principal}",
            )
            await audit.record(
                conn, caller, request.name, before={"state": "APPROVED"}, after={"state": "EXECUTED"}
            )
        await retention_rules.stamp(conn, model.model_id, version.version, self._retention)


async def _approved_request(
    conn: Connection, model_id: str, approval_id: str, version: VersionRecord, target: Target
) -> PromotionRequestRecord:
    """The APPROVED request `approval_id` for exactly this move, locked; FAILED_PRECONDITION otherwise."""
    request = None
    if approval_id.isdigit():
        request = await repo.get_request(conn, model_id, int(approval_id), lock=True)
    if (
        request is None
        or request.state != RequestState.APPROVED
        or request.version != version.version
        or request.target != target
    ):
        subject = version_name(model_id, version.version)
        raise errors.FailedPrecondition(
            f"approval {approval_id!r} is not an approved promotion request for moving {subject} to {target}",
            "APPROVAL_INVALID",
            {"model_version": subject, "approval_id": approval_id},
            [errors.PreconditionViolation("APPROVAL_INVALID", subject, "no matching approved request")],
        )
    return request


async def _found_model(conn: Connection, model_id: str, *, lock: bool = False) -> ModelRecord:
    model = await model_repo.get(conn, model_id, lock=lock)
    if model is None:
        name = model_name(model_id)
        raise errors.NotFound(f"model {name} not found", "MODEL_NOT_FOUND", {"model": name})
    return model


def _summary(gates: GatesRecord) -> dict[str, Any]:
    return {
        "rules": [rule_to_json(r) for r in gates.rules],
        "required_approvals": gates.required_approvals,
        "request_ttl_s": gates.request_ttl.total_seconds(),
    }
