"""Catalog rules: models and versions, their transactions, etags, idempotency and listings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from modelreg_server.domain import audit, errors, retention
from modelreg_server.domain.artifacts import Artifacts, lock_package
from modelreg_server.domain.filtering import FilterError, Node, parse_filter
from modelreg_server.domain.lifecycle import CommitHook, resolve_ref
from modelreg_server.domain.manifest import Manifest
from modelreg_server.domain.names import VersionRef, model_name, parse_version_name, version_name
from modelreg_server.domain.ordering import OrderByError, OrderKey, parse_order_by
from modelreg_server.domain.pagination import PageSizeError, PageTokenCodec, PageTokenError, resolve_page_size
from modelreg_server.domain.records import (
    Caller,
    ChangeType,
    ModelFields,
    ModelRecord,
    NewVersion,
    Page,
    VersionRecord,
)
from modelreg_server.storage import lifecycle_repo, model_repo, version_repo
from modelreg_server.storage.db import Connection, Database
from modelreg_server.storage.listing import ListingSpec

DEFAULT_MODEL_ORDER = (OrderKey(("name",), False),)
DEFAULT_VERSION_ORDER = (OrderKey(("create_time",), True),)


def model_etag(model: ModelRecord) -> str:
    """Opaque etag of a model's current state."""
    return _etag(f"{model.uid}:{model.revision}")


def version_etag(version: VersionRecord) -> str:
    """Opaque etag of a version's current state."""
    return _etag(f"{version.model_id}/{version.version}:{version.revision}:{version.stage}")


def _etag(state: str) -> str:
    return '"' + hashlib.blake2b(state.encode(), digest_size=8).hexdigest() + '"'


def _check_etag(given: str, current: str, resource: str) -> None:
    if given and given != current:
        raise errors.Aborted(
            f"etag mismatch for {resource}: it changed since you read it; get it again and retry",
            "ETAG_MISMATCH",
            {"resource": resource, "current_etag": current},
        )


@dataclass(frozen=True)
class ListQuery:
    """The listing-related fields of a List request."""

    page_size: int
    page_token: str
    filter: str
    order_by: str


@dataclass(frozen=True)
class _ParsedQuery:
    limit: int
    node: Node | None
    order: Sequence[OrderKey]
    after: list[object] | None
    binding: str


class Catalog:
    """Models and versions."""

    def __init__(
        self,
        db: Database,
        tokens: PageTokenCodec,
        on_commit: CommitHook | None = None,
        artifacts: Artifacts | None = None,
    ) -> None:
        self._db = db
        self._tokens = tokens
        self._on_commit = on_commit
        self._artifacts = artifacts

    def _committed(self, model_id: str, revision: int | None) -> None:
        if revision is not None and self._on_commit is not None:
            self._on_commit(model_id, revision)

    # --- models -----------------------------------------------------------------------------------------

    async def create_model(self, model_id: str, fields: ModelFields, caller: Caller) -> ModelRecord:
        """Creates `models/{model_id}`; ALREADY_EXISTS when taken."""

        async def work(conn: Connection) -> ModelRecord:
            created = await model_repo.insert(conn, model_id, fields)
            await audit.record(conn, caller, model_name(model_id), after=_model_summary(created))
            await _publish(conn, model_id, ChangeType.MODEL_CREATED, caller, payload=_model_summary(created))
            return created

        return await self._db.transact(work)

    async def get_model(self, model_id: str) -> ModelRecord:
        """The model or NOT_FOUND."""
        async with self._db.connection() as conn:
            return _found_model(await model_repo.get(conn, model_id), model_id)

    async def update_model(
        self, model_id: str, changes: dict[str, Any], etag: str, caller: Caller
    ) -> ModelRecord:
        """Applies changes to mutable fields if the etag (when given) still matches. A promotion-policy
        change is published on the change feed."""
        revision: list[int] = []

        async def work(conn: Connection) -> ModelRecord:
            revision.clear()
            current = _found_model(await model_repo.get(conn, model_id, lock=True), model_id)
            _check_etag(etag, model_etag(current), model_name(model_id))
            if not changes:
                return current
            updated = await model_repo.update(conn, model_id, changes)
            await audit.record(
                conn,
                caller,
                model_name(model_id),
                before=_model_summary(current),
                after=_model_summary(updated),
            )
            await _publish(conn, model_id, ChangeType.MODEL_UPDATED, caller, payload=_model_summary(updated))
            if updated.promotion_policy != current.promotion_policy:
                rev = await lifecycle_repo.allocate_revisions(conn, 1)
                await lifecycle_repo.append_event(
                    conn,
                    rev,
                    model_id,
                    ChangeType.POLICY_CHANGED,
                    caller.principal,
                    payload={
                        "policy": int(updated.promotion_policy),
                        "previous_policy": int(current.promotion_policy),
                    },
                )
                revision.append(rev)
            return updated

        result = await self._db.transact(work)
        self._committed(model_id, revision[0] if revision else None)
        return result

    async def delete_model(self, model_id: str, etag: str, force: bool, caller: Caller) -> None:
        """Deletes a model; refused while it has versions unless forced. Watchers learn it from the feed."""
        revision: list[int] = []

        async def work(conn: Connection) -> None:
            revision.clear()
            current = _found_model(await model_repo.get(conn, model_id, lock=True), model_id)
            _check_etag(etag, model_etag(current), model_name(model_id))
            if not force and await model_repo.has_versions(conn, model_id):
                name = model_name(model_id)
                raise errors.FailedPrecondition(
                    f"model {name} still has {current.latest_version} version(s); delete with force=true",
                    "MODEL_HAS_VERSIONS",
                    {"model": name},
                    [errors.PreconditionViolation("MODEL_HAS_VERSIONS", name, "the model has versions")],
                )
            await retention.check_deletable(conn, model_id)
            await model_repo.delete(conn, model_id)
            await audit.record(
                conn, caller, model_name(model_id), before=_model_summary(current), force=force
            )
            rev = await lifecycle_repo.allocate_revisions(conn, 1)
            await lifecycle_repo.append_event(conn, rev, model_id, ChangeType.MODEL_DELETED, caller.principal)
            revision.append(rev)

        await self._db.transact(work)
        self._committed(model_id, revision[0] if revision else None)

    async def list_models(self, query: ListQuery) -> Page[ModelRecord]:
        """One page of models."""
        parsed = self._parse_query(query, model_repo.LISTING, DEFAULT_MODEL_ORDER, binding="models")
        async with self._db.connection() as conn:
            with _filter_errors():
                items, cursor = await model_repo.list_page(
                    conn, filter_node=parsed.node, order=parsed.order, after=parsed.after, limit=parsed.limit
                )
        return Page(items, self._next_token(cursor, parsed.binding))

    # --- versions ---------------------------------------------------------------------------------------

    async def create_version(
        self,
        model_id: str,
        new: NewVersion,
        *,
        caller: Caller,
        request_id: str | None,
    ) -> VersionRecord:
        """Registers the next version of a model. A repeated request id returns the first result."""
        # The details bytes repeat the jsonb fields (and are not canonical), so they stay out of the hash.
        fingerprint = {k: v for k, v in asdict(new).items() if k != "details"}
        request_hash = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).digest()
        parents = [parse_version_name(p, "model_version.lineage.parent_versions") for p in _parents(new)]
        manifest = await self._verify_package(new.artifact_digest) if new.artifact_digest else None

        async def work(conn: Connection) -> VersionRecord:
            # The row lock serialises registrations of one model across every replica, which makes the
            # number allocation gap-free and the request-id check race-free.
            _found_model(await model_repo.get(conn, model_id, lock=True), model_id)
            if request_id:
                earlier = await version_repo.find_by_request_id(conn, model_id, request_id)
                if earlier is not None:
                    return _replay(earlier, request_hash, request_id)
            await _check_parents_exist(conn, parents)
            if manifest is not None:
                # Share-locks the package's blob rows: garbage collection cannot delete them under us.
                await lock_package(conn, new.artifact_digest, manifest)
            number = await model_repo.allocate_version(conn, model_id)
            created = await version_repo.insert(
                conn,
                model_id,
                number,
                new,
                creator=caller.principal,
                request_id=request_id,
                request_hash=request_hash,
            )
            await audit.record(
                conn,
                caller,
                version_name(model_id, number),
                after={"run_id": new.run_id, "artifact_digest": new.artifact_digest, "metrics": new.metrics},
            )
            await _publish(
                conn,
                model_id,
                ChangeType.VERSION_CREATED,
                caller,
                version=number,
                payload={"digest": new.artifact_digest, "stage": int(created.stage), "run_id": new.run_id},
            )
            return created

        return await self._db.transact(work)

    async def _verify_package(self, digest: str) -> Manifest:
        if self._artifacts is None:
            raise errors.FailedPrecondition(
                "artifact storage is not configured (set MODELREG_S3_ENDPOINT), so artifact_digest cannot be "
                "checked",
                "STORAGE_NOT_CONFIGURED",
            )
        try:
            return await self._artifacts.verify_package(digest)
        except errors.NotFound as exc:
            # The manifest is one more missing blob: the version would point at bytes that are not there.
            raise errors.FailedPrecondition(
                f"artifact_digest {digest} names no uploaded manifest; upload the package first",
                "BLOBS_MISSING",
                {"missing": digest},
                [errors.PreconditionViolation("BLOB_MISSING", digest, "no manifest blob with this digest")],
            ) from exc

    async def get_version(self, ref: VersionRef) -> VersionRecord:
        """The version a name or `models/m@alias` reference points at, or NOT_FOUND."""
        async with self._db.connection() as conn:
            if ref.version is None:
                return await resolve_ref(conn, ref)
            return _found_version(
                await version_repo.get(conn, ref.model_id, ref.version), ref.model_id, ref.version
            )

    async def update_version(
        self, model_id: str, version: int, changes: dict[str, Any], etag: str, caller: Caller
    ) -> VersionRecord:
        """Changes description or labels of a version if the etag (when given) still matches."""

        async def work(conn: Connection) -> VersionRecord:
            current = _found_version(
                await version_repo.get(conn, model_id, version, lock=True), model_id, version
            )
            _check_etag(etag, version_etag(current), version_name(model_id, version))
            if not changes:
                return current
            updated = await version_repo.update(conn, model_id, version, changes)
            await audit.record(
                conn,
                caller,
                version_name(model_id, version),
                before={"description": current.description, "labels": current.labels},
                after={"description": updated.description, "labels": updated.labels},
            )
            await _publish(
                conn,
                model_id,
                ChangeType.VERSION_UPDATED,
                caller,
                version=version,
                payload={
                    "digest": updated.artifact_digest,
                    "stage": int(updated.stage),
                    "labels": updated.labels,
                },
            )
            return updated

        return await self._db.transact(work)

    async def list_versions(self, model_id: str | None, query: ListQuery) -> Page[VersionRecord]:
        """One page of versions of a model, or of every model when model_id is None."""
        parent = model_name(model_id) if model_id else "models/-"
        parsed = self._parse_query(query, version_repo.LISTING, DEFAULT_VERSION_ORDER, binding=parent)

        async with self._db.connection() as conn:
            with _filter_errors():
                items, cursor = await version_repo.list_page(
                    conn,
                    model_id=model_id,
                    filter_node=parsed.node,
                    order=parsed.order,
                    after=parsed.after,
                    limit=parsed.limit,
                )
            # A page with rows proves the model exists; only an empty one needs the second query.
            if not items and model_id is not None:
                _found_model(await model_repo.get(conn, model_id), model_id)
        return Page(items, self._next_token(cursor, parsed.binding))

    # --- helpers ----------------------------------------------------------------------------------------

    def _parse_query(
        self, query: ListQuery, spec: ListingSpec, default_order: Sequence[OrderKey], *, binding: str
    ) -> _ParsedQuery:
        try:
            limit = resolve_page_size(query.page_size)
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        try:
            node = parse_filter(query.filter)
        except FilterError as exc:
            raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc
        try:
            order = parse_order_by(query.order_by, spec.sortable) if query.order_by.strip() else default_order
        except OrderByError as exc:
            raise errors.invalid("order_by", str(exc), "INVALID_ORDER_BY") from exc
        full_binding = f"{binding}\x00{query.filter}\x00{query.order_by}"
        after = None
        if query.page_token:
            try:
                after = self._tokens.decode(query.page_token, full_binding)
            except PageTokenError as exc:
                raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc
        return _ParsedQuery(limit, node, order, after, full_binding)

    def _next_token(self, cursor: list[object] | None, binding: str) -> str:
        return "" if cursor is None else self._tokens.encode(cursor, binding)


@contextmanager
def _filter_errors() -> Iterator[None]:
    """Filters name fields only the storage layer knows; its FilterErrors are the client's mistake."""
    try:
        yield
    except FilterError as exc:
        raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc


async def _publish(
    conn: Connection,
    model_id: str,
    change_type: ChangeType,
    caller: Caller,
    *,
    version: int | None = None,
    payload: dict[str, Any],
) -> None:
    """Writes a catalog change to the event log (the outbox webhooks deliver from)."""
    revision = await lifecycle_repo.allocate_revisions(conn, 1)
    await lifecycle_repo.append_event(
        conn, revision, model_id, change_type, caller.principal, version=version, payload=payload
    )


def _model_summary(model: ModelRecord) -> dict[str, Any]:
    return {
        "description": model.description[:200],
        "labels": model.labels,
        "owner_team": model.owner_team,
        "promotion_policy": model.promotion_policy.name,
        "protected_aliases": list(model.protected_aliases),
    }


def _parents(new: NewVersion) -> list[str]:
    parents = new.lineage.get("parent_versions", [])
    return [str(p) for p in parents] if isinstance(parents, list) else []


async def _check_parents_exist(conn: Connection, parents: list[tuple[str, int]]) -> None:
    missing = [version_name(m, v) for m, v in parents if await version_repo.get(conn, m, v) is None]
    if missing:
        raise errors.FailedPrecondition(
            f"lineage names parent versions that do not exist: {', '.join(missing)}",
            "PARENT_VERSION_NOT_FOUND",
            {"missing": ",".join(missing)},
            [
                errors.PreconditionViolation("PARENT_VERSION_NOT_FOUND", name, "no such version")
                for name in missing
            ],
        )


def _replay(
    earlier: tuple[VersionRecord, bytes | None], request_hash: bytes | None, request_id: str
) -> VersionRecord:
    record, stored_hash = earlier
    if stored_hash != request_hash:
        raise errors.AlreadyExists(
            f"request_id {request_id!r} was already used for a different version "
            f"({version_name(record.model_id, record.version)})",
            "REQUEST_ID_REUSED",
            {"request_id": request_id, "model_version": version_name(record.model_id, record.version)},
        )
    return record


def _found_model(model: ModelRecord | None, model_id: str) -> ModelRecord:
    if model is None:
        name = model_name(model_id)
        raise errors.NotFound(f"model {name} not found", "MODEL_NOT_FOUND", {"model": name})
    return model


def _found_version(version: VersionRecord | None, model_id: str, number: int) -> VersionRecord:
    if version is None:
        name = version_name(model_id, number)
        raise errors.NotFound(f"model version {name} not found", "VERSION_NOT_FOUND", {"model_version": name})
    return version
