"""The rules of [isolation] without processes: the view plan (kernel/fsview.py), the view
a pool gets (hostd/isolation.py), the readability check and the identity store."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostd import isolation
from hostd.config import Isolation
from kernel import fsview
from kernel.fsview import View, plan


def kinds(ops):
    return [(op.kind, op.path) for op in ops]


def test_plan_order_and_modes():
    ops = plan(View(hide=("/root", "/srv/b"), show=(("/srv/a", True), ("/root/py", False)),
                    private=("/tmp",)))
    assert kinds(ops)[:2] == [("slave", "/"), ("readonly", "/")]
    assert kinds(ops)[-1] == ("proc", "/proc")
    k = kinds(ops)
    # a parent is built before what lies in it; a shown path inside a hidden one is
    # created in the hiding tmpfs first
    assert k.index(("hide", "/root")) < k.index(("mkdirs", "/root/py")) < k.index(("bind", "/root/py"))
    hide_root = next(op for op in ops if op.kind == "hide" and op.path == "/root")
    hide_b = next(op for op in ops if op.kind == "hide" and op.path == "/srv/b")
    assert hide_root.mode == fsview.CROSSING_MODE and hide_b.mode == fsview.HIDDEN_MODE
    bind_a = next(op for op in ops if op.kind == "bind" and op.path == "/srv/a")
    assert bind_a.writable and ("mkdirs", "/srv/a") not in k    # visible already
    assert next(op for op in ops if op.kind == "private").mode == 0o1777


def test_plan_hidden_inside_hidden_is_skipped_but_hidden_inside_shown_is_not():
    k = kinds(plan(View(hide=("/home", "/home/x", "/srv/a/secret"),
                        show=(("/srv/a", True),), private=())))
    assert ("hide", "/home/x") not in k
    assert k.index(("bind", "/srv/a")) < k.index(("hide", "/srv/a/secret"))


def test_plan_site_under_private_tmp():
    k = kinds(plan(View(show=(("/tmp/sites/a", True),), private=("/tmp",))))
    assert k.index(("private", "/tmp")) < k.index(("mkdirs", "/tmp/sites/a")) < k.index(("bind", "/tmp/sites/a"))


@pytest.mark.parametrize("bad", [View(hide=("relative",)), View(hide=("/",)),
                                 View(show=(("/a/../b", False),)), View(private=("/",))])
def test_plan_refuses_bad_paths(bad):
    with pytest.raises(ValueError):
        plan(bad)


def test_view_round_trips_through_the_spawn_spec():
    v = View(hide=("/root",), show=(("/srv/a", True),), private=("/tmp",))
    assert View.from_spec(json.loads(json.dumps(v.to_spec()))) == v


def cfg(name, directory, venv=None, **iso):
    return SimpleNamespace(name=name, file=Path(f"/etc/hostd/pools.d/{name}.toml"),
                           directory=Path(directory), virtualenv=Path(venv) if venv else None,
                           isolation=Isolation(**iso))


MAIN = SimpleNamespace(state_dir=Path("/var/lib/hostd"), run_dir=Path("/run/hostd"),
                       pools_dir=Path("/etc/hostd/pools.d"), path=Path("/etc/hostd/hostd.toml"),
                       access_log="/var/log/hostd/access.log")


def test_build_view_hides_others_and_hostd_and_shows_own():
    a = cfg("a", "/srv/a", "/srv/venvs/a")
    b = cfg("b", "/srv/b", "/srv/venvs/b")
    parent = cfg("p", "/srv")          # a pool whose directory holds a's: never hidden from a
    v = isolation.build_view(a, MAIN, [b, parent], runtime=["/usr/lib/python3.11", "/opt/hostd"])
    assert dict(v.show) == {"/srv/a": True, "/srv/venvs/a": False,
                            "/usr/lib/python3.11": False, "/opt/hostd": False}
    for hidden in ("/srv/b", "/srv/venvs/b", "/root", "/home", "/var/lib/hostd", "/run/hostd",
                   "/etc/hostd", "/var/log/hostd"):
        assert hidden in v.hide, hidden
    # pools.d lies in /etc/hostd, hidden already: not sent (fsview.pruned), still hidden
    assert "/etc/hostd/pools.d" not in v.hide
    assert ("hide", "/etc/hostd") in kinds(plan(v))
    assert "/srv" not in v.hide
    assert set(v.private) == {"/tmp", "/var/tmp", "/dev/shm"} and v.new_proc


def test_build_view_read_only_and_show():
    a = cfg("a", "/srv/a", read_only=True, show=("/srv/shared",))
    v = isolation.build_view(a, MAIN, [], runtime=[])
    assert dict(v.show) == {"/srv/a": False, "/srv/shared": False}


def test_unreadable_walks_ancestors(tmp_path):
    site = tmp_path / "outer" / "site"
    site.mkdir(parents=True)
    (tmp_path / "outer").chmod(0o700)
    site.chmod(0o755)
    uid = 2100000999
    outer = str(tmp_path / "outer")
    problem = isolation.unreadable(str(site), uid, uid, crossable=lambda p: p != outer
                                   and not p.startswith(outer + "/"))
    assert problem and "cannot enter" in problem and outer in problem
    # inside a hiding/private tmpfs the ancestors are replaced by crossable ones
    assert isolation.unreadable(str(site), uid, uid, crossable=lambda p: True) is None
    site.chmod(0o700)
    problem = isolation.unreadable(str(site), uid, uid, crossable=lambda p: True)
    assert "cannot read" in problem and "mode 700" in problem
    if os.geteuid() == 0:
        os.chown(site, uid, uid)
        assert isolation.unreadable(str(site), uid, uid, crossable=lambda p: True) is None


def test_identity_store_is_stable_unique_and_persisted(tmp_path):
    path = tmp_path / "state" / "identities.json"
    store = isolation.IdentityStore(path, 2100000000, 2100000002)
    a, b = store.uid("a"), store.uid("b")
    assert a != b and store.uid("a") == a
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = isolation.IdentityStore(path, 2100000000, 2100000002)
    assert again.uid("b") == b and again.uid("a") == a
    again.uid("c")
    with pytest.raises(OSError, match="exhausted"):
        again.uid("d")
    assert again.net_index("x") == 0 and again.net_index("y") == 1 and again.net_index("x") == 0


def test_identity_store_skips_known_accounts(tmp_path):
    store = isolation.IdentityStore(tmp_path / "ids.json", 0, 0)   # uid 0 = root: skipped
    with pytest.raises(OSError, match="exhausted"):
        store.uid("a")


def test_identity_store_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "ids.json"
    path.write_text("{not json")
    with pytest.raises(OSError, match="identity file"):
        isolation.IdentityStore(path, 2100000000, 2100000010)


def test_plan_binds_a_pools_own_tmp_over_the_hosts():
    v = View(show=(("/tmp/sites/a", True),), binds=(("/run/hostd/tmp/a/tmp", "/tmp"),))
    ops = plan(v)
    k = kinds(ops)
    assert ("private", "/tmp") not in k
    bind_tmp = next(op for op in ops if op.kind == "bind" and op.path == "/tmp")
    assert bind_tmp.writable and v.sources()[bind_tmp.source] == "/run/hostd/tmp/a/tmp"
    # what lies below is built inside it, after it
    assert k.index(("bind", "/tmp")) < k.index(("mkdirs", "/tmp/sites/a")) < k.index(("bind", "/tmp/sites/a"))
    assert View.from_spec(json.loads(json.dumps(v.to_spec()))) == v


def test_build_view_with_the_pools_tmp():
    a = cfg("a", "/srv/a")
    tmp = {"/tmp": "/run/hostd/tmp/a/tmp", "/dev/shm": "/run/hostd/tmp/a/shm",
           "/var/tmp": "/var/lib/hostd/tmp/a"}
    v = isolation.build_view(a, MAIN, [], runtime=[], tmp=tmp)
    assert v.private == () and dict((t, s) for s, t in v.binds) == tmp


# --- isolated by default (isolation.decide) -------------------------------------------
@pytest.mark.parametrize("iso,root,isolated,why,fails", [
    (Isolation(declared=False), True, True, isolation.ISOLATED, False),      # no table
    (Isolation(declared=False), False, False, isolation.NO_ROOT, False),     # served, warned
    (Isolation(), True, True, isolation.ISOLATED, False),                    # a written table
    (Isolation(), False, False, isolation.NO_ROOT, True),                    # asks: needs root
    (Isolation(network="none"), False, False, isolation.NO_ROOT, True),
    (Isolation(enabled=False), True, False, isolation.OPTED_OUT, False),     # the opt-out
    (Isolation(enabled=False), False, False, isolation.OPTED_OUT, False),
    (Isolation(enabled=False, declared=False), True, False, isolation.OPTED_OUT, False),
])
def test_decide(iso, root, isolated, why, fails):
    d = isolation.decide(iso, root)
    assert (d.isolated, d.why, d.error is not None) == (isolated, why, fails)
    if fails:
        assert "root" in d.error and "enabled = false" in d.error


def test_describe_says_identity_namespaces_and_view(tmp_path):
    c = cfg("p", tmp_path)
    text = isolation.describe(c, True, {"p": 2100000007})
    assert text.startswith("isolated: uid/gid 2100000007 (dynamic); namespaces: user, mount, pid;")
    assert "network host" in text and "view: site:" in text and str(tmp_path) in text
    assert "a new one" in isolation.describe(c, True, {})
    host = cfg("p", tmp_path, filesystem="host", user_namespace=False, network="none")
    assert "namespaces: network" in isolation.describe(host, True, {})
    assert "view: host" in isolation.describe(host, True, {})
    off = cfg("p", tmp_path, enabled=False)
    assert isolation.describe(off, True, {}).startswith("NOT ISOLATED ([isolation] enabled = false)")
    assert isolation.describe(c, False, {}).startswith("FAILS: [isolation] needs hostd")


def test_identity_store_held_saves_once(tmp_path, monkeypatch):
    store = isolation.IdentityStore(tmp_path / "ids.json", 2100000000, 2100000100)
    saves = []
    real = store._save
    monkeypatch.setattr(store, "_save", lambda: (saves.append(1), real()))
    monkeypatch.setattr(isolation, "_account_exists", lambda uid: False)
    with store.held():
        uids = [store.uid(f"p{i}") for i in range(50)]
        with store.held():              # nested: still one save, at the outer end
            store.uid("inner")
        assert saves == [] and not (tmp_path / "ids.json").exists()
    assert saves == [1] and len(set(uids)) == 50
    again = isolation.IdentityStore(tmp_path / "ids.json", 2100000000, 2100000100)
    assert again.uids == store.uids and again.uids["inner"] not in uids
    store.uid("outside")                # outside held(): saved at once
    assert saves == [1, 1]


def test_build_view_collapses_a_parent_of_sites_only():
    """A thousand sites in /srv/sites: the parent is hidden (one mount), the pool's own
    directory is shown inside it, and fsview's plan crosses the parent to reach it; a
    parent that holds anything but sites keeps its per-site hides."""
    names = [f"s{i}" for i in range(20)]
    me = cfg("s0", "/srv/sites/s0")
    others = [cfg(n, f"/srv/sites/{n}") for n in names[1:]]
    v = isolation.build_view(me, MAIN, others, runtime=[], listdir=lambda p: list(names))
    assert "/srv/sites" in v.hide and not any(h.startswith("/srv/sites/") for h in v.hide)
    assert dict(v.show)["/srv/sites/s0"] is True
    ops = fsview.plan(v)
    hide = next(o for o in ops if o.kind == "hide" and o.path == "/srv/sites")
    assert hide.mode == fsview.CROSSING_MODE and "/srv/sites/s0" in hide.below
    assert [o.path for o in ops if o.kind == "mkdirs"] == ["/srv/sites/s0"]
    # something else lives there that cannot be shown again (gone, or a symbolic
    # link): nothing that was visible becomes hidden
    v = isolation.build_view(me, MAIN, others, runtime=[],
                             listdir=lambda p: list(names) + ["shared-assets"])
    assert "/srv/sites" not in v.hide and "/srv/sites/s7" in v.hide
    link = SimpleNamespace(st_mode=stat.S_IFLNK | 0o777)
    v = isolation.build_view(me, MAIN, others, runtime=[],
                             listdir=lambda p: list(names) + ["shared-assets"],
                             lstat=lambda p: link)
    assert "/srv/sites" not in v.hide and "/srv/sites/s7" in v.hide and not v.reshow
    # few sites: per-site hides, as always
    v = isolation.build_view(me, MAIN, others[:3], runtime=[], listdir=lambda p: list(names))
    assert "/srv/sites" not in v.hide and "/srv/sites/s1" in v.hide


def test_plan_skips_hides_under_a_private_directory():
    """A site's neighbours under /tmp (private in the view) are invisible already: no
    mount for each (1,000 sites under /tmp made 1,000 mounts per worker start)."""
    v = View(hide=tuple(f"/tmp/sites/s{i}" for i in range(1, 50)),
             show=(("/tmp/sites/s0", True),), private=("/tmp",))
    ops = plan(v)
    assert not [o for o in ops if o.kind == "hide"]
    assert [o.path for o in ops if o.kind == "mkdirs"] == ["/tmp/sites/s0"]


def test_pruned_drops_only_what_plan_skips():
    """fsview.pruned: the hides plan() skips (inside a hidden or private directory) are
    left out, the plan is the same; one hidden inside a shown directory stays."""
    v = View(hide=("/home", "/home/x", "/home/x/y", "/srv/a/secret", "/tmp/other", "/srv/b"),
             show=(("/srv/a", True), ("/home/x/y/z", False)), private=("/tmp",))
    p = fsview.pruned(v)
    assert p.hide == ("/home", "/srv/a/secret", "/srv/b")
    assert plan(p) == plan(v)
    assert fsview.pruned(p) is p        # nothing to drop: the same view


def test_a_thousand_sites_under_a_hidden_directory_send_a_handful_of_hides():
    """Sites under hostd's own directory (hidden: its config lives there), as
    bench/density.py lays them out: a worker was sent all 999 other sites (33 KB of its
    spawn spec, ~200 KiB of its private memory once decoded), which plan() skipped."""
    main = SimpleNamespace(state_dir=Path("/d/state"), run_dir=Path("/d/run"),
                           pools_dir=Path("/d/pools.d"), path=Path("/d/hostd.toml"),
                           access_log="journal")
    me = cfg("p0", "/d/sites/p0")
    others = [cfg(f"p{i}", f"/d/sites/p{i}") for i in range(1, 1000)]
    full = isolation.ViewIndex([me, *others], listdir=lambda p: ["other-file"]) \
        .view(me, main, runtime=[])
    assert len(full.hide) < 10, full.hide
    assert "/d" in full.hide and dict(full.show)["/d/sites/p0"] is True
    hidden = next(o for o in plan(full) if o.kind == "hide" and o.path == "/d")
    assert hidden.mode == fsview.CROSSING_MODE and hidden.below == ("/d/sites/p0",)
    # the same sites elsewhere (not in a hidden directory nor collapsible): one each
    far = [cfg(f"p{i}", f"/srv/p{i}") for i in range(1, 1000)]
    v = isolation.ViewIndex([me, *far], listdir=lambda p: ["other-file"]).view(me, main, runtime=[])
    assert sum(h.startswith("/srv/p") for h in v.hide) == 999


def test_view_index_makes_each_pools_view_once():
    """ViewIndex.view is cached per pool config (a spawn among a thousand pools made its
    view again, ~1.7 ms); a new config object of the pool gets a view of its own."""
    me = cfg("s0", "/srv/sites/s0")
    others = [cfg(f"s{i}", f"/srv/sites/s{i}") for i in range(1, 5)]
    idx = isolation.ViewIndex([me, *others], listdir=lambda p: [])
    v = idx.view(me, MAIN, runtime=[])
    assert idx.view(me, MAIN, runtime=[]) is v
    assert idx.view(me, MAIN, runtime=["/opt/py"]) is not v
    moved = cfg("s0", "/srv/elsewhere/s0")
    assert dict(idx.view(moved, MAIN, runtime=[]).show) == {"/srv/elsewhere/s0": True}


_TREE = ["/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/e", "/a/e/f", "/g", "/g/h", "/tmp", "/tmp/x",
         "/tmp/x/y"]


@settings(max_examples=300, deadline=None)
@given(hide=st.sets(st.sampled_from(_TREE)), show=st.sets(st.sampled_from(_TREE), max_size=3),
       private=st.sets(st.sampled_from(_TREE), max_size=2))
def test_pruned_gives_the_same_plan_for_any_view(hide, show, private):
    """fsview.pruned decides by walking each hidden path's ancestors; plan() by what it
    applied so far: the same plan for any mix of hidden, shown and private paths."""
    v = View(hide=tuple(sorted(hide)), show=tuple((p, False) for p in sorted(show)),
             private=tuple(sorted(private)))
    p = fsview.pruned(v)
    assert plan(p) == plan(v)
    assert set(p.hide) == {op.path for op in plan(v) if op.kind == "hide"}


def test_a_parent_of_sites_with_a_few_other_entries_is_hidden_once_and_they_shown_again():
    """/srv/www with 20 sites, a README and a shared directory: one hide, the two shown
    again read-only inside it (View.reshow), the pool's own site shown writable; with more
    than COLLAPSE_EXTRAS other entries, one hide per site as before."""
    names = [f"s{i}" for i in range(20)]
    me = cfg("s0", "/srv/www/s0")
    others = [cfg(n, f"/srv/www/{n}") for n in names[1:]]
    kinds_of = {"/srv/www/README": stat.S_IFREG, "/srv/www/shared": stat.S_IFDIR}
    lstat = lambda p: SimpleNamespace(st_mode=kinds_of.get(p, stat.S_IFDIR) | 0o755)  # noqa: E731
    v = isolation.build_view(me, MAIN, others, runtime=[],
                             listdir=lambda p: names + ["README", "shared"], lstat=lstat)
    assert [h for h in v.hide if h.startswith("/srv")] == ["/srv/www"]
    assert v.reshow == ("/srv/www/README", "/srv/www/shared")
    ops = kinds(plan(v))
    assert ops.index(("hide", "/srv/www")) < ops.index(("mkdirs", "/srv/www/README")) \
        < ops.index(("bind", "/srv/www/README"))
    binds = {o.path: o for o in plan(v) if o.kind == "bind"}
    assert not binds["/srv/www/shared"].writable and binds["/srv/www/s0"].writable
    assert v.sources()[binds["/srv/www/shared"].source] == "/srv/www/shared"
    assert View.from_spec(v.to_spec()) == v
    # too many others: per-site hides, nothing shown again
    many = names + [f"x{i}" for i in range(isolation.COLLAPSE_EXTRAS + 1)]
    v = isolation.build_view(me, MAIN, others, runtime=[], listdir=lambda p: many, lstat=lstat)
    assert "/srv/www" not in v.hide and "/srv/www/s1" in v.hide and not v.reshow


def test_sites_under_a_private_directory_are_not_shown_again():
    """Under /tmp (a fresh tmpfs in the view) the host's other entries are not there at
    all: the parent is not collapsed with them shown again, the per-site hides are pruned."""
    names = [f"s{i}" for i in range(20)]
    me = cfg("s0", "/tmp/www/s0")
    others = [cfg(n, f"/tmp/www/{n}") for n in names[1:]]
    v = isolation.build_view(me, MAIN, others, runtime=[],
                             listdir=lambda p: names + ["README"],
                             lstat=lambda p: SimpleNamespace(st_mode=stat.S_IFREG | 0o644))
    assert not v.reshow and not any(h.startswith("/tmp") for h in v.hide)
    assert ("mkdirs", "/tmp/www/s0") in kinds(plan(v))
