"""Helpers of the VM suite (tests/vm): HTTP to hostd in the guest, the journal, the unit's
cgroup, pool files + reload. conftest.py offers them as fixtures; tests may also import
them (`from vmtest import pools, wait_for`)."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

UNIT = "hostd"
UNIT_FILE = Path("/etc/systemd/system/hostd.service")
CONFIG = Path("/etc/hostd/hostd.toml")
POOLS_DIR = Path("/etc/hostd/pools.d")
TEST_APPS = Path("/srv/hostd/test-apps")
HOSTCTL = "/opt/hostd/bin/hostctl"
PORT = 8080
REPO = Path(__file__).resolve().parents[2]


def _not_in_vm() -> str | None:
    """Why this machine cannot run the VM suite, or None."""
    if not Path("/run/systemd/system").exists():
        return "PID 1 is not systemd"
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "cgroups are not unified v2"
    if not UNIT_FILE.exists() or not Path(HOSTCTL).exists():
        return "hostd is not installed as a service (vagrant/provision.sh)"
    if os.geteuid() != 0:
        return "needs root"
    return None


WHY_NOT = _not_in_vm()


# ---- plain helpers ---------------------------------------------------------------------

def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = ""):
    """Polls predicate() until it returns something true; returns that, or fails the test.
    The guest may run under software emulation (6-13x slower): be generous."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs systemctl; with check, a non-zero exit fails the test with its output."""
    r = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=180)
    if check and r.returncode != 0:
        pytest.fail(f"systemctl {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def unit_property(name: str, unit: str = UNIT) -> str:
    return systemctl("show", "-p", name, "--value", unit).stdout.strip()


def status() -> dict:
    """`hostctl status --json` of the running service."""
    out = subprocess.run([HOSTCTL, "--config", str(CONFIG), "status", "--json"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


def pools() -> dict[str, dict]:
    return {p["name"]: p for p in status()["pools"]}


# ---- HTTP --------------------------------------------------------------------------------

class Http:
    """Requests to hostd in the guest: `get(host, path)` -> (status, headers, body str)."""

    def __init__(self, addr: str = "127.0.0.1", port: int = PORT):
        self.addr, self.port = addr, port

    def request(self, method: str, host: str, path: str = "/", body: bytes | None = None,
                headers: dict | None = None, timeout: float = 60.0):
        conn = http.client.HTTPConnection(self.addr, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read().decode(errors="replace")
        finally:
            conn.close()

    def get(self, host: str, path: str = "/", **kw):
        return self.request("GET", host, path, **kw)

    def wait_status(self, host: str, want: int = 200, path: str = "/", timeout: float = 60.0):
        """GETs until the answer has status `want` (e.g. a pool just added); returns it."""
        last = []

        def ok():
            try:
                r = self.get(host, path)
            except OSError as exc:
                last[:] = [repr(exc)]
                return None
            last[:] = [r[0], r[2][:200]]
            return r if r[0] == want else None
        return wait_for(ok, timeout, what=lambda: f"{host}{path} -> {want} (last: {last})")


# ---- journal -----------------------------------------------------------------------------

class Journal:
    """`journalctl -u hostd` of this boot. `start_cursor`: where the current test began."""

    def __init__(self, unit: str = UNIT):
        self.unit = unit
        self.start_cursor = self.cursor()

    def cursor(self) -> str:
        out = subprocess.run(["journalctl", "-u", self.unit, "-b", "-n", "0", "--show-cursor",
                              "--no-pager"], capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                return line[len("-- cursor: "):]
        return ""

    def lines(self, since: str | None = None, output: str = "cat") -> list[str]:
        """Messages (hostd's own lines with `output="cat"`), optionally after a cursor."""
        cmd = ["journalctl", "-u", self.unit, "-b", "--no-pager", "-o", output]
        if since:
            cmd += ["--after-cursor", since]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.splitlines()

    def text(self, since: str | None = None) -> str:
        return "\n".join(self.lines(since))

    def since_start(self) -> list[str]:
        return self.lines(self.start_cursor)

    def wait_for_line(self, needle: str, since: str | None = None, timeout: float = 30.0) -> str:
        return wait_for(lambda: next((l for l in self.lines(since) if needle in l), None),
                        timeout, what=f"journal line containing {needle!r}")


# ---- the unit's cgroup --------------------------------------------------------------------

class UnitCgroup:
    """The service's cgroup v2 directory and the processes in its whole subtree."""

    def __init__(self, unit: str = UNIT):
        self.unit = unit

    @property
    def path(self) -> Path:
        cg = unit_property("ControlGroup", self.unit)
        assert cg, f"{self.unit} has no cgroup (not running?)"
        return Path("/sys/fs/cgroup") / cg.lstrip("/")

    @staticmethod
    def pids_under(path: Path) -> set[int]:
        """Every pid in `path` and its descendants (empty if the cgroup is gone)."""
        pids: set[int] = set()
        if not path.exists():
            return pids
        for procs in path.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:        # removed while walking
                pass
        return pids

    def pids(self) -> set[int]:
        return self.pids_under(self.path)

    def main_pid(self) -> int:
        return int(unit_property("MainPID", self.unit))


# ---- the service ---------------------------------------------------------------------------

def ensure_running() -> None:
    if systemctl("is-active", "--quiet", UNIT, check=False).returncode != 0:
        systemctl("reset-failed", UNIT, check=False)
        systemctl("start", UNIT)


# ---- pool files -----------------------------------------------------------------------------

DEMO_APP = '''\
import os


def application(environ, start_response):
    body = (f"{os.environ.get('GREETING', 'Hello')}: pool={environ.get('hostd.pool')} "
            f"pid={os.getpid()} path={environ['SCRIPT_NAME']}{environ['PATH_INFO']}\\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


class PoolFiles:
    """Pool files in /etc/hostd/pools.d written by a test; all removed (and hostd
    reloaded) when the test ends."""

    def __init__(self):
        self.written: list[Path] = []

    def write(self, name: str, bindings: list[str], app_source: str = DEMO_APP,
              **keys) -> Path:
        """Writes pools.d/<name>.toml. Without `directory=`, the app `app:application`
        (DEMO_APP, or `app_source`) is written to /srv/hostd/test-apps/<name>/app.py.
        Other keys (processes=2, start_mode="always_running", env={...}) go in as given."""
        if "directory" not in keys:
            d = TEST_APPS / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "app.py").write_text(app_source)
            keys = {"app": "app:application", "directory": str(d), **keys}
        doc = {"bindings": bindings, **keys}
        path = POOLS_DIR / f"{name}.toml"
        path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in doc.items()))
        path.chmod(0o600)   # hostd refuses a pool file with env that others can read
        self.written.append(path)
        return path

    def remove(self, name: str) -> None:
        (POOLS_DIR / f"{name}.toml").unlink(missing_ok=True)

    @staticmethod
    def reload(expect: list[str] = (), gone: list[str] = (), timeout: float = 60.0) -> dict:
        """`systemctl reload hostd` (SIGHUP), then waits until every pool in `expect` is
        `started` and every pool in `gone` is no longer listed; returns pools()."""
        systemctl("reload", UNIT)

        def settled():
            ps = pools()
            ok = all(ps.get(n, {}).get("state") == "started" for n in expect) and \
                all(n not in ps for n in gone)
            return ps if ok else None
        return wait_for(settled, timeout, what=f"pools {list(expect)} started, {list(gone)} gone")

    def cleanup(self) -> None:
        names = [p.stem for p in self.written if p.exists()]
        for p in self.written:
            p.unlink(missing_ok=True)
        if names and systemctl("is-active", "--quiet", UNIT, check=False).returncode == 0:
            self.reload(gone=names)

