"""AliasState, the pure part of the alias resolvers: snapshots, changes, deletions, traffic and routing,
plus the request builders and reconnect helpers the resolvers and the lifecycle SDK methods rely on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from modelreg import FailedPrecondition, NotFound, _core
from modelreg.resolver import AliasState, _Backoff, _split_addresses
from modelreg.routing import pick_route
from modelreg.v1 import lifecycle_service_pb2 as lc
from modelreg.v1 import model_pb2

NONE, STAGING, PRODUCTION, ARCHIVED = (
    model_pb2.STAGE_NONE,
    model_pb2.STAGE_STAGING,
    model_pb2.STAGE_PRODUCTION,
    model_pb2.STAGE_ARCHIVED,
)


def resolution(model: str, version: int, stage: model_pb2.Stage.ValueType = NONE) -> lc.ResolveAliasResponse:
    return lc.ResolveAliasResponse(
        model_version=f"models/{model}/versions/{version}",
        version=version,
        artifact_digest=f"sha256:{version:064x}",
        stage=stage,
    )


def alias_set(
    revision: int, model: str, alias: str, version: int, stage: model_pb2.Stage.ValueType = NONE
) -> lc.Change:
    return lc.Change(
        revision=revision,
        type=lc.CHANGE_TYPE_ALIAS_SET,
        model=f"models/{model}",
        alias=f"models/{model}/aliases/{alias}",
        resolution=resolution(model, version, stage),
    )


def alias_deleted(revision: int, model: str, alias: str) -> lc.Change:
    return lc.Change(
        revision=revision,
        type=lc.CHANGE_TYPE_ALIAS_DELETED,
        model=f"models/{model}",
        alias=f"models/{model}/aliases/{alias}",
    )


def stage_changed(
    revision: int,
    model: str,
    version: int,
    stage: model_pb2.Stage.ValueType,
    previous: model_pb2.Stage.ValueType = model_pb2.STAGE_UNSPECIFIED,
) -> lc.Change:
    return lc.Change(
        revision=revision,
        type=lc.CHANGE_TYPE_STAGE_CHANGED,
        model=f"models/{model}",
        resolution=resolution(model, version, stage),
        previous_stage=previous,
    )


def traffic(revision: int, model: str, *routes: lc.TrafficRoute) -> lc.Change:
    return lc.Change(
        revision=revision,
        type=lc.CHANGE_TYPE_TRAFFIC_CHANGED,
        model=f"models/{model}",
        traffic_policy=lc.TrafficPolicy(
            name=f"models/{model}/trafficPolicy", routes=routes, revision=revision
        ),
    )


def model_deleted(revision: int, model: str) -> lc.Change:
    return lc.Change(revision=revision, type=lc.CHANGE_TYPE_MODEL_DELETED, model=f"models/{model}")


def message(
    *changes: lc.Change,
    revision: int | None = None,
    snapshot: bool = False,
    reset: bool = False,
    heartbeat: bool = False,
) -> lc.WatchAliasesResponse:
    if revision is None:
        revision = max(c.revision for c in changes)
    return lc.WatchAliasesResponse(
        changes=changes, revision=revision, snapshot=snapshot, reset=reset, heartbeat=heartbeat
    )


def snapshot_state(*changes: lc.Change, revision: int) -> AliasState:
    state = AliasState()
    state.apply(message(*changes, revision=revision, snapshot=True, reset=True))
    state.apply(message(revision=revision, heartbeat=True))
    return state


def version_of(state: AliasState, model: str, alias: str) -> int:
    return state.resolve(model, alias).version


# --- snapshots -----------------------------------------------------------------------------------------


def test_a_snapshot_becomes_visible_at_the_heartbeat_that_ends_it() -> None:
    state = AliasState()
    first = state.apply(
        message(alias_set(10, "fraud", "champion", 1), revision=10, snapshot=True, reset=True)
    )
    second = state.apply(
        message(
            alias_set(10, "fraud", "canary", 2),
            traffic(10, "fraud", lc.TrafficRoute(alias="champion", weight=100)),
            stage_changed(10, "fraud", 1, PRODUCTION),
            revision=10,
            snapshot=True,
        )
    )
    assert first == second == []
    assert not state.ready and state.revision == 0
    with pytest.raises(NotFound):
        state.resolve("fraud", "champion")

    applied = state.apply(message(revision=10, heartbeat=True))
    assert state.ready and state.revision == 10
    assert [c.type for c in applied] == [
        lc.CHANGE_TYPE_ALIAS_SET,
        lc.CHANGE_TYPE_ALIAS_SET,
        lc.CHANGE_TYPE_TRAFFIC_CHANGED,
        lc.CHANGE_TYPE_STAGE_CHANGED,
    ]
    champion = state.resolve("models/fraud", "champion")
    assert (champion.version, champion.artifact_digest, champion.stage, champion.revision) == (
        1,
        f"sha256:{1:064x}",
        PRODUCTION,  # the snapshot's stage entry updates the alias target
        10,
    )
    assert version_of(state, "fraud", "canary") == 2
    production = state.production_version("fraud")
    assert production is not None and production.version == 1
    policy = state.traffic_policy("fraud")
    assert policy is not None and [r.alias for r in policy.routes] == ["champion"]


def test_an_empty_snapshot_makes_the_state_ready() -> None:
    state = snapshot_state(revision=7)
    assert state.ready and state.revision == 7
    assert state.aliases("fraud") == {}


def test_a_reset_replaces_the_state_and_reports_only_the_difference() -> None:
    state = snapshot_state(
        alias_set(10, "fraud", "champion", 1),
        alias_set(10, "fraud", "canary", 2),
        alias_set(10, "churn", "champion", 5),
        traffic(10, "churn", lc.TrafficRoute(alias="champion", weight=100)),
        revision=10,
    )
    state.apply(message(alias_set(11, "fraud", "champion", 3), revision=11))
    # Reconnected to a registry that lost the changes since 11: a new snapshot at 20.
    state.apply(
        message(
            alias_set(20, "fraud", "champion", 3),
            alias_set(20, "fraud", "canary", 4),
            alias_set(20, "fraud", "shadow", 1),
            revision=20,
            snapshot=True,
            reset=True,
        )
    )
    assert version_of(state, "fraud", "canary") == 2  # still the old state while the snapshot arrives
    news = state.apply(message(revision=20, heartbeat=True))
    described = [(lc.ChangeType.Name(c.type), c.model, c.alias.rpartition("/")[2]) for c in news]
    assert described == [
        ("CHANGE_TYPE_ALIAS_SET", "models/fraud", "canary"),
        ("CHANGE_TYPE_ALIAS_SET", "models/fraud", "shadow"),
        ("CHANGE_TYPE_ALIAS_DELETED", "models/churn", "champion"),
        ("CHANGE_TYPE_TRAFFIC_CHANGED", "models/churn", ""),
    ]
    assert all(c.revision == 20 for c in news)
    assert not news[-1].traffic_policy.routes
    assert {a: r.version for a, r in state.aliases("fraud").items()} == {
        "champion": 3,
        "canary": 4,
        "shadow": 1,
    }
    with pytest.raises(NotFound):
        state.resolve("churn", "champion")
    assert state.traffic_policy("churn") is None
    assert state.revision == 20


def test_a_reset_may_move_the_revision_back() -> None:
    state = snapshot_state(alias_set(50, "fraud", "champion", 1), revision=50)
    state.apply(message(alias_set(30, "fraud", "champion", 2), revision=30, snapshot=True, reset=True))
    state.apply(message(revision=30, heartbeat=True))
    assert state.revision == 30
    # Changes after the restored revision are applied, not skipped as already seen.
    assert [c.revision for c in state.apply(message(alias_set(31, "fraud", "champion", 3)))] == [31]
    assert version_of(state, "fraud", "champion") == 3


def test_an_interrupted_snapshot_is_dropped_and_asked_for_again() -> None:
    state = snapshot_state(alias_set(10, "fraud", "champion", 1), revision=10)
    state.apply(message(alias_set(40, "fraud", "champion", 9), revision=40, snapshot=True, reset=True))
    state.interrupted()
    assert state.revision == 10  # resuming asks for everything after 10 again
    assert version_of(state, "fraud", "champion") == 1
    # A heartbeat of the next stream must not commit the dropped snapshot.
    assert state.apply(message(revision=12, heartbeat=True)) == []
    assert version_of(state, "fraud", "champion") == 1


# --- changes -------------------------------------------------------------------------------------------


def test_alias_changes_apply_in_order_and_duplicates_are_skipped() -> None:
    state = snapshot_state(alias_set(10, "fraud", "champion", 1), revision=10)
    applied = state.apply(
        message(alias_set(11, "fraud", "champion", 2), alias_set(12, "fraud", "canary", 3), revision=12)
    )
    assert [c.revision for c in applied] == [11, 12]
    assert (version_of(state, "fraud", "champion"), version_of(state, "fraud", "canary")) == (2, 3)
    assert state.revision == 12
    # A replay overlapping what was applied (e.g. after a reconnect) changes nothing twice.
    replay = state.apply(
        message(alias_set(12, "fraud", "canary", 3), alias_deleted(13, "fraud", "canary"), revision=13)
    )
    assert [c.revision for c in replay] == [13]
    with pytest.raises(NotFound) as missing:
        state.resolve("fraud", "canary")
    assert missing.value.reason == "ALIAS_NOT_FOUND"
    assert missing.value.metadata == {"alias": "models/fraud/aliases/canary"}


def test_heartbeats_advance_the_revision_and_a_late_change_still_applies() -> None:
    state = snapshot_state(revision=10)
    assert state.apply(message(revision=25, heartbeat=True)) == []
    assert state.revision == 25
    # A change the server sent after a heartbeat that already covered its revision is applied anyway.
    assert [c.revision for c in state.apply(message(alias_set(25, "fraud", "champion", 1)))] == [25]
    assert version_of(state, "fraud", "champion") == 1


def test_stage_changes_update_alias_targets_and_the_production_version() -> None:
    state = snapshot_state(
        alias_set(10, "fraud", "champion", 1, PRODUCTION),
        alias_set(10, "fraud", "also-one", 1, PRODUCTION),
        alias_set(10, "fraud", "canary", 2, STAGING),
        stage_changed(10, "fraud", 1, PRODUCTION),
        revision=10,
    )
    state.apply(
        message(
            stage_changed(11, "fraud", 1, ARCHIVED, PRODUCTION),
            stage_changed(12, "fraud", 2, PRODUCTION, STAGING),
        )
    )
    assert state.resolve("fraud", "champion").stage == ARCHIVED
    assert state.resolve("fraud", "also-one").stage == ARCHIVED
    assert state.resolve("fraud", "canary").stage == PRODUCTION
    production = state.production_version("fraud")
    assert production is not None and production.version == 2
    state.apply(message(stage_changed(13, "fraud", 2, STAGING, PRODUCTION)))
    assert state.production_version("fraud") is None
    # Moving another version out of a stage leaves the PRODUCTION version alone.
    state.apply(message(stage_changed(14, "fraud", 2, PRODUCTION, STAGING)))
    state.apply(message(stage_changed(15, "fraud", 3, NONE, STAGING)))
    production = state.production_version("fraud")
    assert production is not None and production.version == 2


def test_traffic_changes_set_and_remove_the_policy() -> None:
    state = snapshot_state(alias_set(10, "fraud", "champion", 1), revision=10)
    state.apply(message(traffic(11, "fraud", lc.TrafficRoute(alias="champion", weight=100))))
    assert state.traffic_policy("fraud") is not None
    removed = state.apply(message(traffic(12, "fraud")))
    assert [c.type for c in removed] == [lc.CHANGE_TYPE_TRAFFIC_CHANGED]
    assert state.traffic_policy("fraud") is None
    with pytest.raises(FailedPrecondition) as none:
        state.route("fraud", "user-1")
    assert none.value.reason == "NO_TRAFFIC_POLICY"


def test_model_deletion_drops_everything_of_that_model_only() -> None:
    state = snapshot_state(
        alias_set(10, "fraud", "champion", 1),
        alias_set(10, "churn", "champion", 4),
        traffic(10, "fraud", lc.TrafficRoute(alias="champion", weight=100)),
        stage_changed(10, "fraud", 1, PRODUCTION),
        revision=10,
    )
    state.apply(message(model_deleted(11, "fraud")))
    assert state.aliases("fraud") == {}
    assert state.traffic_policy("fraud") is None
    assert state.production_version("fraud") is None
    assert version_of(state, "churn", "champion") == 4
    # A model created again under the same id starts empty and fills up from its own changes.
    state.apply(message(alias_set(12, "fraud", "champion", 1)))
    assert version_of(state, "fraud", "champion") == 1


def test_policy_changes_are_reported_but_change_no_state() -> None:
    state = snapshot_state(alias_set(10, "fraud", "champion", 1), revision=10)
    change = lc.Change(revision=11, type=lc.CHANGE_TYPE_POLICY_CHANGED, model="models/fraud")
    assert state.apply(message(change)) == [change]
    assert state.aliases("fraud").keys() == {"champion"}
    assert state.revision == 11


def test_answers_are_copies_stamped_with_the_state_revision() -> None:
    state = snapshot_state(alias_set(10, "fraud", "champion", 1), revision=10)
    state.apply(message(revision=15, heartbeat=True))
    answer = state.resolve("fraud", "champion")
    assert answer.revision == 15
    answer.version = 99
    assert version_of(state, "fraud", "champion") == 1


# --- routing -------------------------------------------------------------------------------------------


def test_route_matches_pick_route_for_alias_and_version_routes() -> None:
    state = snapshot_state(
        alias_set(10, "fraud", "champion", 1),
        alias_set(10, "fraud", "canary", 2, STAGING),
        stage_changed(10, "fraud", 4, PRODUCTION),
        revision=10,
    )
    routes = [
        lc.TrafficRoute(alias="champion", weight=70),
        lc.TrafficRoute(alias="canary", weight=10),
        lc.TrafficRoute(model_version="models/fraud/versions/4", weight=10),
        lc.TrafficRoute(model_version="models/fraud/versions/7", weight=10),
    ]
    state.apply(message(traffic(11, "fraud", *routes)))
    expected_versions = [1, 2, 4, 7]
    seen = set()
    for i in range(2000):
        key = f"user-{i}"
        index = pick_route([r.weight for r in routes], "fraud", key)
        answer = state.route("fraud", key)
        assert answer.version == expected_versions[index], key
        assert answer.model_version == f"models/fraud/versions/{expected_versions[index]}"
        seen.add(index)
        if index == 1:
            assert answer.stage == STAGING and answer.artifact_digest
        elif index == 2:  # known from the stage change: full answer
            assert answer.stage == PRODUCTION and answer.artifact_digest == f"sha256:{4:064x}"
        elif index == 3:  # never seen locally: only the version
            assert (answer.stage, answer.artifact_digest) == (model_pb2.STAGE_UNSPECIFIED, "")
    assert seen == {0, 1, 2, 3}
    # Moving an alias moves its share.
    state.apply(message(alias_set(12, "fraud", "canary", 3)))
    canary_key = next(
        f"user-{i}" for i in range(2000) if pick_route([70, 10, 10, 10], "fraud", f"user-{i}") == 1
    )
    assert state.route("fraud", canary_key).version == 3


def test_route_to_an_unknown_alias_is_not_found() -> None:
    state = snapshot_state(traffic(10, "fraud", lc.TrafficRoute(alias="ghost", weight=100)), revision=10)
    with pytest.raises(NotFound):
        state.route("fraud", "k")


# --- thread safety -------------------------------------------------------------------------------------


def test_readers_never_see_half_of_a_message() -> None:
    state = snapshot_state(alias_set(1, "fraud", "a", 1), alias_set(1, "fraud", "b", 1), revision=1)
    stop = threading.Event()
    torn: list[dict[str, int]] = []

    def read() -> None:
        while not stop.is_set():
            seen = {alias: r.version for alias, r in state.aliases("fraud").items()}
            if len(set(seen.values())) != 1:
                torn.append(seen)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        revision = 1
        for version in range(2, 400):
            # One message moves both aliases, as an UpdateAliases transaction does.
            state.apply(
                message(
                    alias_set(revision + 1, "fraud", "a", version),
                    alias_set(revision + 2, "fraud", "b", version),
                )
            )
            revision += 2
            if version % 50 == 0:  # and now and then a whole new snapshot
                revision += 1
                state.apply(
                    message(
                        alias_set(revision, "fraud", "a", version),
                        revision=revision,
                        snapshot=True,
                        reset=True,
                    )
                )
                state.apply(
                    message(alias_set(revision, "fraud", "b", version), revision=revision, snapshot=True)
                )
                state.apply(message(revision=revision, heartbeat=True))
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert torn == []


# --- helpers of the resolvers and the SDK --------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_five_seconds() -> None:
    backoff = _Backoff()
    delays = [backoff.next_delay() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.1 <= delays[1] <= 0.2
    assert all(2.5 <= d <= 5.0 for d in delays[7:])
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_addresses_split_on_commas() -> None:
    assert _split_addresses("a:1, b:2,") == ["a:1", "b:2"]
    assert _split_addresses(["a:1", "b:2,c:3"]) == ["a:1", "b:2", "c:3"]
    with pytest.raises(ValueError, match="address"):
        _split_addresses(" , ")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("production", PRODUCTION),
        ("STAGING", STAGING),
        ("stage_archived", ARCHIVED),
        (model_pb2.STAGE_NONE, NONE),
    ],
)
def test_stage_values(given: model_pb2.Stage.ValueType | str, expected: int) -> None:
    assert _core.stage_value(given) == expected


@pytest.mark.parametrize("bad", ["prod", "", "unspecified", 0, 42])
def test_bad_stages(bad: model_pb2.Stage.ValueType | str) -> None:
    with pytest.raises(ValueError, match="stage"):
        _core.stage_value(bad)


def test_version_references() -> None:
    assert _core.version_reference("fraud/3") == "models/fraud/versions/3"
    assert _core.version_reference("fraud@champion") == "models/fraud@champion"
    assert _core.target_version_name("fraud", 3) == "models/fraud/versions/3"
    assert _core.target_version_name("models/fraud", "@canary") == "models/fraud@canary"
    assert _core.target_version_name("fraud", model_pb2.ModelVersion(name="models/fraud/versions/2")) == (
        "models/fraud/versions/2"
    )
    with pytest.raises(ValueError, match="not a version of"):
        _core.target_version_name("fraud", "churn/3")
    assert _core.expected_version_name("fraud", None) == ""
    assert _core.expected_version_name("fraud", _core.ABSENT) == "-"
    assert _core.expected_version_name("fraud", 2) == "models/fraud/versions/2"
    with pytest.raises(ValueError, match="alias"):
        _core.expected_version_name("fraud", "@champion")


def test_traffic_policy_requests() -> None:
    from_dict = _core.set_traffic_policy_request(
        "fraud", {"champion": 80, "3": 10, "@canary": 10}, comment="c"
    )
    from_list = _core.set_traffic_policy_request(
        "fraud", [("champion", 80), (3, 10), lc.TrafficRoute(alias="canary", weight=10)], comment="c"
    )
    assert from_dict == from_list
    assert from_dict.traffic_policy.name == "models/fraud/trafficPolicy"
    assert [r.WhichOneof("target") for r in from_dict.traffic_policy.routes] == [
        "alias",
        "model_version",
        "alias",
    ]
    assert not _core.set_traffic_policy_request("fraud", {}).traffic_policy.routes
    with pytest.raises(ValueError, match="alias"):
        _core.set_traffic_policy_request("fraud", {"Bad Alias": 100})


def test_alias_requests() -> None:
    update = _core.update_aliases_request(
        "fraud", {"champion": "@canary", "canary": None}, expected={"canary": 2}, comment="promote"
    )
    assert [(c.name, c.model_version, c.expected_model_version) for c in update.changes] == [
        ("models/fraud/aliases/champion", "models/fraud@canary", ""),
        ("models/fraud/aliases/canary", "", "models/fraud/versions/2"),
    ]
    with pytest.raises(ValueError, match="not changed"):
        _core.update_aliases_request("fraud", {"champion": 1}, expected={"canary": 2})
    assert _core.list_alias_history_request("fraud").name == "models/fraud"
    assert _core.list_alias_history_request("fraud", "champion").name == "models/fraud/aliases/champion"
    assert _core.list_stage_transitions_request("fraud/3").parent == "models/fraud/versions/3"
    batch = _core.batch_resolve_aliases_request([("fraud", "a"), "fraud@b", "models/x/aliases/c", "junk"])
    assert list(batch.names) == [
        "models/fraud/aliases/a",
        "models/fraud/aliases/b",
        "models/x/aliases/c",
        "junk",
    ]
    with pytest.raises(ValueError, match="alias"):
        _core.get_alias_request("fraud", "models/churn/aliases/a")


def test_resolve_as_of_needs_an_aware_time() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert _core.resolve_alias_request("fraud", "champion", as_of=at).as_of.seconds == int(at.timestamp())
    with pytest.raises(ValueError, match="timezone"):
        _core.resolve_alias_request("fraud", "champion", as_of=datetime(2026, 1, 2))


def test_watch_request_and_retry_policy_of_the_read_methods() -> None:
    request = _core.watch_aliases_request(["fraud", "models/churn"], since_revision=5)
    assert (list(request.models), request.since_revision) == (["models/fraud", "models/churn"], 5)
    assert not _core.watch_aliases_request().models
    with pytest.raises(ValueError, match="since_revision"):
        _core.watch_aliases_request(since_revision=-1)
    names = {
        (n["service"], n["method"])
        for config in _core.service_config()["methodConfig"]
        for n in config["name"]
    }
    for method in ("GetAlias", "ListAliases", "ListAliasHistory", "ListStageTransitions", "GetTrafficPolicy"):
        assert ("modelreg.v1.LifecycleService", method) in names
    for method in ("ResolveAlias", "BatchResolveAliases", "ResolveRoute"):
        assert ("modelreg.v1.ServingService", method) in names
    assert not {m for _, m in names} & {"SetAlias", "DeleteAlias", "UpdateAliases", "WatchAliases"}
