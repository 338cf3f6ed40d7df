#!/usr/bin/env bash
# Installs everything hostd needs on Debian/Ubuntu, idempotently:
#   system packages (Python venv + headers, gcc, libcap-dev for python-prctl),
#   a virtualenv in ./.venv, and hostd with its test dependencies (editable).
# Then `.venv/bin/hostd` and `.venv/bin/hostctl` are ready.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

need=()
for pkg in libcap-dev gcc; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
[ -e "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "install.sh: installing system packages: ${need[*]}" >&2
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c 'import hostd, httptools, psutil, prctl, pyroute2, websockets, uvloop, pytest, h11, hypothesis, prometheus_client' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.hostd-installed ] || [ setup.py -nt .venv/.hostd-installed ] \
   || [ workers/_h1fast.c -nt .venv/.hostd-installed ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.hostd-installed
fi
# the C request path (workers/_h1fast.c) is optional: say whether it was built
.venv/bin/python -c 'from workers import h1fast; print("install.sh: workers request path:", h1fast.describe())' >&2
echo "install.sh: ready: $(.venv/bin/hostd --help >/dev/null && echo .venv/bin/hostd)" >&2
