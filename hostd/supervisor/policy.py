"""The supervisor's decisions, sans-IO (h11's Rule 1): what an exit means, which health
check is due, when a recycle triggers, which idle worker goes, what a reload changes,
which stop phase comes next.

Everything that decides a pool's or a worker's next state lives here or in
hostd.lifecycle. These functions take plain values (states, times, config records) and
return verdicts; the rooms do the I/O. No function here reads a clock, a file or a
socket: `now` is always given.
"""
from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

from hostd import poollimits, protocol
from hostd.lifecycle import PoolState, WorkerState
from hostd.supervisor.records import exit_text

P, W = PoolState, WorkerState

#: how long a pool without [health] gives a worker to start, and a stop to finish
DEFAULT_STARTUP_LIMIT = 90.0
DEFAULT_SHUTDOWN_LIMIT = 90.0
#: recycle reasons for a worker whose memory grows: it stops taking work at once
MEMORY_REASONS = frozenset({"private_memory", "memory_max"})


# --- exits --------------------------------------------------------------------------
def exit_verdict(state: WorkerState, code: int, startup_error: str | None,
                 oom_killed: bool) -> tuple[str, bool]:
    """What a worker's exit means.

    Takes: the state it was in, its exit code (os.waitstatus_to_exitcode: negative =
    killed by that signal), the traceback it reported (STARTUP_FAILED) and whether the
    OOM killer killed it (asked only for SIGKILL).
    Returns: (reason, failed): failed exits are crashes, startup failures and OOM kills,
    and count toward rapid-fail protection; an exit the supervisor asked for (draining,
    stopping, orphaned) is not a failure.
    """
    expected = state in (W.DRAINING, W.STOPPING, W.ORPHANED)
    startup = state == W.STARTING
    if code == protocol.EXIT_APP_LOAD or startup and not expected:
        last = startup_error.strip().splitlines()[-1] if startup_error and startup_error.strip() \
            else f"exit {code}"
        return "startup failed: " + last, True
    if code == -signal.SIGKILL and oom_killed:
        return "killed by the OOM killer (oom_kill)", True
    if expected:
        return f"exited ({exit_text(code)})", False
    return f"crashed ({exit_text(code)})", True


def is_crash(reason: str) -> bool:
    """Whether an exit verdict's reason is a crash (counted in hostd_crashes_total):
    a worker that died on its own after it was ready, or was OOM-killed."""
    return reason.startswith(("crashed", "killed by the OOM killer"))


# --- health -------------------------------------------------------------------------
class HealthCheck(str, enum.Enum):
    """The health verdicts of one worker at one moment (None: nothing to do)."""
    STARTUP_TIMEOUT = "startup_timeout"     # STARTING past startup_limit: kill, counted
    SHUTDOWN_TIMEOUT = "shutdown_timeout"   # DRAINING past shutdown_limit: kill
    PING_DUE = "ping_due"                   # READY, ping_interval since the last one
    PING_TIMEOUT = "ping_timeout"           # READY, no pong within ping_timeout: unhealthy


def health_check(state: WorkerState, now: float, health, *, spawned_at: float,
                 drain_at: float | None, ready_at: float | None, last_ping: float | None,
                 ping_sent: float | None, has_channel: bool = True) -> HealthCheck | None:
    """Which health check is due for a worker now.

    Takes: its state and times, and its pool's [health] (None for a pool without a
    config: only the default limits apply).
    Returns: a HealthCheck, or None.
    """
    startup_limit = health.startup_limit if health else DEFAULT_STARTUP_LIMIT
    shutdown_limit = health.shutdown_limit if health else DEFAULT_SHUTDOWN_LIMIT
    if state == W.STARTING:
        return HealthCheck.STARTUP_TIMEOUT if now - spawned_at > startup_limit else None
    if state == W.DRAINING:
        late = drain_at is not None and now - drain_at > shutdown_limit
        return HealthCheck.SHUTDOWN_TIMEOUT if late else None
    if state != W.READY or health is None or health.ping_interval <= 0 or not has_channel:
        return None
    if ping_sent is None:
        since = last_ping or ready_at or now
        return HealthCheck.PING_DUE if now - since >= health.ping_interval else None
    return HealthCheck.PING_TIMEOUT if now - ping_sent > health.ping_timeout else None


def health_reason(check: HealthCheck, health) -> str:
    """The log and status text of a health verdict."""
    if check == HealthCheck.STARTUP_TIMEOUT:
        limit = health.startup_limit if health else DEFAULT_STARTUP_LIMIT
        return f"not ready within startup_limit ({limit:g}s)"
    if check == HealthCheck.SHUTDOWN_TIMEOUT:
        limit = health.shutdown_limit if health else DEFAULT_SHUTDOWN_LIMIT
        return f"did not exit within shutdown_limit ({limit:g}s)"
    if check == HealthCheck.PING_TIMEOUT:
        return f"no answer to ping within ping_timeout ({health.ping_timeout:g}s)"
    return "ping due"


class UnhealthyAction(str, enum.Enum):
    ORPHAN = "orphan"        # keep it for debugging, out of the queue; a replacement serves
    KILL = "kill"            # kill it now
    REPLACE = "replace"      # overlapping: start a replacement, drain it once that is ready
    DRAIN = "drain"          # no replacement possible (pool not started, hostd stopping)


def unhealthy_action(health, pool_started: bool, stopping: bool) -> UnhealthyAction:
    """What to do with a READY worker that failed a health check ([health] orphan,
    unhealthy_action)."""
    if health.orphan:
        return UnhealthyAction.ORPHAN
    if health.unhealthy_action == "kill":
        return UnhealthyAction.KILL
    if pool_started and not stopping:
        return UnhealthyAction.REPLACE
    return UnhealthyAction.DRAIN


# --- recycling ----------------------------------------------------------------------
def recycle_plan(recycling, processes: int, slot: int, first_life: bool,
                 now: float) -> tuple[float | None, int]:
    """A new worker's time and request limits: (recycle_at or None, request_limit or 0).
    A garden's first workers get staggered fractions ((slot+1)/N) so they never all
    recycle at once; replacements then keep that spread with full periods."""
    n = max(processes, 1)
    share = (min(slot, n - 1) + 1) / n if first_life else 1.0
    at = now + recycling.time * share if recycling.time > 0 else None
    limit = max(1, int(recycling.requests * share)) if recycling.requests > 0 else 0
    return at, limit


def recycle_due(now: float, recycle_at: float | None, request_limit: int, requests: int,
                vmsize: int | None, virtual_memory: int) -> str | None:
    """Which polled recycle trigger fired for a READY worker not yet being recycled:
    "time", "requests", "virtual_memory" (vmsize None: not sampled this turn) or None.
    The memory triggers are kernel events (memory_recycle)."""
    if recycle_at is not None and now >= recycle_at:
        return "time"
    if request_limit and requests >= request_limit:
        return "requests"
    if vmsize is not None and virtual_memory and vmsize > virtual_memory:
        return "virtual_memory"
    return None


def schedule_due(stamp: str, schedule, fired: set) -> bool:
    """Whether [recycling] schedule fires at `stamp` ("YYYY-MM-DD HH:MM", local time)
    and has not fired at that minute yet."""
    return bool(schedule) and stamp[-5:] in schedule and stamp not in fired


def memory_recycle(kinds, high_flag, max_flag) -> tuple[str, bool] | None:
    """A worker's kernel memory events -> (recycle reason, urgent) or None: at its hard
    limit recycle now, before the OOM killer picks it; past private_memory, in turn."""
    if max_flag in kinds:
        return "memory_max", True
    if high_flag in kinds:
        return "private_memory", False
    return None


class RecycleMode(str, enum.Enum):
    QUEUE = "queue"               # another recycle of the pool is under way: wait
    DRAIN_FIRST = "drain_first"   # memory: drain now, then start the replacement
    OVERLAP = "overlap"           # start the replacement, drain once it is ready
    RESPAWN_AFTER = "respawn"     # drain, start the replacement when it has exited
    DRAIN_ONLY = "drain"          # pool not started or hostd stopping: no replacement


def recycle_mode(reason: str, urgent: bool, busy: bool, overlapping: bool,
                 pool_started: bool, stopping: bool) -> RecycleMode:
    """How a recycle of a worker proceeds. One recycle at a time per pool (busy: one is
    under way), except urgent ones (a worker at its memory limit)."""
    if busy and not urgent:
        return RecycleMode.QUEUE
    serving = pool_started and not stopping
    if reason in MEMORY_REASONS and serving:
        return RecycleMode.DRAIN_FIRST
    if overlapping and serving:
        return RecycleMode.OVERLAP
    return RecycleMode.RESPAWN_AFTER if serving else RecycleMode.DRAIN_ONLY


# --- sizing -------------------------------------------------------------------------
@dataclass(frozen=True)
class IdleCandidate:
    key: object          # the caller's handle for the worker
    last: float          # last activity (monotonic), at least its ready time
    active: int          # requests running now


def idle_victim(candidates: list[IdleCandidate], alive: int, always_running: bool,
                idle_timeout: float, now: float, draining: bool):
    """The READY worker that ends for idle_timeout now, or None: one at a time (none
    while another drains), the longest idle first, never below one worker for an
    always_running pool."""
    if idle_timeout <= 0 or draining or alive <= (1 if always_running else 0):
        return None
    idle = [c for c in candidates if c.active == 0 and now - c.last >= idle_timeout]
    return min(idle, key=lambda c: c.last).key if idle else None


@dataclass(frozen=True)
class PressureCandidate:
    key: object          # the caller's handle for the worker
    pool: str
    last: float          # last activity (monotonic), at least its ready time
    active: int          # requests running now
    keep: bool           # the pool's last worker of an always_running pool


#: of the idle workers, the share stopped per second while memory pressure lasts (at
#: least one): quick enough to matter within seconds, slow enough that the pressure's
#: 10 s average can answer before every idle worker is gone
PRESSURE_SHARE = 0.2
#: a worker counts as idle for memory pressure after this long without a request
PRESSURE_IDLE = 1.0


def pressure_victims(candidates: list[PressureCandidate], now: float) -> list:
    """Memory pressure above [hostd] idle_pressure: the READY workers to stop this
    second, oldest-idle first, ahead of their idle_timeout. Only idle ones (no request
    running, none for PRESSURE_IDLE), never an always_running pool's last worker, at
    most one per pool per turn (its garden shrinks one at a time, as for idle_timeout),
    and PRESSURE_SHARE of the idle ones (at least one). Returns their keys."""
    idle = sorted((c for c in candidates if c.active == 0 and not c.keep
                   and now - c.last >= PRESSURE_IDLE), key=lambda c: c.last)
    n = max(1, int(len(idle) * PRESSURE_SHARE))
    out, pools = [], set()
    for c in idle:
        if len(out) >= n:
            break
        if c.pool in pools:
            continue
        pools.add(c.pool)
        out.append(c.key)
    return out


def zygote_victims(candidates: list[tuple], share: float = PRESSURE_SHARE) -> list:
    """Memory pressure and no idle worker left to stop this second: the warm tier goes
    next. Takes (key, ready_at) of the ready pool zygotes whose pools have no live
    worker; returns the keys of PRESSURE_SHARE of them (at least one), the longest
    ready first (the least likely to be wanted soon: they have waited longest)."""
    ordered = sorted(candidates, key=lambda c: c[1])
    return [k for k, _ in ordered[:max(1, int(len(ordered) * share))]] if ordered else []


#: a web garden grows on its queue when two looks, within this many seconds, each found
#: a connection waiting while every worker was busy: one look can fall in the instant
#: between a front end's enqueue and a worker's pull (seen: a garden grew while its only
#: worker took 8 connections in turn), a queue under load is found waiting again and again
GROW_WINDOW = 0.5


def grow_due(waiting: bool, last_seen: float | None, now: float) -> tuple[bool, float | None]:
    """Whether the garden grows on its queue now. Takes whether a connection waits now,
    when one was last seen waiting (None: not lately) and now. Returns (grow, the new
    last_seen)."""
    if not waiting:
        return False, last_seen
    if last_seen is not None and now - last_seen <= GROW_WINDOW:
        return True, None
    return False, now


def may_grow(alive: int, processes: int, starting: int) -> bool:
    """Whether a web garden may grow on its queue now: it has workers, fewer than
    `processes`, and none starting (one new worker at a time). It grows when a
    connection then waits in the queue (workers pull only when they have capacity)."""
    return 0 < alive < processes and starting == 0


def respawn_needed(pool_state: PoolState, always_running: bool, alive: int,
                   stopping: bool) -> bool:
    """An always_running pool that was left without a live worker gets one."""
    return pool_state == P.STARTED and always_running and alive == 0 and not stopping


# --- pools --------------------------------------------------------------------------
def unsupported(cfg, has_cgroups: bool) -> str | None:
    """What this host cannot apply of a pool's config (a clear error naming the file
    and keys, never ignored), or None."""
    if has_cgroups:
        return None
    wanted = [k for k, v in (("limits.worker_memory_max", cfg.limits.worker_memory_max),
                             ("recycling.private_memory", cfg.recycling.private_memory))
              if v] + poollimits.wanted(cfg.limits)
    if wanted:
        return (f"{cfg.file}: {', '.join(wanted)}: needs cgroups, which this hostd "
                "does not have (run it as root on a host with cgroups)")
    return None


class ReloadStep(str, enum.Enum):
    RETIRE = "retire"            # removed from the configuration: drain, reroute its queue
    BROKEN = "broken"            # its file is broken now: retire the running one, add it failed
    ADD = "add"                  # new pool
    REPLACE = "replace"          # retire the old record, add a new one (fixed, failed, ...)
    CHANGE = "change"            # same record, new generation of workers


def reload_plan(running: dict, pools: dict, broken: dict,
                cannot_apply) -> list[tuple[ReloadStep, str, str]]:
    """What a reload (SIGHUP) does, pool by pool, in order.

    Takes: running {name: (cfg or None, PoolState)}, the new good pools {name: cfg},
    the broken ones {name: errors}, and cannot_apply(cfg) -> error or None.
    Returns: [(step, name, reason)].
    """
    plan = [(ReloadStep.RETIRE, name, "removed from configuration")
            for name in running if name not in pools and name not in broken]
    for name in sorted(broken):
        plan.append((ReloadStep.BROKEN, name, "configuration broken"))
    for name, cfg in sorted(pools.items()):
        if name not in running:
            plan.append((ReloadStep.ADD, name, ""))
            continue
        old_cfg, state = running[name]
        if old_cfg is None:
            plan.append((ReloadStep.REPLACE, name, "configuration fixed"))
        elif old_cfg == cfg:
            continue
        elif cannot_apply(cfg) is not None:
            plan.append((ReloadStep.REPLACE, name, "configuration cannot be applied"))
        elif state == P.FAILED:
            plan.append((ReloadStep.REPLACE, name, "configuration changed"))
        else:
            plan.append((ReloadStep.CHANGE, name, "config changed"))
    return plan


# --- stop ---------------------------------------------------------------------------
class StopPhase(str, enum.Enum):
    """The phases of a stop (SIGTERM), in order."""
    RUNNING = "running"
    FRONTENDS = "frontends"   # front ends stop accepting, hand off the heads they read, exit
    QUEUES = "queues"         # workers keep serving until the pool queues are empty
    WORKERS = "workers"       # every worker drains, within the largest shutdown_limit
    DONE = "done"             # workers gone (or killed at the deadline): exit


#: what moves a stop on: phase -> the condition (as text, for the docs) that ends it
STOP_TRANSITIONS = {
    StopPhase.RUNNING: (StopPhase.FRONTENDS, "SIGTERM/SIGINT"),
    StopPhase.FRONTENDS: (StopPhase.QUEUES, "no front end left, or header_timeout (max 5 s) + 1 s"),
    StopPhase.QUEUES: (StopPhase.WORKERS, "no connection waits in a queue, or 5 s"),
    StopPhase.WORKERS: (StopPhase.DONE, "no worker left, or the largest shutdown_limit + 1 s"),
}


def next_stop_phase(phase: StopPhase, now: float, deadline: float, *, frontends_left: bool,
                    queues_waiting: bool, workers_left: bool) -> StopPhase:
    """The phase a stop is in after this turn (at most one step a turn)."""
    if phase == StopPhase.FRONTENDS:
        done = not frontends_left or now >= deadline
    elif phase == StopPhase.QUEUES:
        done = not queues_waiting or now >= deadline
    elif phase == StopPhase.WORKERS:
        done = not workers_left or now >= deadline
    else:
        return phase
    return STOP_TRANSITIONS[phase][0] if done else phase
