"""What hostctl can ask (gunicorn's ctl/handlers.py): one object whose methods the
control socket's endpoints call (hostd/control.py), each returning the reply. It only
picks the room that answers; the rooms decide.
"""
from __future__ import annotations

from hostd.lifecycle import WorkerState

W = WorkerState


class Commands:
    def __init__(self, supervisor):
        self.sup = supervisor

    def status(self, name: str | None = None, state: str | None = None) -> dict:
        return self.sup.views.status(name, state)

    def counters(self, name: str | None = None) -> dict:
        return self.sup.views.counters(name)

    def live_requests(self, name: str | None = None):
        """A Deferred: (200, {"requests": [...]}) once the workers answered."""
        return self.sup.views.live_requests(name)

    def orphans(self) -> list[dict]:
        return self.sup.views.orphans()

    def pool_identity(self, name: str) -> tuple[bool, dict]:
        return self.sup.views.pool_identity(name)

    def reload(self) -> None:
        self.sup.reload()

    def start_pool(self, name: str) -> tuple[bool, str]:
        return self.sup.pools.start_pool(name)

    def stop_pool(self, name: str) -> tuple[bool, str]:
        return self.sup.pools.stop_pool(name)

    def recycle_pool(self, name: str) -> tuple[bool, str]:
        return self.sup.recycling.recycle_pool(name)

    def recycle_worker(self, pid: int) -> tuple[bool, str]:
        return self.sup.recycling.recycle_worker(pid)

    def kill_orphan(self, pid: int) -> tuple[bool, str]:
        return self.sup.health.kill_orphan(pid)

    def kill_worker(self, pid: int) -> tuple[bool, str]:
        """`hostctl worker kill PID`: kills it (and its cgroup) now; counted as a kill."""
        reg = self.sup.registry
        w = reg.find_worker(pid, reg.pools.values())
        if w is None or w.state in (W.EXITED, W.STOPPING):
            return False, f"no running worker with pid {pid}"
        self.sup.processes.kill(w, "hostctl worker kill")
        return True, f"worker {pid} of pool {w.pool.name} killed"
