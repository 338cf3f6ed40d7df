"""Pool and worker lifecycles driven without processes: every transition, legal or not."""
import itertools

import pytest

from hostd.lifecycle import (POOL_TRANSITIONS, WORKER_TRANSITIONS, IllegalTransition,
                             Lifecycle, PoolState, RapidFail, WorkerState, pool_lifecycle,
                             worker_lifecycle)


@pytest.mark.parametrize("table,states", [(POOL_TRANSITIONS, PoolState),
                                          (WORKER_TRANSITIONS, WorkerState)])
def test_every_pair_is_allowed_exactly_as_the_table_says(table, states):
    assert set(table) == set(states), "every state has a row"
    for old, new in itertools.product(states, states):
        seen = []
        life = Lifecycle(table, old, "x", observer=lambda o, n, r: seen.append((o, n, r)))
        if new in table[old]:
            life.to(new, "because")
            assert life.state is new and seen == [(old, new, "because")]
            assert life.history[-1] == (old, new, "because")
        else:
            with pytest.raises(IllegalTransition) as err:
                life.to(new, "because")
            assert life.state is old and seen == []
            assert err.value.old is old and err.value.new is new


def test_worker_happy_path_and_exits():
    w = worker_lifecycle("shop", 1)
    for s in (WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING, WorkerState.EXITED):
        w.to(s, "step")
    assert w.state is WorkerState.EXITED
    assert not any(w.can(s) for s in WorkerState), "exited is final"


def test_pool_failed_can_be_started_again_but_started_cannot_restart():
    p = pool_lifecycle("shop")
    p.to(PoolState.STARTED, "on_demand")
    p.to(PoolState.FAILED, "rapid-fail")
    p.to(PoolState.STARTING, "hostctl pool start")
    with pytest.raises(IllegalTransition):
        p.to(PoolState.STOPPED, "skip stopping")


def test_transitions_are_logged_with_reason(capsys):
    p = pool_lifecycle("shop")
    p.to(PoolState.STARTED, "first worker ready")
    err = capsys.readouterr().err
    assert "pool_state" in err and "POOL=shop" in err and 'REASON="first worker ready"' in err


def test_rapid_fail_window():
    rf = RapidFail(max_failures=3, interval=10)
    assert not rf.record(0.0)
    assert not rf.record(1.0)
    assert rf.record(2.0)            # 3 within 10 s
    rf.reset()
    assert not rf.record(100.0)
    assert not rf.record(105.0)
    assert not rf.record(111.0)      # 100 slid out of the window (11 s ago)
    assert rf.count(111.0) == 2
    assert rf.record(112.0)          # 105, 111, 112
