"""The supervisor's rooms driven through fakes of its OS seams (tests/unit/supervisor_fakes.py):
the real Registry, Sizing, Health, Recycling, Pools, Shutdown, Views and the real
Supervisor routing and tick, with FakeProcesses playing the workers. Every assertion is
on exact calls (what the rooms asked the process layer to do) and exact states."""
import dataclasses
import signal
import types
from unittest import mock

import pytest

from hostd import config as hconfig
from hostd import protocol
from hostd.lifecycle import PoolState, WorkerState
from hostd.supervisor import events as events_mod
from hostd.supervisor import recycling as recycling_mod
from hostd.supervisor import policy
from hostd.supervisor.events import ChildExited, MemoryEvent, QueueFull, RequestsReply
from hostd.supervisor.policy import StopPhase
from kernel import memevents, sockets
from supervisor_fakes import FakeMemoryWatch, as_broken, logs, make_house, pool_config  # noqa: F401

P, W = PoolState, WorkerState
SIGKILL = -signal.SIGKILL


def started(make_house, *cfgs, **kw):
    """A house whose pools' first workers are READY; every record of calls emptied."""
    h = make_house(*cfgs, **kw)
    for cfg in cfgs:
        for w in h.workers(cfg.name):
            h.up(w)
    h.calls()
    h.connections.calls.clear()
    h.placement.calls.clear()
    return h


def newest(h, name="a"):
    return h.workers(name)[-1]


def unhealthy(h, worker, reason="request_timeout (30s) passed", app=False):
    """The worker reports itself unhealthy on its control channel."""
    h.processes.message(worker, {"t": protocol.UNHEALTHY, "reason": reason, "app": app})
    h.route()


# ============================================================================ starting
def test_always_running_pool_starts_when_its_first_worker_is_ready(make_house):
    h = make_house(pool_config("a"))
    assert h.calls() == [("spawn", "a", "always_running")]
    pool, (w,) = h.pool(), h.workers()
    assert pool.state == P.STARTING and w.state == W.SPAWNING and w.generation == 1
    h.processes.start(w)
    assert w.state == W.STARTING and pool.state == P.STARTING
    h.processes.ready(w)
    assert pool.state == P.STARTING, "nothing happens before the event is routed"
    h.route()
    assert pool.state == P.STARTED and w.state == W.READY
    assert h.frontends.broadcasts == 1 and h.calls() == []
    assert w.boot["total"] == 0.0 and "ready_msg" in w.boot
    assert not h.sup.ready_sent
    h.tick()
    assert h.sup.ready_sent


def test_ready_before_spawned_reply_is_kept_until_the_pid_is_known(make_house):
    h = make_house(pool_config("a"))
    (w,) = h.workers()
    h.processes.ready(w)          # READY overtook the zygote's "spawned"
    h.route()
    assert w.state == W.SPAWNING and w.ready_early
    h.processes.start(w)
    h.route()
    assert w.state == W.READY and h.pool().state == P.STARTED


def test_demand_start_on_the_first_waiting_connection(make_house):
    h = make_house(pool_config("a", start_mode="on_demand", idle_timeout=10.0))
    pool = h.pool()
    assert pool.state == P.STARTED and h.calls() == []
    fd = pool.queue_out.fileno()
    assert pool.watch_demand and fd in h.reactor.handlers
    h.reactor.poll(0, h.route)
    assert h.calls() == [], "an empty queue wakes nobody"
    pool.queue_in.send(b"GET / HTTP/1.1\r\n\r\n")        # a front end queues a connection
    h.reactor.poll(0, h.route)
    assert h.calls() == [("spawn", "a", "demand")]
    assert not pool.watch_demand and fd not in h.reactor.handlers
    (w,) = h.workers()
    h.up(w)
    pool.queue_out.recv(100)                              # the worker takes it
    h.tick(10.5)                                          # idle: the last one goes too
    assert h.calls() == [("drain", "a#1", "idle_timeout")]
    assert h.exit(w, 0) == ("exited (exit 0)", False)
    assert h.calls() == []
    assert pool.watch_demand and fd in h.reactor.handlers, "watching for demand again"


def test_zygote_restart_fails_spawning_workers_and_rechecks_demand(make_house):
    h = make_house(pool_config("a", start_mode="on_demand"))
    pool = h.pool()
    h.processes.spawn(pool, "demand")
    h.sizing.update_demand(pool)
    h.calls()
    assert not pool.watch_demand
    h.processes.zygote_died()
    h.route()
    assert h.workers() == [] and pool.watch_demand
    assert pool.rapid.count(h.clock.now) == 0, "a zygote crash is not the pool's failure"
    assert h.calls() == [("start_zygote",)]


# ============================================================================ health
def test_ready_worker_that_misses_ping_is_replaced_then_drained(make_house):
    h = started(make_house, pool_config("a", health={"ping_interval": 10, "ping_timeout": 5}))
    (w1,) = h.workers()
    h.tick(9.9)
    assert h.processes.messages(w1, protocol.PING) == []
    h.tick(0.1)
    assert h.processes.messages(w1, protocol.PING) == [{"t": protocol.PING, "seq": 1}]
    h.tick(5.0)
    assert h.calls() == [], "ping_timeout not passed yet"
    h.tick(0.1)
    reason = "unhealthy: no answer to ping within ping_timeout (5s)"
    assert h.calls() == [("spawn", "a", "replace unhealthy worker 1")]
    w2 = newest(h)
    assert w1.state == W.READY and w1.reason == reason and w2.recycle.replaces is w1
    assert h.pool().rapid.count(h.clock.now) == 1
    h.up(w2)
    assert h.calls() == [("drain", "a#1", reason)]
    assert w1.state == W.DRAINING and w2.recycle.replaces is None
    assert h.processes.messages(w1, protocol.DRAIN) == [{"t": protocol.DRAIN, "reason": reason}]
    assert h.exit(w1, 0) == ("exited (exit 0)", False)
    assert h.calls() == [] and h.workers() == [w2]


def test_pong_answers_the_ping_and_the_next_one_follows(make_house):
    h = started(make_house, pool_config("a", health={"ping_interval": 10, "ping_timeout": 5}))
    (w,) = h.workers()
    h.tick(10)
    h.processes.message(w, {"t": protocol.PONG, "seq": 1})
    h.route()
    assert w.health.ping_sent is None
    h.tick(9.9)
    assert h.calls() == [] and len(h.processes.messages(w, protocol.PING)) == 1
    h.tick(0.1)
    assert h.processes.messages(w, protocol.PING)[-1] == {"t": protocol.PING, "seq": 2}
    # a late pong of an older ping does not answer this one
    h.processes.message(w, {"t": protocol.PONG, "seq": 1})
    h.route()
    assert w.health.ping_sent == h.clock.now


def test_stuck_pong_makes_the_worker_unhealthy(make_house):
    h = started(make_house, pool_config("a", health={"ping_interval": 10, "ping_timeout": 5}))
    (w,) = h.workers()
    h.tick(10)
    h.processes.message(w, {"t": protocol.PONG, "seq": 1, "stuck": True})
    h.route()
    assert h.calls() == [("spawn", "a", "replace unhealthy worker 1")]
    assert w.reason == "unhealthy: every app thread is stuck on the same request for over 5s"


def test_replacement_ready_drains_the_unhealthy_worker(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    unhealthy(h, w1)
    assert h.calls() == [("spawn", "a", "replace unhealthy worker 1")]
    w2 = newest(h)
    h.processes.start(w2)
    h.tick(1)
    assert h.calls() == [] and w1.state == W.READY, "the old one serves until then"
    h.processes.ready(w2)
    h.route()
    assert h.calls() == [("drain", "a#1", "unhealthy: request_timeout (30s) passed")]
    assert (w1.state, w2.state) == (W.DRAINING, W.READY)
    assert dict(h.pool().recycles) == {}, "an unhealthy worker is not a recycle"


def test_unhealthy_replacement_that_dies_leaves_the_old_worker_serving(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    unhealthy(h, w1)
    w2 = newest(h)
    h.calls()
    h.processes.start(w2)
    assert h.exit(w2, 1) == ("startup failed: exit 1", True)
    assert h.calls() == [], "the old worker is alive: nothing to replace"
    assert w1.state == W.READY and w1.recycle.reason == ""
    assert h.pool().rapid.count(h.clock.now) == 2


def test_unhealthy_with_orphan_keeps_worker_and_spawns_replacement(make_house):
    h = started(make_house, pool_config("a", health={"orphan": True}))
    (w1,) = h.workers()
    unhealthy(h, w1, "stuck")
    assert w1.state == W.ORPHANED and w1.orphaned_at == h.clock.now
    assert h.calls() == [("spawn", "a", "replace orphaned worker 1")]
    assert h.placement.calls == [("orphan", "a#1")]
    assert h.processes.messages(w1, protocol.ORPHAN) == [{"t": protocol.ORPHAN}]
    h.clock.advance(12.34)
    assert h.views.orphans() == [{"pool": "a", "pid": w1.pid, "id": 1,
                                  "reason": "unhealthy: stuck", "orphaned_for": 12.3,
                                  "rss": 0}]
    h.up(newest(h))
    assert h.calls() == [] and w1.state == W.ORPHANED, "an orphan is not drained"
    assert h.commands.kill_orphan(w1.pid) == (True, f"orphan {w1.pid} of pool a killed")
    assert w1.state == W.STOPPING and h.processes.sigkills == ["a#1"]
    assert h.exit(w1, SIGKILL) == ("exited (signal SIGKILL)", False)
    assert h.commands.kill_orphan(w1.pid) == (False, f"no orphaned worker with pid {w1.pid}")


def test_orphan_that_exits_on_its_own_is_not_a_failure(make_house):
    h = started(make_house, pool_config("a", health={"orphan": True}))
    (w1,) = h.workers()
    unhealthy(h, w1, "stuck")
    h.calls()
    assert h.exit(w1, 1) == ("exited (exit 1)", False)
    assert h.calls() == [] and h.pool().totals.crashes == 0


def test_unhealthy_kill_kills_at_once(make_house):
    h = started(make_house, pool_config("a", health={"unhealthy_action": "kill"}))
    (w1,) = h.workers()
    unhealthy(h, w1, "stuck")
    assert h.calls() == [("kill", "a#1", "unhealthy: stuck"), ("spawn", "a", "replace worker 1")]
    assert w1.state == W.STOPPING and h.processes.sigkills == ["a#1"]
    assert h.pool().rapid.count(h.clock.now) == 1
    assert h.exit(w1, SIGKILL) == ("exited (signal SIGKILL)", False)
    assert h.calls() == [], "its replacement is already starting"
    assert h.pool().totals.crashes == 0


def test_unhealthy_while_stopping_drains_without_replacement(make_house):
    h = started(make_house, pool_config("a"))
    h.frontends.add(0, 77)                 # a front end still finishing: phase FRONTENDS
    h.sup.stop("test")
    h.tick()
    assert h.sup.shutdown.phase == StopPhase.FRONTENDS
    h.calls()
    (w1,) = h.workers()
    unhealthy(h, w1, "stuck")
    assert h.calls() == [("drain", "a#1", "unhealthy: stuck")]


def test_unhealthy_replace_without_a_zygote_drains_and_tries_once_more(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    h.processes.refuse = True
    unhealthy(h, w1, "stuck")
    assert h.calls() == [("spawn", "a", "replace unhealthy worker 1"),
                         ("drain", "a#1", "unhealthy: stuck"),
                         ("spawn", "a", "replace worker 1")]
    assert w1.state == W.DRAINING


@pytest.mark.parametrize("health", [{}, {"orphan": True}, {"unhealthy_action": "kill"}])
def test_unhealthy_that_trips_rapid_fail_starts_no_replacement(make_house, health):
    """Regression: health.unhealthy() used to choose its action from pool.state before
    the RapidFailTripped it had just posted was routed, so the failure that tripped
    rapid-fail still spawned a replacement into the failing pool (then drained by
    pools.fail). Now the trip comes first and nothing replaces the worker."""
    h = started(make_house, pool_config("a", health={"rapid_fail_max_crashes": 1, **health}))
    (w1,) = h.workers()
    unhealthy(h, w1, "stuck")
    assert h.pool().state == P.FAILED and h.pool().totals.rapid_fail_stops == 1
    assert h.calls() == [("drain", "a#1", "pool failed")]
    assert w1.state == W.DRAINING and h.placement.calls == []


# ============================================================================ exits, rapid-fail
def test_worker_that_crashes_is_counted_and_always_running_pool_gets_a_new_one(make_house, logs):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    assert h.exit(w1, 1) == ("crashed (exit 1)", True)
    assert h.calls() == [("spawn", "a", "replace failed worker")]
    pool = h.pool()
    assert pool.totals.crashes == 1 and pool.rapid.count(h.clock.now) == 1
    assert pool.state == P.STARTED and w1.state == W.EXITED and h.workers() == [newest(h)]
    assert [e["REASON"] for e in logs.events("crash")] == ["crashed (exit 1)"]
    assert h.views.counters()["pools"][0]["crashes"] == 1


def test_on_demand_pool_crash_is_counted_and_waits_for_demand(make_house):
    h = make_house(pool_config("a", start_mode="on_demand"))
    h.reactor.poll(0, h.route)
    w1 = h.processes.spawn(h.pool(), "demand")
    h.sizing.update_demand(h.pool())
    h.up(w1)
    h.calls()
    assert h.exit(w1, -signal.SIGSEGV) == ("crashed (signal SIGSEGV)", True)
    assert h.calls() == [] and h.pool().watch_demand
    assert h.pool().totals.crashes == 1


def test_rapid_fail_stops_pool_after_max_crashes(make_house):
    h = make_house(pool_config("a", health={"rapid_fail_max_crashes": 3}))
    pool = h.pool()
    for _ in range(3):
        h.exit(h.up(newest(h)), 1)
    assert h.calls() == [("spawn", "a", "always_running"),
                         ("spawn", "a", "replace failed worker"),
                         ("spawn", "a", "replace failed worker")]
    assert pool.state == P.FAILED and h.workers() == []
    assert pool.error == ("rapid-fail protection: 3 failures within 300s; "
                          "last: crashed (exit 1)")
    assert pool.totals.rapid_fail_stops == 1 and pool.totals.crashes == 3
    assert ("fail_queue", "a") in h.connections.calls and not pool.watch_demand
    assert h.commands.start_pool("a") == (True, "pool a started")
    assert pool.rapid.count(h.clock.now) == 0 and pool.error is None
    assert h.calls() == [("spawn", "a", "always_running")] and pool.state == P.STARTING


def test_startup_failure_exit_3_names_the_traceback_and_replaces(make_house):
    h = make_house(pool_config("a"))
    (w1,) = h.workers()
    h.processes.start(w1)
    h.processes.message(w1, {"t": protocol.STARTUP_FAILED,
                             "error": "Traceback (most recent call last):\nImportError: boom\n"})
    h.calls()
    assert h.exit(w1, protocol.EXIT_APP_LOAD) == ("startup failed: ImportError: boom", True)
    assert h.calls() == [("spawn", "a", "replace failed worker")]
    assert h.pool().state == P.STARTING and h.pool().totals.crashes == 0
    assert h.pool().rapid.count(h.clock.now) == 1


def test_startup_timeout_kills_and_counts(make_house):
    h = make_house(pool_config("a", health={"startup_limit": 5}))
    (w1,) = h.workers()
    h.processes.start(w1)
    h.calls()
    h.tick(5.0)
    assert h.calls() == []
    h.tick(0.1)
    assert h.calls() == [("kill", "a#1", "not ready within startup_limit (5s)")]
    assert w1.state == W.STOPPING and h.processes.sigkills == ["a#1"]
    assert h.pool().rapid.count(h.clock.now) == 1
    assert h.exit(w1, SIGKILL) == ("exited (signal SIGKILL)", False)
    # counted once, when it was killed; the pool never started: the next request starts one
    assert h.pool().rapid.count(h.clock.now) == 1
    assert h.calls() == [] and h.pool().watch_demand


def test_startup_timeouts_trip_rapid_fail_through_the_event(make_house):
    h = make_house(pool_config("a", health={"startup_limit": 5, "rapid_fail_max_crashes": 1}))
    (w1,) = h.workers()
    h.processes.start(w1)
    h.calls()
    h.tick(6)
    assert h.calls() == [("kill", "a#1", "not ready within startup_limit (5s)"),
                         ("drain", "a#1", "pool failed")]
    assert h.pool().state == P.FAILED
    assert h.pool().error == ("rapid-fail protection: 1 failures within 300s; "
                              "last: not ready within startup_limit (5s)")


def test_oom_kill_is_a_crash(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    h.placement.oom = True
    assert h.exit(w1, SIGKILL) == ("killed by the OOM killer (oom_kill)", True)
    assert h.calls() == [("spawn", "a", "replace failed worker")]
    assert h.pool().totals.crashes == 1


def test_spawn_failure_counts_and_replaces(make_house):
    h = make_house(pool_config("a"))
    (w1,) = h.workers()
    h.calls()
    h.processes.spawn_failed(w1, "fork: EAGAIN")
    h.route()
    assert w1.state == W.EXITED and h.calls() == [("spawn", "a", "replace failed worker")]
    assert h.pool().rapid.count(h.clock.now) == 1 and h.pool().totals.crashes == 0


def test_spawn_refused_by_cgroup_counts_toward_rapid_fail(make_house):
    cfg = pool_config("a", health={"rapid_fail_max_crashes": 1})
    h = make_house()
    h.placement.cgroup_error = "No space left on device"
    h.add(cfg)
    pool = h.pool()
    assert h.calls() == [("spawn", "a", "always_running")] and h.workers() == []
    assert pool.state == P.FAILED and not pool.watch_demand
    assert pool.error == ("rapid-fail protection: 1 failures within 300s; "
                          "last: cgroup: No space left on device")


def test_kill_worker_command_respawns_an_always_running_pool(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    assert h.commands.kill_worker(w1.pid) == (True, f"worker {w1.pid} of pool a killed")
    assert h.calls() == [("kill", "a#1", "hostctl worker kill")]
    assert h.commands.kill_worker(w1.pid) == (False, f"no running worker with pid {w1.pid}")
    assert h.exit(w1, SIGKILL) == ("exited (signal SIGKILL)", False)
    assert h.calls() == [("spawn", "a", "always_running")]
    assert h.pool().rapid.count(h.clock.now) == 0


def test_draining_worker_past_shutdown_limit_is_killed(make_house):
    h = started(make_house, pool_config("a", health={"shutdown_limit": 5}))
    (w1,) = h.workers()
    assert h.commands.stop_pool("a") == (True, "pool a stopping")
    assert h.calls() == [("drain", "a#1", "pool stop")]
    h.tick(5.0)
    assert h.calls() == []
    h.tick(0.1)
    assert h.calls() == [("kill", "a#1", "did not exit within shutdown_limit (5s)")]
    assert w1.state == W.STOPPING and h.pool().rapid.count(h.clock.now) == 0
    assert h.exit(w1, SIGKILL) == ("exited (signal SIGKILL)", False)
    assert h.pool().state == P.STOPPED and h.calls() == []


def test_drain_that_cannot_reach_the_worker_kills_it(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    h.processes.dead_channels.add(id(w1))
    h.commands.stop_pool("a")
    assert w1.state == W.DRAINING and h.processes.sigkills == ["a#1"]


def test_worker_drained_while_spawning_is_killed_once_it_has_a_pid(make_house):
    h = make_house(pool_config("a"))
    (w1,) = h.workers()
    h.calls()
    h.commands.stop_pool("a")
    assert w1.state == W.SPAWNING and w1.drain_reason == "pool stop"
    assert h.pool().state == P.STOPPING
    h.processes.start(w1)
    assert h.calls() == [("drain", "a#1", "pool stop"), ("drain", "a#1", "pool stop"),
                         ("kill", "a#1", "pool stop")]
    assert w1.state == W.STOPPING
    h.exit(w1, SIGKILL)
    assert h.pool().state == P.STOPPED


# ============================================================================ pool stop/start
def test_pool_stop_then_start(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    pool, casts = h.pool(), h.frontends.broadcasts
    assert h.commands.stop_pool("a") == (True, "pool a stopping")
    assert pool.state == P.STOPPING and w1.state == W.DRAINING
    assert h.calls() == [("drain", "a#1", "pool stop")]
    assert h.connections.calls == [("fail_queue", "a")]
    assert h.frontends.broadcasts == casts + 1
    assert h.commands.start_pool("a") == (False, "pool a is stopping: start it once it has stopped")
    h.exit(w1, 0)
    assert pool.state == P.STOPPED and h.calls() == [] and not pool.watch_demand
    assert h.frontends.broadcasts == casts + 2
    assert h.commands.stop_pool("a") == (True, "pool a is already stopped")
    assert h.commands.start_pool("a") == (True, "pool a started")
    assert pool.state == P.STARTING and h.calls() == [("spawn", "a", "always_running")]
    h.up(newest(h))
    assert pool.state == P.STARTED
    assert h.commands.start_pool("a") == (True, "pool a is already started")
    assert h.commands.start_pool("zz") == (False, "no pool named zz")


def test_start_pool_refused_when_isolation_cannot_be_applied(make_house):
    h = started(make_house, pool_config("a"))
    h.commands.stop_pool("a")
    h.exit(h.workers()[0], 0)
    h.placement.isolate_errors["a"] = "a.toml: isolation.identity: no such user"
    assert h.commands.start_pool("a") == (False, "a.toml: isolation.identity: no such user")
    assert h.pool().state == P.STOPPED and h.calls() == [("drain", "a#1", "pool stop")]


def test_pool_whose_isolation_cannot_be_applied_is_failed_at_add(make_house):
    h = make_house()
    h.placement.isolate_errors["a"] = "a.toml: [isolation] needs root"
    h.add(pool_config("a"))
    assert h.pool().state == P.FAILED and h.pool().error == "a.toml: [isolation] needs root"
    assert h.calls() == []


# ============================================================================ recycling
def test_time_recycle_overlaps_then_drains_old(make_house, logs):
    h = started(make_house, pool_config("a", recycling={"time": 60.0}))
    (w1,) = h.workers()
    assert w1.recycle.at == w1.spawned_at + 60.0
    h.tick(59.9)
    assert h.calls() == []
    h.tick(0.1)
    assert h.calls() == [("spawn", "a", "recycle: time")]
    w2 = newest(h)
    assert w1.recycle.reason == "time" and w1.recycle.at is None
    assert w2.recycle.replaces is w1 and w2.recycle.at == w2.spawned_at + 60.0
    assert dict(h.pool().recycles) == {"time": 1}
    h.clock.advance(0.5)
    h.up(w2)
    assert h.calls() == [("drain", "a#1", "recycle: time")]
    (ready,) = logs.events("recycle_ready")
    assert (ready["REASON"], ready["ELAPSED_MS"], ready["OLD_PID"]) == ("time", 500.0, w1.pid)
    assert h.exit(w1, 0) == ("exited (exit 0)", False)
    assert h.calls() == []
    (doc,) = h.views.status()["pools"][0]["workers"]
    assert (doc["start_reason"], doc["last_recycle_reason"], doc["recycling"]) == \
        ("recycle: time", "time", None)


def test_garden_grows_one_worker_at_a_time_and_recycles_staggered(make_house):
    h = started(make_house, pool_config("a", processes=2, recycling={"time": 100.0}))
    h.connections.waiting_pools.add("a")
    h.tick()
    assert h.calls() == [], "one look at a waiting queue is not enough"
    h.tick(policy.GROW_WINDOW / 2)
    assert h.calls() == [("spawn", "a", "queue waiting")]
    h.tick(policy.GROW_WINDOW / 2)
    assert h.calls() == [], "one new worker at a time"
    w1, w2 = h.workers()
    h.up(w2)
    h.tick()
    assert h.calls() == [], "the garden is full"
    h.connections.waiting_pools.clear()
    assert (w1.slot, w2.slot) == (0, 1)
    assert w1.recycle.at == w1.spawned_at + 50.0 and w2.recycle.at == w2.spawned_at + 100.0
    h.tick(50.0)
    assert h.calls() == [("spawn", "a", "recycle: time")] and w1.recycle.reason == "time"
    assert w2.recycle.reason == ""


def test_second_recycle_waits_its_turn(make_house):
    h = started(make_house, pool_config("a", processes=2))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    h.calls()
    assert h.commands.recycle_pool("a") == (True, "recycling 2 worker(s) of pool a")
    assert h.calls() == [("spawn", "a", "recycle: on_demand")]
    w3 = newest(h)
    assert list(h.pool().pending_recycles) == [(w2, "on_demand")]
    h.up(w3)
    assert h.calls() == [("drain", "a#1", "recycle: on_demand")]
    assert w2.recycle.reason == "", "still waiting: the first one is draining"
    h.exit(w1, 0)
    assert h.calls() == [("spawn", "a", "recycle: on_demand")]
    w4 = newest(h)
    assert w4.recycle.replaces is w2 and not h.pool().pending_recycles
    h.up(w4)
    assert h.calls() == [("drain", "a#2", "recycle: on_demand")]
    assert dict(h.pool().recycles) == {"on_demand": 2}


def test_memory_max_event_drains_first_then_spawns(make_house):
    h = started(make_house, pool_config("a", limits={"worker_memory_max": 1 << 28}))
    (w1,) = h.workers()
    assert isinstance(w1.memwatch, FakeMemoryWatch)
    h.post(MemoryEvent(w1, frozenset({memevents.MAX})))
    assert h.calls() == [("drain", "a#1", "recycle: memory_max"),
                         ("spawn", "a", "recycle: memory_max")]
    assert w1.state == W.DRAINING and dict(h.pool().recycles) == {"memory_max": 1}
    h.up(newest(h))
    assert h.calls() == []
    h.exit(w1, 0)
    assert h.calls() == [] and w1.memwatch is None


def test_private_memory_event_waits_its_turn_then_drains_first(make_house):
    h = started(make_house, pool_config("a", processes=2,
                                        recycling={"private_memory": 1 << 27}))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    assert h.commands.recycle_worker(w1.pid) == (True, f"recycling worker {w1.pid} of pool a")
    h.calls()
    h.post(MemoryEvent(w2, frozenset({memevents.HIGH})))
    assert h.calls() == [] and list(h.pool().pending_recycles) == [(w2, "private_memory")]
    h.up(newest(h))
    h.exit(w1, 0)
    assert h.calls() == [("drain", "a#1", "recycle: on_demand"),
                         ("drain", "a#2", "recycle: private_memory"),
                         ("spawn", "a", "recycle: private_memory")]


def test_memory_fence_on_already_recycling_worker_drains_it(make_house):
    h = started(make_house, pool_config("a", recycling={"private_memory": 1 << 27}))
    (w1,) = h.workers()
    h.commands.recycle_worker(w1.pid)
    assert h.calls() == [("spawn", "a", "recycle: on_demand")]
    h.processes.message(w1, {"t": protocol.MEMORY_FENCE})
    h.route()
    assert h.calls() == [("drain", "a#1", "recycle: private_memory")]
    assert w1.state == W.DRAINING and w1.recycle.reason == "on_demand"
    w2 = newest(h)
    h.up(w2)
    assert h.calls() == [("drain", "a#1", "recycle: on_demand")], "already draining: no-op"
    assert w1.state == W.DRAINING and w2.recycle.replaces is None
    assert dict(h.pool().recycles) == {"on_demand": 1}


def test_memory_fence_near_memory_max_is_a_memory_max_recycle(make_house):
    h = started(make_house, pool_config("a", limits={"worker_memory_max": 1 << 28}))
    (w1,) = h.workers()
    h.placement.near_max = True
    h.processes.message(w1, {"t": protocol.MEMORY_FENCE})
    h.route()
    assert h.calls() == [("drain", "a#1", "recycle: memory_max"),
                         ("spawn", "a", "recycle: memory_max")]


def test_memory_fence_without_a_memory_watch_is_ignored(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    assert w1.memwatch is None
    h.processes.message(w1, {"t": protocol.MEMORY_FENCE})
    h.route()
    assert h.calls() == [] and w1.state == W.READY


def test_requests_limit_recycle(make_house):
    h = make_house(pool_config("a", start_mode="on_demand",
                               recycling={"requests": 100, "overlapping": False}))
    w1 = h.up(h.processes.spawn(h.pool(), "demand"))
    h.calls()
    assert w1.recycle.request_limit == 100
    w1.board.write(99, 0, 0, 0.0, w1.pid)
    h.tick(0.1)
    assert h.calls() == []
    w1.board.write(100, 0, 0, 0.0, w1.pid)
    h.tick(0.1)
    assert h.calls() == [("drain", "a#1", "recycle: requests")]
    assert w1.recycle.respawn_after and w1.recycle.request_limit == 0
    assert dict(h.pool().recycles) == {"requests": 1}
    h.exit(w1, 0)
    assert h.calls() == [("spawn", "a", "recycle: requests")]
    assert newest(h).recycle.request_limit == 100
    assert h.pool().requests() == 100, "its requests stay counted"


def test_non_overlapping_recycle_of_the_only_always_running_worker_respawns_as_a_recycle(
        make_house):
    """Regression (predated the split): the only worker of an always_running pool,
    recycled without overlap, was respawned by the respawn_needed branch as
    "always_running", so its replacement was no recycle (no "recycle: <reason>", no
    last_recycle_reason, a first-life staggered plan). The respawn_after branch wins."""
    h = started(make_house, pool_config("a", recycling={"requests": 10, "overlapping": False}))
    (w1,) = h.workers()
    w1.board.write(10, 0, 0, 0.0, w1.pid)
    h.tick(0.1)
    assert h.calls() == [("drain", "a#1", "recycle: requests")]
    h.exit(w1, 0)
    assert h.calls() == [("spawn", "a", "recycle: requests")]


def test_virtual_memory_recycle_is_sampled_once_a_second(make_house, monkeypatch):
    sizes = {}
    monkeypatch.setattr(recycling_mod, "procfs",
                        types.SimpleNamespace(vmsize=lambda pid: sizes.get(pid, 0)))
    h = started(make_house, pool_config("a", recycling={"virtual_memory": 1000}))
    (w1,) = h.workers()
    h.tick()                                # a second: sampled, 0
    sizes[w1.pid] = 2000
    h.tick(0.5)
    assert h.calls() == [], "not sampled between seconds"
    h.tick(0.5)
    assert h.calls() == [("spawn", "a", "recycle: virtual_memory")]


def test_schedule_recycle_fires_once_in_its_minute(make_house):
    h = make_house()
    hhmm = h.clock.strftime("%H:%M")       # the fake wall clock is at hh:mm:00
    h.add(pool_config("a", processes=2, recycling={"schedule": (hhmm,)}))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w1)
    h.up(w2)
    h.calls()
    h.tick()
    assert h.calls() == [("spawn", "a", "recycle: schedule")]
    assert list(h.pool().pending_recycles) == [(w2, "schedule")]
    assert h.pool().schedule_fired == {h.clock.strftime("%Y-%m-%d %H:%M")}
    h.tick(1.0)
    assert h.calls() == [] and list(h.pool().pending_recycles) == [(w2, "schedule")]


def test_app_asked_recycle(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    unhealthy(h, w1, "leaking", app=True)
    assert h.calls() == [("spawn", "a", "recycle: app: leaking")]
    assert dict(h.pool().recycles) == {"app: leaking": 1} and w1.reason == "recycle: app: leaking"
    assert h.pool().rapid.count(h.clock.now) == 0, "the app asked: not a failure"


def test_recycle_of_a_starting_pools_worker_only_drains(make_house):
    h = make_house(pool_config("a"))
    (w1,) = h.workers()
    h.processes.start(w1)
    h.calls()
    assert h.commands.recycle_worker(w1.pid) == (True, f"recycling worker {w1.pid} of pool a")
    assert h.calls() == [("drain", "a#1", "recycle: on_demand"),
                         ("kill", "a#1", "recycle: on_demand")]
    assert w1.state == W.STOPPING and not w1.recycle.respawn_after
    assert h.commands.recycle_worker(w1.pid) == (False, f"worker {w1.pid} is stopping")
    assert h.commands.recycle_worker(1) == (False, "no worker with pid 1")


# ============================================================================ idle
def test_idle_worker_above_floor_is_drained(make_house):
    h = started(make_house, pool_config("a", processes=2, idle_timeout=10.0))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    h.calls()
    now = h.clock.now
    w1.board.write(3, 0, 0, now + 3.0, w1.pid)
    w2.board.write(3, 0, 0, now + 1.0, w2.pid)    # w2 has been idle longer
    h.tick(10.5)
    assert h.calls() == [], "nobody idle for idle_timeout yet"
    h.tick(3.5)
    assert h.calls() == [("drain", "a#2", "idle_timeout")], "the longest idle goes first"
    h.tick(1.0)
    assert h.calls() == [], "one at a time: none while another drains"
    h.exit(w2, 0)
    h.tick(100.0)
    assert h.calls() == [] and w1.state == W.READY, "always_running keeps one"


def test_idle_shrink_skips_a_worker_with_active_requests(make_house):
    h = started(make_house, pool_config("a", processes=2, idle_timeout=10.0))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    h.calls()
    w1.board.write(3, 1, 1, 0.0, w1.pid)     # one request running for ages
    w2.board.write(3, 0, 0, h.clock.now, w2.pid)
    h.tick(11.0)
    assert h.calls() == [("drain", "a#2", "idle_timeout")]


# ============================================================================ reload
def test_reload_changed_pool_spawns_new_generation_and_drains_old_when_ready(make_house):
    cfg = pool_config("a")
    h = started(make_house, cfg)
    (w1,) = h.workers()
    casts = h.frontends.broadcasts
    h.reload({"a": dataclasses.replace(cfg, threads=8)})
    pool = h.pool()
    assert h.calls() == [("spawn", "a", "config changed")]
    w2 = newest(h)
    assert (pool.generation, w1.generation, w2.generation) == (2, 1, 2)
    assert pool.cfg.threads == 8 and dict(pool.recycles) == {"config": 1}
    assert [m["t"] for m in h.processes.messages(w1)] == [protocol.ROUTES]
    assert h.frontends.broadcasts == casts + 1 and w1.state == W.READY
    h.up(w2)
    assert h.calls() == [("drain", "a#1", "config changed")]
    h.exit(w1, 0)
    assert h.calls() == [] and h.workers() == [w2]


def test_reload_changed_garden_to_fewer_processes_drains_the_surplus(make_house):
    cfg = pool_config("a", processes=2)
    h = started(make_house, cfg)
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    h.calls()
    h.reload({"a": dataclasses.replace(cfg, processes=1)})
    assert h.calls() == [("spawn", "a", "config changed"), ("drain", "a#2", "config changed")]
    h.up(newest(h))
    assert h.calls() == [("drain", "a#1", "config changed")]


def test_reload_change_of_a_starting_worker_kills_it(make_house):
    cfg = pool_config("a")
    h = make_house(cfg)
    (w1,) = h.workers()
    h.processes.start(w1)
    h.calls()
    h.reload({"a": dataclasses.replace(cfg, threads=8)})
    assert h.calls() == [("drain", "a#1", "config changed"), ("kill", "a#1", "config changed"),
                         ("spawn", "a", "config changed")]


def test_reload_change_whose_isolation_fails_fails_the_pool(make_house):
    cfg = pool_config("a")
    h = started(make_house, cfg)
    h.placement.isolate_errors["a"] = "a.toml: isolation.identity: gone"
    h.reload({"a": dataclasses.replace(cfg, threads=8)})
    assert h.pool().state == P.FAILED and h.pool().error == "a.toml: isolation.identity: gone"
    assert h.calls() == [("drain", "a#1", "pool failed")] and h.pool().generation == 1


def test_reload_removed_pool_retires(make_house):
    cfg_a, cfg_b = pool_config("a"), pool_config("b")
    h = started(make_house, cfg_a, cfg_b)
    old = h.pool("b")
    (b1,) = h.workers("b")
    h.reload({"a": cfg_a})
    assert h.calls() == [("drain", "b#1", "removed from configuration")]
    assert "b" not in h.registry.pools and h.registry.retired == [old]
    assert old.state == P.STOPPING and h.connections.calls == [("reroute_queue", "b")]
    h.tick()
    assert h.registry.retired == [old], "its worker is still draining"
    h.exit(b1, 0)
    assert old.state == P.STOPPED
    h.connections.calls.clear()
    h.tick()
    assert h.registry.retired == []
    assert h.connections.calls == [("reroute_queue", "b"), ("forget_parked", "b"),
                                   ("close_relay", "b")]
    assert h.placement.calls[-1] == ("release_pool", "b", False)
    assert h.calls() == [], "pool a was left alone"


def test_reload_broken_pool_is_failed_then_fixed(make_house):
    cfg = pool_config("a")
    h = started(make_house, cfg)
    old = h.pool()
    err = hconfig.ConfigError(cfg.file, "app", "must be module:callable")
    h.reload({}, {"a": [err]})
    assert h.calls() == [("drain", "a#1", "configuration broken")]
    broken = h.pool()
    assert broken is not old and h.registry.retired == [old]
    assert broken.state == P.FAILED and broken.cfg is None
    assert broken.error == f"{cfg.file}: app: must be module:callable"
    assert h.commands.start_pool("a") == (
        False, f"pool a has a broken configuration: {broken.error}")
    h.reload({"a": cfg})
    assert h.calls() == [("spawn", "a", "always_running")]
    assert h.pool() is not broken and h.pool().state == P.STARTING
    assert broken in h.registry.retired and broken.state == P.STOPPING


def test_reload_added_pool_starts(make_house):
    cfg_a = pool_config("a")
    h = started(make_house, cfg_a)
    h.reload({"a": cfg_a, "b": pool_config("b")})
    assert h.calls() == [("spawn", "b", "always_running")]
    assert sorted(h.registry.pools) == ["a", "b"]


def test_reload_failed_pool_with_a_new_config_is_replaced(make_house):
    cfg = pool_config("a", health={"rapid_fail_max_crashes": 1})
    h = started(make_house, cfg)
    h.exit(h.workers()[0], 1)
    old = h.pool()
    assert old.state == P.FAILED
    h.calls()
    h.reload({"a": dataclasses.replace(cfg, threads=8)})
    assert h.pool() is not old and old in h.registry.retired
    assert h.calls() == [("spawn", "a", "always_running")]
    assert h.pool().rapid.count(h.clock.now) == 0


def test_reload_config_that_cannot_be_applied_replaces_the_pool_failed(make_house):
    cfg = pool_config("a")
    h = started(make_house, cfg)
    old = h.pool()
    h.placement.unsupported_errors["a"] = "a.toml: limits.memory_max: needs cgroups"
    h.reload({"a": dataclasses.replace(cfg, threads=8)})
    assert h.calls() == [("drain", "a#1", "configuration cannot be applied")]
    assert old in h.registry.retired and h.pool().state == P.FAILED
    assert h.pool().error == "a.toml: limits.memory_max: needs cgroups"


def test_reload_unchanged_pool_is_left_alone(make_house):
    cfg = pool_config("a")
    h = started(make_house, cfg)
    (w1,) = h.workers()
    pool = h.pool()
    h.reload({"a": pool_config("a")})
    assert h.calls() == [] and h.pool() is pool and pool.generation == 1
    assert [m["t"] for m in h.processes.messages(w1)] == [protocol.ROUTES]


def test_reload_of_a_stopped_pool_starts_no_worker(make_house):
    """Regression (predated the split): a reload changing the config of a pool stopped
    with `hostctl pool stop` took the CHANGE step and pools._change spawned a "config
    changed" worker into the STOPPED pool (drained as "superseded" once ready). A
    stopped pool stays stopped until `hostctl pool start`, with the new generation."""
    cfg = pool_config("a")
    h = started(make_house, cfg)
    h.commands.stop_pool("a")
    h.exit(h.workers()[0], 0)
    h.calls()
    h.reload({"a": dataclasses.replace(cfg, threads=8)})
    assert h.pool().state == P.STOPPED
    assert h.calls() == [] and h.workers() == []
    assert h.commands.start_pool("a") == (True, "pool a started")
    assert h.calls() == [("spawn", "a", "always_running")]
    assert newest(h).generation == h.pool().generation == 2


def test_reload_with_a_broken_main_file_changes_nothing(make_house, logs):
    cfg = pool_config("a")
    h = started(make_house, cfg)
    pool = h.pool()
    errors = hconfig.ConfigErrors([hconfig.ConfigError("/x/hostd.toml", None, "TOML syntax")])
    with mock.patch.object(hconfig, "load_main", side_effect=errors):
        h.sup.reload()
    assert h.pool() is pool and h.calls() == [] and h.processes.sent == []
    assert len(logs.events("reload_failed")) == 1


# ============================================================================ stop
def test_stop_phases_in_order(make_house):
    h = started(make_house, pool_config("a"), pool_config("b", start_mode="on_demand"))
    h.frontends.add(0, 4242)
    assert h.calls() == [("track", 4242, "frontend")]
    (w1,) = h.workers()
    h.sup.stop("signal SIGTERM")
    sd = h.sup.shutdown
    assert h.registry.stopping and h.frontends.stops == 1
    h.sup.stop("signal SIGTERM")
    assert h.frontends.stops == 1, "a second signal changes nothing"
    phases = []
    assert not h.tick()
    phases.append(sd.phase)
    h.post(ChildExited(4242, 0, "frontend"))
    assert h.frontends.restarts == [], "not restarted while stopping"
    assert sockets.take_slot(h.pool("a").sem)    # a connection waits in pool a's queue
    assert not h.tick()
    phases.append(sd.phase)
    assert h.calls() == [], "workers keep serving until the queues are empty"
    sockets.give_slot(h.pool("a").sem)
    assert not h.tick()
    phases.append(sd.phase)
    assert h.calls() == [("drain", "a#1", "hostd stopping")]
    assert h.connections.calls == [("fail_queue", "b")], "b has nobody to serve its queue"
    assert (h.pool("a").state, h.pool("b").state) == (P.STOPPING, P.STOPPING)
    h.exit(w1, 0)
    assert h.calls() == [], "no respawn while stopping"
    assert h.tick()
    phases.append(sd.phase)
    assert phases == [StopPhase.FRONTENDS, StopPhase.QUEUES, StopPhase.WORKERS, StopPhase.DONE]
    assert h.calls() == [("close_zygote",), ("wait_children", 5.0)]
    assert h.frontends.channels_closed == 1
    assert h.pool("a").state == P.STOPPED


def test_stop_phases_move_on_at_their_deadlines(make_house):
    h = started(make_house, pool_config("a", health={"shutdown_limit": 5}))
    h.frontends.add(0, 4242)                        # never exits
    h.calls()
    sd = h.sup.shutdown
    h.sup.stop("signal SIGINT")
    h.tick(5.9)
    assert sd.phase == StopPhase.FRONTENDS
    sockets.take_slot(h.pool().sem)                 # and a connection nobody takes
    h.tick(0.1)                                     # min(header_timeout, 5) + 1
    assert sd.phase == StopPhase.QUEUES
    h.tick(4.9)
    assert sd.phase == StopPhase.QUEUES
    h.tick(0.1)
    assert sd.phase == StopPhase.WORKERS and h.calls() == [("drain", "a#1", "hostd stopping")]
    h.tick(5.9)
    assert sd.phase == StopPhase.WORKERS
    assert h.calls() == [("kill", "a#1", "did not exit within shutdown_limit (5s)")]
    assert h.tick(0.1)                              # largest shutdown_limit + 1
    assert sd.phase == StopPhase.DONE
    assert h.calls() == [("kill_all",), ("close_zygote",), ("wait_children", 5.0)]


def test_stop_kills_workers_left_at_the_deadline(make_house):
    h = started(make_house, pool_config("a", health={"shutdown_limit": 50}))
    sd = h.sup.shutdown
    h.sup.stop("signal SIGTERM")
    assert not h.tick()
    assert sd.phase == StopPhase.WORKERS, "no front end, no queue: straight to the workers"
    assert h.calls() == [("drain", "a#1", "hostd stopping")]
    assert not h.tick(50.5)
    assert h.calls() == [("kill", "a#1", "did not exit within shutdown_limit (50s)")]
    assert h.tick(0.5)                              # largest shutdown_limit + 1
    assert sd.phase == StopPhase.DONE
    assert h.calls() == [("kill_all",), ("close_zygote",), ("wait_children", 5.0)]
    assert h.processes.sigkills == ["a#1", "a#1"]


def test_frontend_that_exits_is_restarted(make_house):
    h = started(make_house, pool_config("a"))
    h.frontends.add(3, 4343)
    h.post(ChildExited(4343, 256, "frontend"))
    assert h.frontends.restarts == [3] and h.frontends.by_slot == {}


# ============================================================================ views
def test_counters_never_go_backwards_across_exits(make_house):
    h = started(make_house, pool_config("a", bindings=["a.test", "b.test/api"]))
    (w1,) = h.workers()
    w1.board.write(10, 2, 3, h.clock.now, w1.pid)
    w1.board.write_counts(1000, [6, 0, 5, 0, 1, 0, 500,
                                 4, 0, 3, 0, 0, 1, 300])

    def totals():
        (doc,) = h.views.counters()["pools"]
        return doc

    before = totals()
    assert (before["requests"], before["active"], before["bytes_in"], before["bytes_out"]) == \
        (10, 2, 1000, 800)
    assert before["responses"] == {"1xx": 0, "2xx": 8, "3xx": 0, "4xx": 1, "5xx": 1}
    assert [(b["binding"], b["requests"], b["bytes_out"]) for b in before["bindings"]] == \
        [("a.test", 6, 500), ("b.test/api", 4, 300)]
    assert before["crashes"] == 0 and before["workers"] == 1
    assert h.exit(w1, 1, cpu=1.5) == ("crashed (exit 1)", True)
    after = totals()
    assert h.connections.calls == [("released_slots", "a#1"), ("give_back", "a", 3)]
    assert (after["requests"], after["bytes_in"], after["bytes_out"]) == (10, 1000, 800)
    assert after["responses"] == before["responses"]
    assert after["bindings"] == before["bindings"]
    assert after["crashes"] == 1 and after["active"] == 0 and after["cpu_seconds"] == 1.5
    w2 = newest(h)
    h.up(w2)
    w2.board.write(1, 0, 0, h.clock.now, w2.pid)
    w2.board.write_counts(10, [1, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0])
    later = totals()
    assert (later["requests"], later["bytes_in"], later["bytes_out"]) == (11, 1010, 805)
    assert later["responses"]["2xx"] == 9 and later["bindings"][0]["requests"] == 7
    h.commands.recycle_worker(w2.pid)
    h.up(newest(h))
    h.exit(w2, 0)
    last = totals()
    for key in ("requests", "bytes_in", "bytes_out", "crashes", "cpu_seconds"):
        assert before[key] <= after[key] <= later[key] <= last[key], key
    assert last["crashes"] == 1 and last["recycles"] == {"on_demand": 1}
    assert last["requests"] == 11


def test_requests_per_second_from_the_samples(make_house):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    h.tick()
    w1.board.write(30, 0, 0, 0.0, w1.pid)
    h.tick(1.0)
    w1.board.write(60, 0, 0, 0.0, w1.pid)
    h.tick(1.0)
    assert h.views.counters("a")["pools"][0]["requests_per_second"] == 30.0
    assert h.views.counters("zz") ["pools"] == []


def test_queue_full_counts_go_to_the_pool(make_house):
    h = started(make_house, pool_config("a"))
    h.post(QueueFull({"a": 3, "gone": 1}))
    h.post(QueueFull({"a": 2}))
    assert h.pool().totals.queue_full == 5
    assert h.views.counters()["pools"][0]["queue_full"] == 5


def test_live_requests_answers_when_replies_arrive_without_blocking(make_house):
    h = started(make_house, pool_config("a", processes=2))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    answers = []
    d = h.commands.live_requests()
    d.then(lambda *a: answers.append(a))
    asks = h.processes.messages(kind=protocol.REQUESTS)
    assert asks == [{"t": protocol.REQUESTS, "seq": 1}] * 2
    assert answers == [], "nobody answered yet: the loop goes on"
    h.processes.message(w1, {"t": protocol.REQUESTS_REPLY, "seq": 1,
                             "requests": [{"path": "/slow", "elapsed": 1.5}]})
    h.route()
    h.post(RequestsReply(w2, 99, [{"path": "/stale", "elapsed": 9.0}]))   # another query's
    assert answers == []
    h.processes.message(w2, {"t": protocol.REQUESTS_REPLY, "seq": 1,
                             "requests": [{"path": "/slower", "elapsed": 3.0}, "junk"]})
    h.route()
    assert answers == [(200, {"requests": [
        {"path": "/slower", "elapsed": 3.0, "pool": "a", "worker_pid": w2.pid},
        {"path": "/slow", "elapsed": 1.5, "pool": "a", "worker_pid": w1.pid}]})]
    assert h.views.queries == {}


def test_live_requests_deadline_answers_what_arrived(make_house):
    h = started(make_house, pool_config("a", processes=2))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    answers = []
    h.views.live_requests("a", timeout=1.0).then(lambda *a: answers.append(a))
    h.post(RequestsReply(w1, 1, [{"path": "/x", "elapsed": 0.1}]))
    h.tick(0.9)
    assert answers == []
    h.tick(0.1)
    assert answers == [(200, {"requests": [
        {"path": "/x", "elapsed": 0.1, "pool": "a", "worker_pid": w1.pid}]})]
    # nobody to ask: answered at once
    h.views.live_requests("zz").then(lambda *a: answers.append(a))
    assert answers[-1] == (200, {"requests": []})


def test_unhealthy_replacement_recycle_ready_reason_and_elapsed(make_house, logs):
    h = started(make_house, pool_config("a"))
    (w1,) = h.workers()
    h.clock.advance(100.0)                  # long after w1 started
    unhealthy(h, w1, "request_timeout (30s) passed")
    assert h.calls() == [("spawn", "a", "replace unhealthy worker 1")]
    w2 = newest(h)
    h.processes.start(w2)
    h.clock.advance(0.25)
    h.processes.ready(w2)
    h.route()
    (ready,) = logs.events("recycle_ready")
    assert ready["REASON"] == "unhealthy: request_timeout (30s) passed"
    assert ready["ELAPSED_MS"] == 250.0
    assert (ready["WORKER_PID"], ready["OLD_PID"]) == (w2.pid, w1.pid)
    assert h.calls() == [("drain", "a#1", "unhealthy: request_timeout (30s) passed")]


# ============================================================================ more triggers
def saturate(worker, since):
    """The worker has been at full capacity since `since` (its scoreboard's signal)."""
    doubles = worker.board.doubles()
    try:
        doubles[worker.board.BUSY_SINCE] = since
    finally:
        doubles.release()


def test_saturated_garden_grows(make_house):
    h = started(make_house, pool_config("a", processes=2))
    (w1,) = h.workers()
    saturate(w1, w1.ready_at)
    h.tick(1.0)
    assert w1.busy_frac == 1.0
    assert h.calls() == [("spawn", "a", "saturated")]
    h.tick(1.0)
    assert h.calls() == [], "one starting: no more"


def test_saturated_worker_sheds_idle_connections_to_one_with_room(make_house):
    h = started(make_house, pool_config("a", processes=2))
    h.processes.spawn(h.pool(), "queue waiting")
    w1, w2 = h.workers()
    h.up(w2)
    h.calls()
    w1.board.write(9, 1, 5, h.clock.now, w1.pid)
    w2.board.write(1, 0, 1, h.clock.now, w2.pid)
    saturate(w1, w1.ready_at)
    h.tick(1.0)
    assert h.calls() == []
    assert h.processes.messages(w1, protocol.SHED) == [{"t": protocol.SHED, "n": 2}]
    assert h.processes.messages(w2, protocol.SHED) == []


@pytest.mark.parametrize("action", ["recycle", "kill"])
def test_cpu_action_over_cpu_max(make_house, action):
    h = started(make_house, pool_config("a", limits={"cpu_max": 100, "cpu_action": action,
                                                     "cpu_interval": 60.0}))
    (w1,) = h.workers()
    over = {"pct": None}
    h.pool().limits = types.SimpleNamespace(cpu_over=lambda lim, now: over["pct"])
    h.tick()
    assert h.calls() == []
    over["pct"] = 250.0
    h.tick(1.0)
    if action == "recycle":
        assert h.calls() == [("spawn", "a", "recycle: cpu")]
        assert dict(h.pool().recycles) == {"cpu": 1}
    else:
        assert h.calls() == [("kill", "a#1", "cpu_action kill: cpu 250% over cpu_interval "
                                             "(60s) passed cpu_max (100%)")]
        assert w1.state == W.STOPPING


def test_orphan_action_runs_and_its_output_is_logged_when_it_ends(make_house, logs,
                                                                  monkeypatch):
    import os

    from hostd.supervisor import health as health_mod
    started_with = []

    class FakeChild:
        pid = 6_000_001

        def __init__(self, argv, **kw):
            started_with.append(argv)
            r, w = os.pipe()
            os.write(w, b"core dumped\n")
            os.close(w)
            self.stdout = os.fdopen(r, "rb")
            self.returncode = None

    monkeypatch.setattr(health_mod.subprocess, "Popen", FakeChild)
    h = started(make_house, pool_config("a", health={"orphan": True,
                                                     "orphan_action": "gcore {pid} # {pool}"}))
    (w1,) = h.workers()
    unhealthy(h, w1, "stuck")
    assert started_with == [["/bin/sh", "-c", f"gcore {w1.pid} # a"]]
    assert h.calls() == [("track", FakeChild.pid, "orphan_action"),
                         ("spawn", "a", "replace orphaned worker 1")]
    h.reactor.poll(0, h.route)                 # its output arrives
    h.post(ChildExited(FakeChild.pid, 0, "orphan_action"))
    (done,) = logs.events("orphan_action")
    assert (done["OUTPUT"], done["WORKER_PID"]) == ("core dumped\n", w1.pid)
    assert h.health.actions == {}


def test_reload_resizes_the_queue(make_house):
    cfg = pool_config("a", queue_length=16)
    h = started(make_house, cfg)
    pool = h.pool()
    h.reload({"a": dataclasses.replace(cfg, queue_length=20)})
    assert (pool.queue_len, pool.sem_value(), pool.sem_debt) == (20, 20, 0)
    for _ in range(18):                         # 18 connections wait in the queue
        assert sockets.take_slot(pool.sem)
    h.reload({"a": dataclasses.replace(cfg, queue_length=10)})
    assert (pool.queue_len, pool.sem_value(), pool.sem_debt) == (10, 0, 8)


def test_reload_says_what_needs_a_restart(make_house, logs):
    from supervisor_fakes import main_config
    cfg = pool_config("a")
    h = started(make_house, cfg)
    new_main = main_config(listen=(("127.0.0.1", 8081),), run_dir=h.main.run_dir / "x")
    h.reload({"a": cfg}, main=new_main)
    assert [e["MESSAGE"] for e in logs.events("reload")][-2:] == [
        "listen/frontends changed: restart hostd to apply them",
        "run_dir changed: restart hostd to apply it"]
    assert h.registry.main is new_main and h.calls() == []


def test_load_adds_good_and_broken_pools(make_house):
    h = make_house()
    err = hconfig.ConfigError("/x/c.toml", None, "TOML syntax error")
    with mock.patch.object(hconfig, "load_pool_files",
                           lambda main, cache=None: ({"b": pool_config("b"), "a": pool_config("a")},
                                         {"c": as_broken("c", [err])})):
        h.pools.load()
    h.route()
    assert h.calls() == [("spawn", "a", "always_running"), ("spawn", "b", "always_running")]
    assert h.pool("c").state == P.FAILED and h.pool("c").error == "/x/c.toml: TOML syntax error"


def test_signals_are_dispatched_to_their_handlers(make_house):
    cfg = pool_config("a")
    h = started(make_house, cfg)
    h.sup._dispatch_signal(signal.SIGCHLD)
    assert h.calls() == [("reap",)]
    with mock.patch.object(hconfig, "load_main", lambda path: h.registry.main), \
            mock.patch.object(hconfig, "load_pool_files", lambda m, cache=None: ({}, {})):
        h.sup._dispatch_signal(signal.SIGHUP)
    assert h.calls() == [("drain", "a#1", "removed from configuration")]
    h.sup._dispatch_signal(signal.SIGTERM)
    assert h.registry.stopping and h.sup.shutdown.phase == StopPhase.FRONTENDS
    h.sup._dispatch_signal(signal.SIGINT)
    assert h.frontends.stops == 1


def test_parked_connection_goes_to_connections(make_house):
    import os
    h = started(make_house, pool_config("a"))
    r, w = os.pipe()
    h.post(events_mod.ConnectionParked("a", r, b"GET / HTTP/1.1\r\n"))
    os.close(w)
    assert h.connections.calls == [("park", "a", r)]


def test_every_event_has_a_handler_on_the_supervisor():
    from hostd.supervisor.loop import Supervisor
    assert all(callable(getattr(Supervisor, "on_" + ev.name, None)) for ev in events_mod.ALL)


def test_opt_out_is_warned_at_load_and_at_every_reload(make_house, logs):
    """[isolation] enabled = false is never silent: one `unisolated` warning per opted-out
    pool when the pools are loaded and after every reload, changed or not; a pool
    without a table (the isolated default) gets none."""
    out = hconfig.Isolation(enabled=False)
    h = make_house()
    with mock.patch.object(hconfig, "load_pool_files",
                           lambda main, cache=None: ({"a": pool_config("a", isolation=out),
                                          "b": pool_config("b")}, {})):
        h.pools.load()
    assert [e["POOL"] for e in logs.events("unisolated")] == ["a"]
    assert "enabled = false" in logs.events("unisolated")[0]["MESSAGE"]
    h.reload({"a": pool_config("a", isolation=out), "b": pool_config("b")})   # unchanged
    h.reload({"a": pool_config("a", isolation=out, threads=4), "b": pool_config("b")})
    assert [e["POOL"] for e in logs.events("unisolated")] == ["a", "a", "a"]
    h.reload({"a": pool_config("a"), "b": pool_config("b")})                  # opted back in
    assert len(logs.events("unisolated")) == 3


def test_the_tick_walks_only_pools_with_workers(make_house):
    """Density: the duties walk `registry.staffed` (pools with worker records), so cold
    pools cost the tick nothing; a pool joins with its first worker record and leaves
    with its last, and its requests/s is sampled until its window is flat, then 0."""
    cold = [pool_config(f"c{i}", start_mode="on_demand") for i in range(50)]
    h = make_house(pool_config("a"), *cold)
    (w1,) = h.workers("a")
    h.up(w1)
    assert [p.name for p in h.registry.staffed_pools()] == ["a"]
    with mock.patch.object(h.sup.sizing, "grow", wraps=h.sup.sizing.grow) as grow, \
            mock.patch.object(h.sup.health, "_act", wraps=h.sup.health._act):
        h.tick(0.05)
        assert [c.args[0].name for c in grow.call_args_list] == ["a"]
    h.tick(1.0)
    assert set(h.registry.sampled) == {id(h.pool("a"))}
    h.commands.stop_pool("a")
    h.exit(w1, 0)
    assert h.registry.staffed_pools() == []
    for _ in range(12):                  # the 10 s window goes flat: no more samples
        h.tick(1.0)
    assert h.registry.sampled == {} and h.views.counters("a")["pools"][0]["requests_per_second"] == 0


# ============================================================================ memory pressure
def test_memory_pressure_stops_idle_workers_oldest_first_never_active_ones(make_house, logs):
    """[hostd] idle_pressure: above it (the figure is FakePlacement.pressure_value, what
    kernel.psi would read), each second the idle READY workers go oldest-idle first,
    one per pool per turn, ahead of idle_timeout (0 here: never); a busy one stays, and
    an always_running pool keeps its last. Crossing the threshold is logged once."""
    from hostd.config import PressureRule
    from supervisor_fakes import main_config
    rule = PressureRule("memory", "some", "avg10", 10.0, "memory some avg10 > 10")
    main = main_config(idle_pressure=rule)
    cfgs = [pool_config(n, start_mode="on_demand", idle_timeout=0.0) for n in "abc"]
    h = started(make_house, *cfgs, pool_config("keep"), main=main)
    for n in "abc":
        h.processes.spawn(h.pool(n), "demand")
        (w,) = h.workers(n)
        h.up(w)
    h.calls()
    now = h.clock.now
    wa, wb, wc = (h.workers(n)[0] for n in "abc")
    (wk,) = h.workers("keep")
    wa.board.write(3, 0, 0, now - 50.0, wa.pid)     # idle longest
    wb.board.write(3, 1, 1, now - 90.0, wb.pid)     # a request running: stays
    wc.board.write(3, 0, 0, now - 20.0, wc.pid)
    wk.board.write(3, 0, 0, now - 99.0, wk.pid)     # always_running's last: stays
    h.placement.pressure_value = 3.0
    h.tick(1.0)
    assert h.calls() == [] and logs.events("memory_pressure") == []
    h.placement.pressure_value = 25.0
    h.tick(1.0)
    assert h.calls() == [("drain", "a#1", "memory_pressure")]
    (ev,) = [e for e in logs.events("idle") if e.get("REASON") == "memory_pressure"]
    assert ev["POOL"] == "a" and "memory pressure some avg10 25.00 > 10" in ev["MESSAGE"]
    assert len(logs.events("memory_pressure")) == 1
    h.tick(1.0)
    assert h.calls() == [("drain", "c#1", "memory_pressure")]
    h.tick(1.0)
    assert h.calls() == [] and wb.state == W.READY and wk.state == W.READY
    h.placement.pressure_value = 1.0
    h.tick(1.0)
    assert len(logs.events("memory_pressure")) == 2      # back below: said once


def test_pressure_victims_policy():
    from hostd.supervisor.policy import PressureCandidate, pressure_victims
    c = [PressureCandidate(f"{p}{i}", p, 100.0 - i * 10 - ord(p), 0, False)
         for p in "xyz" for i in range(4)]
    # 12 idle: a fifth is 2; one per pool; oldest first
    assert pressure_victims(c, 200.0) == ["z3", "y3"]
    assert pressure_victims([PressureCandidate("n", "p", 199.5, 0, False)], 200.0) == []
    assert pressure_victims([PressureCandidate("k", "p", 0.0, 0, True)], 200.0) == []
    assert pressure_victims([PressureCandidate("b", "p", 0.0, 2, False)], 200.0) == []


def test_idle_pressure_refused_where_the_host_has_no_psi(monkeypatch):
    """A host without pressure files: hostd refuses to start, naming the key (a
    configured feature that would do nothing); with one, it says which file it reads."""
    from kernel import psi
    from hostd.config import PressureRule
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.records import Registry
    from supervisor_fakes import main_config
    rule = PressureRule("memory", "some", "avg10", 10.0, "memory some avg10 > 10")
    place = Placement(Registry(main_config(idle_pressure=rule), 1), None)
    monkeypatch.setattr(psi, "source", lambda resource, first=None: None)
    with pytest.raises(OSError, match="hostd.idle_pressure: this host has no pressure"):
        place.setup_pressure()
    monkeypatch.setattr(psi, "source", lambda resource, first=None: "/x/memory.pressure")
    monkeypatch.setattr(psi, "read", lambda path: {"some": {"avg10": 12.5}})
    place.setup_pressure()
    assert place.pressure() == 12.5


def test_a_state_change_sends_front_ends_only_the_changed_pools(make_house):
    """Density: stopping one pool of a thousand sends the front ends that pool's entry
    (protocol.POOL_STATES), not the whole table; a front end missing the pool's queue
    (a new one, a restarted front end) gets everything."""
    from types import SimpleNamespace

    from hostd import protocol
    from hostd.supervisor.frontends import FrontEnds
    h = started(make_house, pool_config("a"), pool_config("b"))
    a = h.pool("a")
    sent = []
    knows = SimpleNamespace(ctl=SimpleNamespace(sendall=sent.append),
                            known_fds={(a.name, id(a.queue_in))})
    blank = SimpleNamespace(ctl=SimpleNamespace(sendall=sent.append), known_fds=set())
    full = []
    fake = SimpleNamespace(by_slot={0: knows, 1: blank}, send_pools=full.append)
    FrontEnds.broadcast(fake, [a])
    (msg,) = [protocol.decode(m) for m in sent]
    assert msg["t"] == protocol.POOL_STATES and list(msg["pools"]) == ["a"]
    assert full == [blank]
    sent.clear(), full.clear()
    FrontEnds.broadcast(fake)                    # no list: the whole table to each
    assert sent == [] and full == [knows, blank]
