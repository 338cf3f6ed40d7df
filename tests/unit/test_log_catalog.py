"""Every event hostd logs is in hostd.log.EVENTS, so systemd/hostd.catalog explains it
(`journalctl -x`), and the shipped catalog is the one EVENTS generates."""
from __future__ import annotations

import re
from pathlib import Path

from hostd import log

ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r"\blog\.(?:debug|info|notice|warning|error|critical)\(\s*\"([a-z_]+)\"")


def test_every_logged_event_has_a_catalog_entry():
    used = {}
    for pkg in ("hostd", "workers", "kernel"):
        for path in sorted((ROOT / pkg).rglob("*.py")):   # hostd/supervisor/ too
            for name in CALL.findall(path.read_text()):
                used.setdefault(name, path.name)
    assert used, "the pattern found no log calls: it is out of date"
    missing = {name: where for name, where in used.items() if name not in log.EVENTS}
    assert not missing, f"events logged but not in hostd.log.EVENTS: {missing}"


def test_shipped_catalog_is_generated_from_events():
    assert (ROOT / "systemd" / "hostd.catalog").read_text() == log.catalog()
