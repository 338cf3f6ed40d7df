"""The warm tier's decisions (preload = true), driven through the fakes of
tests/unit/supervisor_fakes.py: when a pool zygote starts, which zygote a worker is
asked of, what retires and replaces a pool zygote, what its exit means."""
import dataclasses
import signal

from hostd import protocol
from hostd.lifecycle import PoolState, WorkerState
from hostd.supervisor import processes as processes_mod
from supervisor_fakes import logs, make_house, pool_config  # noqa: F401

P, W = PoolState, WorkerState


def preload(name="a", **kw):
    kw.setdefault("start_mode", "on_demand")
    return pool_config(name, preload=True, **kw)


def zygote_calls(h):
    return [c for c in h.calls() if c[0] == "spawn_zygote"]


def test_a_preload_pools_zygote_starts_on_the_tick_two_at_a_time(make_house):
    h = make_house(*(preload(n) for n in "abc"), pool_config("d", start_mode="on_demand"))
    assert list(h.processes.zygotes_wanted) == ["a", "b", "c"]     # not "d"
    h.tick()
    assert zygote_calls(h) == [("spawn_zygote", "a", 1), ("spawn_zygote", "b", 1)]
    h.tick()
    assert zygote_calls(h) == []              # two are booting: c waits
    h.processes.pool_zygote_up("a")
    h.tick()
    assert zygote_calls(h) == [("spawn_zygote", "c", 1)]
    assert h.views.status("a")["pools"][0]["zygote"]["state"] == "ready"
    assert h.views.status("d")["pools"][0]["zygote"] is None


def test_workers_are_asked_of_the_ready_zygote_of_their_generation(make_house):
    h = make_house(preload())
    pool = h.pool("a")
    h.tick()
    w1 = h.processes.spawn(pool, "demand")
    assert w1.via is None                      # the zygote is still importing
    rec = h.processes.pool_zygote_up("a")
    w2 = h.processes.spawn(pool, "demand")
    assert w2.via is rec and w2.in_zygote_cgroup and rec.users == 1
    h.up(w2)
    assert h.views.status("a")["pools"][0]["workers"][-1]["preloaded"] is True
    h.exit(w2, 0)
    assert rec.users == 0 and w2.via is None


def test_a_config_change_retires_the_zygote_and_wants_a_new_one(make_house, logs):
    h = make_house(preload())
    h.tick()
    old = h.processes.pool_zygote_up("a")
    h.reload({"a": preload(threads=8)})
    assert old.state == "retired" and old.chan is None
    assert "a" in h.processes.zygotes_wanted and "a" not in h.processes.pool_zygotes
    w = h.processes.spawn(h.pool("a"), "demand")
    assert w.via is None                       # never the old generation's zygote
    h.calls()
    h.tick()
    assert zygote_calls(h) == [("spawn_zygote", "a", 2)]
    assert [f["REASON"] for f in logs.events("zygote_retired")] == ["replaced"]
    # its exit, expected, restarts nothing
    h.processes.pool_zygote_exit(old, 0)
    assert h.processes.pool_zygotes["a"] is not old


def test_hostctl_pool_recycle_replaces_the_zygote_first(make_house):
    h = make_house(preload(start_mode="always_running"))
    h.tick()
    old = h.processes.pool_zygote_up("a")
    [w] = h.workers("a")
    h.up(w)
    h.calls()
    ok, _ = h.commands.recycle_pool("a")
    assert ok and old.state == "retired"
    [new] = [x for x in h.workers("a") if x is not w]
    assert new.via is None                     # the replacement imports the new code


def test_stop_and_start_retire_then_want_the_zygote(make_house):
    h = make_house(preload())
    h.tick()
    rec = h.processes.pool_zygote_up("a")
    h.commands.stop_pool("a")
    assert rec.state == "retired" and "a" not in h.processes.pool_zygotes
    assert "a" not in h.processes.zygotes_wanted
    h.commands.start_pool("a")
    assert "a" in h.processes.zygotes_wanted


def test_reload_that_adds_a_pool_renews_site_view_zygotes(make_house):
    h = make_house(preload())
    h.tick()
    rec = h.processes.pool_zygote_up("a")
    h.reload({"a": preload(), "b": pool_config("b", start_mode="on_demand")})
    assert rec.state == "retired" and "a" in h.processes.zygotes_wanted


def test_a_crash_after_ready_restarts_one_before_min_life_does_not(make_house, logs):
    h = make_house(preload(), preload("b"))
    h.tick()
    a = h.processes.pool_zygote_up("a")
    b = h.processes.pool_zygote_up("b")
    h.clock.advance(processes_mod.ZYGOTE_MIN_LIFE + 1)
    h.processes.pool_zygote_exit(a, -signal.SIGKILL)
    assert "a" in h.processes.zygotes_wanted
    assert [f["POOL"] for f in logs.events("zygote_crash")] == ["a"]
    h.processes.pool_zygote_exit(b, -signal.SIGKILL)    # ready, but too long ago? no:
    assert "b" in h.processes.zygotes_wanted            # b too lived past min life
    h.tick()
    c = h.processes.pool_zygote_up("a")
    h.processes.pool_zygote_exit(c, -signal.SIGKILL)    # died at once after its ready
    assert h.processes.pool_zygotes["a"].state == "failed"
    assert "a" not in h.processes.zygotes_wanted


def test_an_import_failure_is_failed_for_the_generation(make_house, logs):
    h = make_house(preload())
    h.tick()
    rec = h.processes.pool_zygotes["a"]
    sid = next(s for s, r in h.processes.zygote_spawning.items() if r is rec)
    del h.processes.zygote_spawning[sid]
    h.processes._pool_zygote_spawned(rec, {"t": protocol.SPAWNED, "id": sid, "pid": 7})
    h.processes.pool_zygote_says("a", {"t": protocol.STARTUP_FAILED,
                                       "error": "Traceback ...\nImportError: no module x"})
    assert rec.state == "failed" and rec.error == "ImportError: no module x"
    h.processes.pool_zygote_exit(rec, protocol.EXIT_APP_LOAD)
    h.calls()
    h.tick()
    assert zygote_calls(h) == [] and h.processes.pool_zygotes["a"] is rec
    assert h.processes.spawn(h.pool("a"), "demand").via is None
    # a new generation tries again
    h.reload({"a": dataclasses.replace(preload(), threads=2)})
    assert "a" in h.processes.zygotes_wanted


def test_pool_zygote_answers_spawns_on_its_own_channel(make_house):
    h = make_house(preload())
    h.tick()
    rec = h.processes.pool_zygote_up("a")
    w = h.processes.spawn(h.pool("a"), "demand")
    sid = next(s for s, x in h.processes.spawning.items() if x is w)
    h.processes.pool_zygote_says("a", {"t": protocol.SPAWNED, "id": sid, "pid": 4242})
    assert w.pid == 4242 and w.state == W.STARTING
    w2 = h.processes.spawn(h.pool("a"), "demand")
    sid2 = next(s for s, x in h.processes.spawning.items() if x is w2)
    h.processes.pool_zygote_says("a", {"t": protocol.SPAWN_FAILED, "id": sid2, "error": "no"})
    assert w2.state == W.EXITED and rec.users == 1


def test_a_spare_is_reaped_quietly_or_becomes_the_worker_it_is_named_for(make_house):
    h = make_house(preload())
    h.tick()
    rec = h.processes.pool_zygote_up("a")
    h.processes.pool_zygote_says("a", {"t": protocol.SPARE, "pid": 5001})
    assert h.processes.spares == {5001: rec} and rec.users == 1
    assert 5001 in h.processes.children()
    w = h.processes.spawn(h.pool("a"), "demand")
    sid = next(s for s, x in h.processes.spawning.items() if x is w)
    h.processes.pool_zygote_says("a", {"t": protocol.SPAWNED, "id": sid, "pid": 5001})
    assert w.pid == 5001 and h.processes.spares == {}
    assert rec.users == 1                 # the worker in the zygote's cgroup, not the spare
    # a spare that exits unused: reaped without a worker record, kept as an early exit
    h.processes.pool_zygote_says("a", {"t": protocol.SPARE, "pid": 5002})
    h.processes._spare_gone(5002)
    h.processes.early_exits[5002] = 0
    assert rec.users == 1 and 5002 not in h.processes.children()
    # a SPARE message read after that spare's exit is dropped
    h.processes.pool_zygote_says("a", {"t": protocol.SPARE, "pid": 5002})
    assert 5002 not in h.processes.spares


def test_memory_pressure_retires_warm_zygotes_once_no_idle_worker_is_left(make_house, logs):
    from hostd.config import PressureRule
    from supervisor_fakes import main_config
    rule = PressureRule("memory", "some", "avg10", 10.0, "memory some avg10 > 10")
    h = make_house(preload("a"), preload("b"), main=main_config(idle_pressure=rule))
    h.tick()
    a = h.processes.pool_zygote_up("a")
    h.clock.advance(5)
    b = h.processes.pool_zygote_up("b")
    w = h.processes.spawn(h.pool("b"), "demand")      # b has a worker: its zygote stays
    h.up(w)
    w.board.write(3, 1, 1, h.clock.now, w.pid)        # busy: not an idle victim either
    h.placement.pressure_value = 25.0
    h.tick(1.0)
    assert a.state == "retired" and b.state == "ready"
    (ev,) = [e for e in logs.events("idle") if e.get("REASON") == "memory_pressure"]
    assert ev["POOL"] == "a" and "zygote of pool a retired" in ev["MESSAGE"]
    assert h.views.status("a")["pools"][0]["zygote"] == {"state": "evicted"}
    h.tick(1.0)
    assert "a" not in h.processes.zygotes_wanted       # not while the pressure lasts
    assert h.processes.spawn(h.pool("a"), "demand").via is None
    h.placement.pressure_value = 1.0
    h.calls()
    h.tick(1.0)                                        # wanted again, and started
    assert ("spawn_zygote", "a", 1) in h.calls() and h.processes.zygotes_evicted == {}
    assert h.processes.pool_zygotes["a"].state == "spawning"


def test_zygote_victims_policy():
    from hostd.supervisor.policy import zygote_victims
    assert zygote_victims([]) == []
    assert zygote_victims([("a", 5.0), ("b", 1.0)]) == ["b"]
    assert zygote_victims([(str(i), float(10 - i)) for i in range(10)]) == ["9", "8"]
