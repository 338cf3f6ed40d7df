"""Suite-wide rules: what this machine allows, and saying clearly what is skipped.

* tests/unit: always.
* tests/integration: real processes and sockets; tests marked `root` need root.
* tests/vm: only inside the VM (systemd as PID 1 + cgroup v2), see tests/vm/conftest.py.
"""
import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (real cgroups/namespaces/uids); run as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
