"""The VM suite: hostd as a systemd service on a real systemd + cgroup v2 machine.

Runs inside the VM that vagrant/provision.sh set up (`vagrant up`, or
`vagrant/run-vm-suite` under qemu), as root, against the installed service: /opt/hostd,
/etc/hostd/hostd.toml (0.0.0.0:8080), /etc/systemd/system/hostd.service. Anywhere else
every test here is skipped, with one reason line.

Adding a test: write tests/vm/test_*.py and use these fixtures (helpers in vmtest.py):

    def test_something(pool_files, http, journal, unit_cgroup):
        pool_files.write("gamma", bindings=["gamma.localhost"])   # + a demo app
        pool_files.reload(expect=["gamma"])         # systemctl reload hostd, wait: started
        status, headers, body = http.get("gamma.localhost", "/")
        journal.wait_for_line("POOL=gamma", since=journal.start_cursor)
        assert unit_cgroup.main_pid() in unit_cgroup.pids()

* `hostd`        (autouse) the service is active before and after each test (a test may
                 stop it; it is started again).
* `http`         HTTP/1.1 to hostd in the guest, 127.0.0.1:8080: get(), request(),
                 wait_status(host, 200).
* `journal`      `journalctl -u hostd -b`: lines(), text(), since_start(), wait_for_line();
                 start_cursor = where the test began.
* `unit_cgroup`  the unit's cgroup: path (under /sys/fs/cgroup), pids() of the whole
                 subtree, main_pid().
* `pool_files`   write(name, bindings, **keys) -> /etc/hostd/pools.d/<name>.toml, reload();
                 the files are removed and hostd reloaded after the test.
* `systemctl`, `status` (hostctl status --json), `wait_for`: the helpers, as fixtures.
The guest may run under software emulation, 6-13x slower than the host: keep tests lean
(the whole suite shares one VM boot) and wait with wait_for(), never with fixed sleeps.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from vmtest import (WHY_NOT, Http, Journal, PoolFiles, UnitCgroup, ensure_running, status,
                    systemctl, wait_for)


def _skip_outside_vm():
    pytest.skip(f"VM suite: {WHY_NOT}; run it in the VM: vagrant/run-vm-suite or vagrant up")


@pytest.fixture(autouse=True)
def _vm_only():
    if WHY_NOT:
        _skip_outside_vm()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Outside the VM every skip of tests/vm points at _skip_outside_vm, so `-ra` folds them into
    ONE line ("SKIPPED [n] tests/vm/conftest.py:..: VM suite: <why>")."""
    outcome = yield
    rep = outcome.get_result()
    if WHY_NOT and rep.skipped and isinstance(rep.longrepr, tuple):
        code = _skip_outside_vm.__code__
        rep.longrepr = (os.path.relpath(code.co_filename, item.config.rootpath),
                        code.co_firstlineno, rep.longrepr[2])


@pytest.fixture(autouse=True)
def hostd(_vm_only):
    ensure_running()
    yield "hostd"
    ensure_running()


@pytest.fixture
def http() -> Http:
    return Http()


@pytest.fixture
def journal() -> Journal:
    subprocess.run(["journalctl", "--sync"], timeout=60)
    return Journal()


@pytest.fixture
def unit_cgroup() -> UnitCgroup:
    return UnitCgroup()


@pytest.fixture
def pool_files(hostd):
    pf = PoolFiles()
    yield pf
    pf.cleanup()


@pytest.fixture(name="systemctl")
def _systemctl():
    return systemctl


@pytest.fixture(name="status")
def _status():
    return status


@pytest.fixture(name="wait_for")
def _wait_for():
    return wait_for
