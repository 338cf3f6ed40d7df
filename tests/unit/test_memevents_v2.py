"""kernel.memevents on cgroup v2: one shared inotify for every worker's memory.events.

This machine's cgroup v2 hierarchy has no memory controller, so the cgroup directory
is played by a plain directory with a memory.events file the test rewrites as the
kernel would (inotify sees a write either way). The VM suite covers the real one
(tests/vm/test_pool_limits.py)."""
from __future__ import annotations

import os

import pytest

from kernel.memevents import HIGH, MAX, OOM, Inotify, MemoryWatch

EVENTS = "low 0\nhigh {high}\nmax {max}\noom 0\noom_kill {kill}\noom_group_kill 0\n"


def cgroup(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "memory.events").write_text(EVENTS.format(high=0, max=0, kill=0))
    (d / "memory.high").write_text("67108864\n")
    return d


def test_many_watches_share_one_instance_and_say_which_fired(tmp_path):
    ino = Inotify()
    try:
        watches = [MemoryWatch(str(cgroup(tmp_path, f"w{i}")), 2, high=64 << 20,
                               limit=128 << 20, inotify=ino) for i in range(200)]
        assert len({w.wd for w in watches}) == 200 and all(w.fileno() == -1 for w in watches)
        assert ino.read() == set()
        (tmp_path / "w7" / "memory.events").write_text(EVENTS.format(high=3, max=0, kill=0))
        (tmp_path / "w9" / "memory.events").write_text(EVENTS.format(high=1, max=1, kill=1))
        fired = ino.read()
        assert fired == {watches[7].wd, watches[9].wd}
        assert watches[7].read() == [HIGH]
        assert watches[9].read() == [OOM, MAX, HIGH]
        assert watches[7].read() == []          # counters unchanged since: nothing new
        assert watches[7].fence() is None       # v2: memory.high throttles, no fence
        watches[7].release_high()
        assert (tmp_path / "w7" / "memory.high").read_text() == "max"
        watches[7].release_high()               # once only: nothing to write again
        watches[7].close()
        (tmp_path / "w7" / "memory.events").write_text(EVENTS.format(high=4, max=0, kill=0))
        assert ino.read() == set()              # unwatched
        for w in watches:
            w.close()
    finally:
        ino.close()


def test_v2_needs_the_shared_instance_and_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError):
        MemoryWatch(str(cgroup(tmp_path, "a")), 2, high=1 << 20)
    ino = Inotify()
    try:
        os.unlink(tmp_path / "a" / "memory.events")
        with pytest.raises(OSError) as e:
            MemoryWatch(str(tmp_path / "a"), 2, high=1 << 20, inotify=ino)
        assert "memory.events" in str(e.value)
    finally:
        ino.close()
