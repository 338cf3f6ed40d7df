"""hostd.supervisor.policy and the lifecycle tables, as pure functions: plain values in,
verdicts out (no clock, no process)."""
import itertools
import signal

import pytest

from hostd import protocol
from hostd.config import Health, Recycling
from hostd.lifecycle import (POOL_EVENTS, POOL_TRANSITIONS, WORKER_EVENTS,
                             WORKER_TRANSITIONS, IllegalTransition, PoolState, WorkerState,
                             pool_lifecycle, worker_lifecycle)
from hostd.supervisor import policy
from hostd.supervisor.policy import (HealthCheck, IdleCandidate, RecycleMode, ReloadStep,
                                     StopPhase, UnhealthyAction)
from kernel import memevents

P, W = PoolState, WorkerState


# --------------------------------------------------------------------------- exits
def test_exit_verdict_app_load_failure_names_the_last_traceback_line():
    tb = "Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'shop'\n"
    assert policy.exit_verdict(W.STARTING, protocol.EXIT_APP_LOAD, tb, False) == \
        ("startup failed: ModuleNotFoundError: No module named 'shop'", True)
    # exit 3 is a load failure in whatever state it is reported
    assert policy.exit_verdict(W.DRAINING, protocol.EXIT_APP_LOAD, None, False) == \
        ("startup failed: exit 3", True)
    assert policy.exit_verdict(W.STARTING, protocol.EXIT_APP_LOAD, "   \n", False) == \
        ("startup failed: exit 3", True)


def test_exit_verdict_while_starting_is_a_startup_failure():
    assert policy.exit_verdict(W.STARTING, 1, None, False) == ("startup failed: exit 1", True)
    assert policy.exit_verdict(W.STARTING, -signal.SIGSEGV, None, False) == \
        ("startup failed: exit -11", True)


def test_exit_verdict_oom_sigkill_only_when_the_oom_killer_did_it():
    assert policy.exit_verdict(W.READY, -signal.SIGKILL, None, True) == \
        ("killed by the OOM killer (oom_kill)", True)
    # even a worker being stopped: the OOM killer got it first
    assert policy.exit_verdict(W.STOPPING, -signal.SIGKILL, None, True) == \
        ("killed by the OOM killer (oom_kill)", True)
    assert policy.exit_verdict(W.READY, -signal.SIGKILL, None, False) == \
        ("crashed (signal SIGKILL)", True)
    # a non-SIGKILL exit is never an OOM kill
    assert policy.exit_verdict(W.READY, -signal.SIGTERM, None, True) == \
        ("crashed (signal SIGTERM)", True)


@pytest.mark.parametrize("state", [W.DRAINING, W.STOPPING, W.ORPHANED])
def test_exit_verdict_expected_exits_are_not_failures(state):
    assert policy.exit_verdict(state, 0, None, False) == ("exited (exit 0)", False)
    assert policy.exit_verdict(state, -signal.SIGKILL, None, False) == \
        ("exited (signal SIGKILL)", False)
    assert policy.exit_verdict(state, 1, "ignored traceback", False) == ("exited (exit 1)", False)


def test_exit_verdict_crash_while_ready():
    assert policy.exit_verdict(W.READY, 1, None, False) == ("crashed (exit 1)", True)
    assert policy.exit_verdict(W.READY, 0, None, False) == ("crashed (exit 0)", True)
    assert policy.exit_verdict(W.READY, -signal.SIGSEGV, None, False) == \
        ("crashed (signal SIGSEGV)", True)


def test_is_crash():
    assert policy.is_crash("crashed (exit 1)")
    assert policy.is_crash("killed by the OOM killer (oom_kill)")
    assert not policy.is_crash("startup failed: exit 3")
    assert not policy.is_crash("exited (exit 0)")
    assert not policy.is_crash("spawn failed: fork")


# --------------------------------------------------------------------------- health
H = Health(ping_interval=10, ping_timeout=5, startup_limit=30, shutdown_limit=20)


def check(state, now, health=H, **kw):
    times = dict(spawned_at=0.0, drain_at=None, ready_at=None, last_ping=None, ping_sent=None)
    times.update(kw)
    return policy.health_check(state, now, health, **times)


def test_health_startup_timeout():
    assert check(W.STARTING, 30.0) is None
    assert check(W.STARTING, 30.5) == HealthCheck.STARTUP_TIMEOUT
    # without [health]: the default limit
    assert check(W.STARTING, 90.0, None) is None
    assert check(W.STARTING, 90.5, None) == HealthCheck.STARTUP_TIMEOUT


def test_health_shutdown_timeout():
    assert check(W.DRAINING, 120.0, drain_at=100.0) is None
    assert check(W.DRAINING, 120.5, drain_at=100.0) == HealthCheck.SHUTDOWN_TIMEOUT
    assert check(W.DRAINING, 1e6, drain_at=None) is None
    assert check(W.DRAINING, 190.5, None, drain_at=100.0) == HealthCheck.SHUTDOWN_TIMEOUT


def test_health_ping_due_counts_from_the_last_ping_or_ready():
    assert check(W.READY, 109.9, ready_at=100.0) is None
    assert check(W.READY, 110.0, ready_at=100.0) == HealthCheck.PING_DUE
    assert check(W.READY, 110.0, ready_at=100.0, last_ping=105.0) is None
    assert check(W.READY, 115.0, ready_at=100.0, last_ping=105.0) == HealthCheck.PING_DUE
    # no channel: nobody to ping
    assert check(W.READY, 200.0, ready_at=100.0, has_channel=False) is None


def test_health_ping_timeout():
    assert check(W.READY, 105.0, ready_at=90.0, ping_sent=100.0) is None
    assert check(W.READY, 105.1, ready_at=90.0, ping_sent=100.0) == HealthCheck.PING_TIMEOUT


def test_health_none_without_health_or_ping_interval_0_or_other_states():
    assert check(W.READY, 1e6, None, ready_at=0.0) is None
    assert check(W.READY, 1e6, Health(ping_interval=0), ready_at=0.0) is None
    for state in (W.SPAWNING, W.STOPPING, W.ORPHANED, W.EXITED):
        assert check(state, 1e6, ready_at=0.0, drain_at=0.0, ping_sent=0.0) is None


def test_health_reason_texts():
    assert policy.health_reason(HealthCheck.STARTUP_TIMEOUT, H) == \
        "not ready within startup_limit (30s)"
    assert policy.health_reason(HealthCheck.SHUTDOWN_TIMEOUT, None) == \
        "did not exit within shutdown_limit (90s)"
    assert policy.health_reason(HealthCheck.PING_TIMEOUT, H) == \
        "no answer to ping within ping_timeout (5s)"


def test_unhealthy_action():
    assert policy.unhealthy_action(Health(orphan=True, unhealthy_action="kill"), True, False) \
        == UnhealthyAction.ORPHAN
    assert policy.unhealthy_action(Health(unhealthy_action="kill"), True, False) == \
        UnhealthyAction.KILL
    assert policy.unhealthy_action(Health(), True, False) == UnhealthyAction.REPLACE
    assert policy.unhealthy_action(Health(), False, False) == UnhealthyAction.DRAIN
    assert policy.unhealthy_action(Health(), True, True) == UnhealthyAction.DRAIN


# --------------------------------------------------------------------------- recycling
def test_recycle_plan_staggers_a_gardens_first_workers():
    r = Recycling(time=120.0, requests=1000)
    assert policy.recycle_plan(r, 4, 0, True, 10.0) == (10.0 + 30.0, 250)
    assert policy.recycle_plan(r, 4, 1, True, 10.0) == (10.0 + 60.0, 500)
    assert policy.recycle_plan(r, 4, 3, True, 10.0) == (10.0 + 120.0, 1000)
    # a slot past the garden's size is the last share, never more
    assert policy.recycle_plan(r, 4, 9, True, 10.0) == (10.0 + 120.0, 1000)
    # replacements keep the spread with full periods
    assert policy.recycle_plan(r, 4, 0, False, 10.0) == (10.0 + 120.0, 1000)
    assert policy.recycle_plan(Recycling(), 4, 0, True, 10.0) == (None, 0)
    assert policy.recycle_plan(Recycling(requests=1), 4, 0, True, 0.0) == (None, 1)


def test_recycle_due():
    assert policy.recycle_due(100.0, 100.0, 0, 0, None, 0) == "time"
    assert policy.recycle_due(99.9, 100.0, 0, 0, None, 0) is None
    assert policy.recycle_due(0.0, None, 10, 10, None, 0) == "requests"
    assert policy.recycle_due(0.0, None, 10, 9, None, 0) is None
    assert policy.recycle_due(0.0, None, 0, 10 ** 9, None, 0) is None
    assert policy.recycle_due(0.0, None, 0, 0, 2000, 1000) == "virtual_memory"
    assert policy.recycle_due(0.0, None, 0, 0, 1000, 1000) is None
    assert policy.recycle_due(0.0, None, 0, 0, None, 1000) is None   # not sampled
    assert policy.recycle_due(0.0, None, 0, 0, 2000, 0) is None      # no limit
    # time first
    assert policy.recycle_due(100.0, 50.0, 1, 5, 2000, 1000) == "time"


def test_schedule_due():
    assert policy.schedule_due("2024-05-01 03:00", ("03:00",), set())
    assert not policy.schedule_due("2024-05-01 03:00", ("03:00",), {"2024-05-01 03:00"})
    assert policy.schedule_due("2024-05-02 03:00", ("03:00",), {"2024-05-01 03:00"})
    assert not policy.schedule_due("2024-05-01 03:01", ("03:00",), set())
    assert not policy.schedule_due("2024-05-01 03:00", (), set())


def test_memory_recycle():
    assert policy.memory_recycle({memevents.MAX}, memevents.HIGH, memevents.MAX) == \
        ("memory_max", True)
    assert policy.memory_recycle({memevents.MAX, memevents.HIGH}, memevents.HIGH,
                                 memevents.MAX) == ("memory_max", True)
    assert policy.memory_recycle({memevents.HIGH}, memevents.HIGH, memevents.MAX) == \
        ("private_memory", False)
    assert policy.memory_recycle({memevents.OOM}, memevents.HIGH, memevents.MAX) is None
    assert policy.memory_recycle(set(), memevents.HIGH, memevents.MAX) is None


def test_recycle_mode():
    m = policy.recycle_mode
    assert m("time", False, True, True, True, False) == RecycleMode.QUEUE
    # urgent ones do not wait their turn
    assert m("memory_max", True, True, True, True, False) == RecycleMode.DRAIN_FIRST
    assert m("private_memory", False, False, True, True, False) == RecycleMode.DRAIN_FIRST
    assert m("time", False, False, True, True, False) == RecycleMode.OVERLAP
    assert m("time", False, False, False, True, False) == RecycleMode.RESPAWN_AFTER
    assert m("time", False, False, True, False, False) == RecycleMode.DRAIN_ONLY
    assert m("time", False, False, True, True, True) == RecycleMode.DRAIN_ONLY
    assert m("memory_max", True, False, True, True, True) == RecycleMode.DRAIN_ONLY


# --------------------------------------------------------------------------- sizing
def test_idle_victim_longest_idle_first():
    c = [IdleCandidate("w1", 50.0, 0), IdleCandidate("w2", 10.0, 0), IdleCandidate("w3", 30.0, 0)]
    assert policy.idle_victim(c, 3, False, 20.0, 100.0, False) == "w2"
    # only those idle for idle_timeout
    assert policy.idle_victim(c, 3, False, 80.0, 100.0, False) == "w2"
    assert policy.idle_victim(c, 3, False, 95.0, 100.0, False) is None


def test_idle_victim_floor_for_always_running():
    c = [IdleCandidate("w1", 0.0, 0)]
    assert policy.idle_victim(c, 1, True, 10.0, 100.0, False) is None
    assert policy.idle_victim(c, 1, False, 10.0, 100.0, False) == "w1"
    assert policy.idle_victim(c, 2, True, 10.0, 100.0, False) == "w1"
    assert policy.idle_victim([], 0, False, 10.0, 100.0, False) is None


def test_idle_victim_none_while_draining_or_without_idle_timeout():
    c = [IdleCandidate("w1", 0.0, 0), IdleCandidate("w2", 0.0, 0)]
    assert policy.idle_victim(c, 2, False, 10.0, 100.0, True) is None
    assert policy.idle_victim(c, 2, False, 0.0, 100.0, False) is None


def test_idle_victim_active_worker_is_not_chosen():
    c = [IdleCandidate("busy", 0.0, 2), IdleCandidate("idle", 50.0, 0)]
    assert policy.idle_victim(c, 2, False, 10.0, 100.0, False) == "idle"
    assert policy.idle_victim(c[:1], 2, False, 10.0, 100.0, False) is None


def test_may_grow():
    assert policy.may_grow(1, 4, 0)
    assert not policy.may_grow(0, 4, 0)      # demand start, not growth
    assert not policy.may_grow(4, 4, 0)
    assert not policy.may_grow(2, 4, 1)      # one at a time
    assert not policy.may_grow(1, 1, 0)


def test_respawn_needed():
    assert policy.respawn_needed(P.STARTED, True, 0, False)
    assert not policy.respawn_needed(P.STARTED, True, 1, False)
    assert not policy.respawn_needed(P.STARTED, False, 0, False)
    assert not policy.respawn_needed(P.STARTED, True, 0, True)
    assert not policy.respawn_needed(P.STOPPING, True, 0, False)


# --------------------------------------------------------------------------- reload
def test_reload_plan_every_step():
    same, old, new = object(), "cfg-old", "cfg-new"
    running = {"gone": (same, P.STARTED), "breaks": (same, P.STARTED),
               "fixed": (None, P.FAILED), "noapply": (old, P.STARTED),
               "failed": (old, P.FAILED), "changed": (old, P.STARTED),
               "same": (same, P.STARTED)}
    pools = {"fixed": new, "noapply": "cfg-noapply", "failed": new, "changed": new,
             "same": same, "added": new}
    broken = {"breaks": ["err"]}
    plan = policy.reload_plan(running, pools, broken,
                              lambda cfg: "no cgroups" if cfg == "cfg-noapply" else None)
    assert plan == [
        (ReloadStep.RETIRE, "gone", "removed from configuration"),
        (ReloadStep.BROKEN, "breaks", "configuration broken"),
        (ReloadStep.ADD, "added", ""),
        (ReloadStep.CHANGE, "changed", "config changed"),
        (ReloadStep.REPLACE, "failed", "configuration changed"),
        (ReloadStep.REPLACE, "fixed", "configuration fixed"),
        (ReloadStep.REPLACE, "noapply", "configuration cannot be applied"),
    ]


def test_reload_plan_unchanged_is_empty_and_a_failed_unchanged_pool_stays():
    cfg = object()
    assert policy.reload_plan({"a": (cfg, P.STARTED), "b": (cfg, P.FAILED)},
                              {"a": cfg, "b": cfg}, {}, lambda c: "never asked") == []


# --------------------------------------------------------------------------- stop
def test_next_stop_phase_for_every_phase():
    nxt = policy.next_stop_phase
    kw = dict(frontends_left=True, queues_waiting=True, workers_left=True)
    assert nxt(StopPhase.RUNNING, 0, 0, **kw) == StopPhase.RUNNING
    assert nxt(StopPhase.DONE, 0, 0, **kw) == StopPhase.DONE
    for phase, key, then in [(StopPhase.FRONTENDS, "frontends_left", StopPhase.QUEUES),
                             (StopPhase.QUEUES, "queues_waiting", StopPhase.WORKERS),
                             (StopPhase.WORKERS, "workers_left", StopPhase.DONE)]:
        assert nxt(phase, 5.0, 10.0, **kw) == phase, "still waiting"
        assert nxt(phase, 10.0, 10.0, **kw) == then, "deadline"
        assert nxt(phase, 5.0, 10.0, **dict(kw, **{key: False})) == then, "condition met"
    # only its own condition counts
    assert nxt(StopPhase.FRONTENDS, 5.0, 10.0, frontends_left=True, queues_waiting=False,
               workers_left=False) == StopPhase.FRONTENDS


def test_stop_transitions_go_in_order():
    phase, seen = StopPhase.RUNNING, []
    while phase in policy.STOP_TRANSITIONS:
        phase = policy.STOP_TRANSITIONS[phase][0]
        seen.append(phase)
    assert seen == [StopPhase.FRONTENDS, StopPhase.QUEUES, StopPhase.WORKERS, StopPhase.DONE]


# --------------------------------------------------------------------------- lifecycle tables
@pytest.mark.parametrize("events,transitions", [(WORKER_EVENTS, WORKER_TRANSITIONS),
                                                (POOL_EVENTS, POOL_TRANSITIONS)])
def test_every_event_entry_is_an_allowed_transition(events, transitions):
    for (state, event), new in events.items():
        assert new in transitions[state], f"{event!r} in {state.value} -> {new.value}"


def test_every_allowed_transition_has_an_event_but_starting_to_draining():
    """Every edge of the transition tables has a trigger, except STARTING -> DRAINING
    (a starting worker holds no work: a drain kills it, STARTING -> STOPPING)."""
    untriggered = set()
    for events, transitions in [(WORKER_EVENTS, WORKER_TRANSITIONS),
                                (POOL_EVENTS, POOL_TRANSITIONS)]:
        edges = {(s, n) for (s, _e), n in events.items()}
        untriggered |= {(s, n) for s, targets in transitions.items() for n in targets} - edges
    assert untriggered == {(W.STARTING, W.DRAINING)}


@pytest.mark.parametrize("make,events,states", [
    (lambda: worker_lifecycle("a", 1), WORKER_EVENTS, WorkerState),
    (lambda: pool_lifecycle("a"), POOL_EVENTS, PoolState)])
def test_lifecycle_on_follows_the_table_and_refuses_the_rest(make, events, states):
    names = sorted({e for _s, e in events})
    for state, event in itertools.product(states, names):
        life = make()
        life.state = state
        if (state, event) in events:
            assert life.triggers(event)
            assert life.on(event, "why") is events[(state, event)]
            assert life.state is events[(state, event)]
            assert life.history[-1] == (state, events[(state, event)], "why")
        else:
            assert not life.triggers(event)
            with pytest.raises(IllegalTransition) as err:
                life.on(event, "why")
            assert life.state is state and not life.history
            assert err.value.event == event and err.value.new is None
            assert err.value.old is state


def test_lifecycle_on_unknown_event_raises():
    life = worker_lifecycle("a", 1)
    with pytest.raises(IllegalTransition, match="'explode' in spawning"):
        life.on("explode", "why")


def test_grow_due_on_a_second_look_that_finds_the_queue_waiting():
    assert policy.grow_due(False, None, 10.0) == (False, None)
    assert policy.grow_due(True, None, 10.0) == (False, 10.0), "one look is not enough"
    assert policy.grow_due(False, 10.0, 10.1) == (False, 10.0), "an empty look forgets nothing"
    assert policy.grow_due(True, 10.0, 10.0 + policy.GROW_WINDOW) == (True, None)
    assert policy.grow_due(True, 10.0, 10.0 + 2 * policy.GROW_WINDOW) == \
        (False, 10.0 + 2 * policy.GROW_WINDOW), "too long ago: this look counts as the first"
