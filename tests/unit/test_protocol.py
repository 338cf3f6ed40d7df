"""hostd/protocol.py: every message kind has a constructor that sends what was sent
before it existed, the PARK frame, the documentation of the kinds, and the typed spawn
spec / front-end settings with config's defaults. No processes, no root."""
from __future__ import annotations

import ast
import dataclasses
import io
import json
import tokenize
from pathlib import Path

import pytest

from hostd import config, protocol

SOURCE = Path(protocol.__file__).read_text()

ROUTES = [["alpha", "alpha.example"], ["beta", "*:8080/api"]]
SPEC = {"pool": "alpha", "worker_id": 3}

#: kind constant -> (constructor call, the message as it was written by hand before)
KINDS = {
    "READY": (lambda: protocol.ready([["zygote", 1.5], ["fork", 1.75]]),
              {"t": "ready", "trace": [["zygote", 1.5], ["fork", 1.75]]}),
    "STARTUP_FAILED": (lambda: protocol.startup_failed("Traceback ..."),
                       {"t": "startup_failed", "error": "Traceback ..."}),
    "PONG": (lambda: protocol.pong(7, False, 2),
             {"t": "pong", "seq": 7, "stuck": False, "busy": 2}),
    "REQUESTS_REPLY": (lambda: protocol.requests_reply(4, [{"method": "GET", "path": "/"}]),
                       {"t": "requests_reply", "seq": 4,
                        "requests": [{"method": "GET", "path": "/"}]}),
    "UNHEALTHY": (lambda: protocol.unhealthy("request_timeout: GET / running 9.0s"),
                  {"t": "unhealthy", "reason": "request_timeout: GET / running 9.0s"}),
    "MEMORY_FENCE": (protocol.memory_fence, {"t": "memory_fence"}),
    "DRAIN": (lambda: protocol.drain("recycle: requests"),
              {"t": "drain", "reason": "recycle: requests"}),
    "ROUTES": (lambda: protocol.routes(ROUTES), {"t": "routes", "routes": ROUTES}),
    "SHED": (lambda: protocol.shed(5), {"t": "shed", "n": 5}),
    "PING": (lambda: protocol.ping(9), {"t": "ping", "seq": 9}),
    "REQUESTS": (lambda: protocol.requests(11), {"t": "requests", "seq": 11}),
    "ORPHAN": (protocol.orphan, {"t": "orphan"}),
    "ACCESS_LOG": (protocol.access_log, {"t": "access_log"}),
    "POOL_FDS": (lambda: protocol.pool_fds(["alpha", "beta"], [True, False]),
                 {"t": "pool_fds", "names": ["alpha", "beta"], "conn_sems": [True, False]}),
    "POOLS": (lambda: protocol.pools({"alpha": {"state": "started", "lb": "http_503",
                                                "max_body": -1}}, ROUTES),
              {"t": "pools", "pools": {"alpha": {"state": "started", "lb": "http_503",
                                                 "max_body": -1}}, "routes": ROUTES}),
    "POOL_STATES": (lambda: protocol.pool_states({"alpha": {"state": "stopped", "lb": "tcp_reset",
                                                            "max_body": -1}}),
                    {"t": "pool_states", "pools": {"alpha": {"state": "stopped",
                                                             "lb": "tcp_reset", "max_body": -1}}}),
    "STOP": (protocol.stop, {"t": "stop"}),
    "COUNTERS": (lambda: protocol.counters({"alpha": 3}),
                 {"t": "counters", "queue_full": {"alpha": 3}}),
    "SPAWN": (lambda: protocol.spawn(12, SPEC), {"t": "spawn", "id": 12, "spec": SPEC}),
    "SPAWNED": (lambda: protocol.spawned(12, 4321), {"t": "spawned", "id": 12, "pid": 4321}),
    "SPAWN_ZYGOTE": (lambda: protocol.spawn_zygote(13, protocol.WorkerSpec.from_spec(SPEC)),
                     {"t": "spawn_zygote", "id": 13,
                      "spec": protocol.WorkerSpec.from_spec(SPEC).to_spec()}),
    "ZYGOTE_READY": (lambda: protocol.zygote_ready([["app_import", 1.5]]),
                     {"t": "zygote_ready", "trace": [["app_import", 1.5]]}),
    "PLACED": (lambda: protocol.placed(12), {"t": "placed", "id": 12}),
    "SPARE": (lambda: protocol.spare(4321), {"t": "spare", "pid": 4321}),
    "SPAWN_FAILED": (lambda: protocol.spawn_failed(12, "OSError: no"),
                     {"t": "spawn_failed", "id": 12, "error": "OSError: no"}),
}


def _kind_block() -> tuple[int, int]:
    """The source lines (1-based, inclusive) of the kinds' section."""
    lines = SOURCE.splitlines()
    start = next(i for i, line in enumerate(lines, 1) if line.startswith("# --- control message kinds"))
    end = next(i for i, line in enumerate(lines, 1) if i > start and line.startswith("def "))
    return start, end - 1


def _kind_constants() -> dict[str, int]:
    """Every module-level NAME = "str" / b"bytes" in the kinds' section: name -> line."""
    start, end = _kind_block()
    out = {}
    for node in ast.parse(SOURCE).body:
        if (isinstance(node, ast.Assign) and start <= node.lineno <= end
                and isinstance(node.value, ast.Constant)):
            for target in node.targets:
                out[target.id] = node.lineno
    return out


def _comments() -> dict[int, str]:
    """line -> the comment on it."""
    return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(SOURCE).readline)
            if tok.type == tokenize.COMMENT}


def test_every_kind_has_a_constructor_case():
    constants = _kind_constants()
    kinds = {name for name in constants if name != "PARK_TAG"}
    assert kinds == set(KINDS)
    values = [getattr(protocol, name) for name in kinds]
    assert len(set(values)) == len(values), "two kinds share a value"


@pytest.mark.parametrize("name", sorted(KINDS))
def test_constructor_sends_what_was_sent_before(name):
    make, before = KINDS[name]
    data = make()
    assert data == protocol.encode(before)          # the same bytes, keys in the same order
    msg = protocol.decode(data)
    assert msg == before and msg["t"] == getattr(protocol, name)


def test_unhealthy_from_the_app():
    data = protocol.unhealthy("leaking", app=True)
    assert data == protocol.encode({"t": "unhealthy", "app": True, "reason": "leaking"})


def test_spawn_takes_a_worker_spec_or_its_dict():
    spec = protocol.WorkerSpec(pool="alpha", worker_id=3, routes=ROUTES)
    assert protocol.spawn(1, spec) == protocol.spawn(1, spec.to_spec())
    assert protocol.decode(protocol.spawn(1, spec))["spec"] == json.loads(json.dumps(spec.to_spec()))


@pytest.mark.parametrize("pool,data", [("alpha", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
                                       ("b-2", b""), ("caf\u00e9", b"\x00P\x00binary\xff")])
def test_park_frame_round_trips(pool, data):
    frame = protocol.encode_park(pool, data)
    assert frame[:1] == protocol.PARK_TAG
    assert protocol.decode_park(frame) == (pool, data)


def test_park_frame_is_not_a_control_message():
    assert protocol.decode_park(protocol.counters({})) is None
    assert protocol.decode_park(b"Pno-separator") is None
    with pytest.raises(ValueError):
        protocol.decode(protocol.encode_park("alpha", b"x"))


def test_every_kind_is_documented():
    """Each constant of the kinds' section has its comment (its fields), and the module
    docstring names it under its direction."""
    comments = _comments()
    start, _end = _kind_block()
    doc = ast.get_docstring(ast.parse(SOURCE))
    for name, line in _kind_constants().items():
        described = line in comments or any(name in comments.get(i, "") for i in range(start, line))
        assert described, f"{name} (line {line}) has no comment"
        assert name in doc, f"the module docstring does not list {name}"


def test_docstring_does_not_call_park_json():
    doc = ast.get_docstring(ast.parse(SOURCE))
    assert "PARK frame, which is not JSON" in doc
    pools = _comments()[_kind_constants()["POOLS"]]
    assert '"slot"' not in pools and '"fds"' not in pools    # never sent


# --- WorkerSpec / FrontEndSettings -----------------------------------------------------
LIMITS = ("max_header_bytes", "header_timeout", "keepalive_timeout", "send_timeout",
          "min_request_bytes_per_second", "max_body_size")


def test_fields():
    names = [f.name for f in dataclasses.fields(protocol.WorkerSpec)]
    assert set(names) == {"pool", "worker_id", "generation", "global_slots_via_board",
                          "cgroup_procs", "isolation", "max_header_bytes", "conn_sem",
                          "header_timeout", "keepalive_timeout", "send_timeout",
                          "min_request_bytes_per_second", "max_body_size", "access_log",
                          "config", "routes", "role", "tls", "tls_ports"}
    assert {f.name for f in dataclasses.fields(protocol.FrontEndSettings)} == {
        *LIMITS, "conn_sem", "identity", "supervisor_pid", "tls_ports"}


def test_worker_spec_round_trips_through_json():
    spec = protocol.WorkerSpec(
        pool="alpha", worker_id=4, generation=2, global_slots_via_board=True,
        cgroup_procs=["/sys/fs/cgroup/hostd/alpha/w4/cgroup.procs"],
        isolation={"uid": 2100000001, "gid": 2100000001, "userns": True, "pidns": True},
        max_header_bytes=8192, conn_sem=9, header_timeout=5.0, keepalive_timeout=30.0,
        send_timeout=20.0, min_request_bytes_per_second=0, max_body_size=1 << 20,
        access_log="journal", config={"name": "alpha", "threads": 4}, routes=ROUTES)
    wire = json.loads(json.dumps(spec.to_spec()))
    assert protocol.WorkerSpec.from_spec(wire) == spec


def test_worker_spec_ignores_the_zygotes_keys():
    spec = dict(SPEC, trace=[["zygote", 1.0]], host_pid=77, access_log_fd=5, conn_sems=[6, 7])
    assert protocol.WorkerSpec.from_spec(spec) == protocol.WorkerSpec(pool="alpha", worker_id=3)


def test_worker_spec_needs_a_pool():
    with pytest.raises(TypeError):
        protocol.WorkerSpec.from_spec({})


def test_front_end_settings_round_trip():
    settings = protocol.FrontEndSettings(max_header_bytes=4096, conn_sem=12,
                                         header_timeout=2.5, identity=(2100000000, 2100000000),
                                         supervisor_pid=4242)
    assert protocol.FrontEndSettings.from_spec(settings.to_spec()) == settings


def test_minimal_dicts_get_configs_defaults():
    """The defaults are config's: what a loaded main file holds for an unwritten key."""
    worker = protocol.WorkerSpec.from_spec({"pool": "alpha"})
    front = protocol.FrontEndSettings.from_spec({})
    for name in LIMITS:
        default = config.HOSTD_KEYS[name].default
        assert getattr(worker, name) == default == getattr(front, name), name
        main_field = config.MainConfig.__dataclass_fields__[name]
        if main_field.default is not dataclasses.MISSING:
            assert main_field.default == default, name
    assert worker.access_log == config.HOSTD_KEYS["access_log"].default
    assert (worker.worker_id, worker.conn_sem, worker.config, worker.routes) == (0, -1, {}, [])
    assert (front.conn_sem, front.identity, front.supervisor_pid) == (-1, None, None)
    assert protocol.WorkerSpec(pool="a").cgroup_procs is not worker.cgroup_procs


def test_pool_values_default_to_configs():
    bare = protocol.WorkerSpec(pool="alpha")
    assert bare.pool_value("threads") == config.POOL_KEYS["threads"].default
    assert bare.pool_value("max_body_size") is None       # none of its own: [hostd]'s
    assert bare.pool_value("max_bandwidth") == config.POOL_KEYS["max_bandwidth"].default
    assert bare.health() == config.Health()
    with pytest.raises(KeyError):
        bare.pool_value("bindings")                        # required: no default
    spec = protocol.WorkerSpec(pool="alpha", config={"threads": 8, "bindings": ["a"],
                                                      "health": {"ping_timeout": 5.0}})
    assert spec.pool_value("threads") == 8 and spec.pool_value("bindings") == ["a"]
    assert spec.health() == config.Health(ping_timeout=5.0)


def test_wait_fd_works_above_1024():
    """Regression (density): the supervisor's queue check used select(), which refuses
    descriptors from 1024 up: with 1,000 pools its tick raised ValueError and hostd
    died. kernel.sockets.wait_fd uses poll."""
    import os
    import resource
    import select
    import socket
    from kernel.sockets import wait_fd
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    a, b = socket.socketpair()
    try:
        high = os.dup2(a.fileno(), 1100)
        assert not wait_fd(high, select.POLLIN, 0)
        b.send(b"x")
        assert wait_fd(high, select.POLLIN, 0) and wait_fd(high, select.POLLOUT, 0.1)
        os.close(high)
    finally:
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
