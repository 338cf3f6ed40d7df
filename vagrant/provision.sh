#!/usr/bin/env bash
# Provisions a Debian 12 machine (the Vagrant box, or run-vm-suite's qemu guest) with
# hostd as a systemd service, then runs the VM suite (tests/vm). Run as root in the
# guest; idempotent (run it again after changing the checkout: `vagrant provision`).
#
#   provision.sh [pytest args...]      install + start hostd, run tests/vm; exit = suite's
#
# What it does:
#   /opt/hostd         virtualenv with hostd, installed from the checkout ($HOSTD_SRC),
#                      plus pytest for the VM suite
#   /etc/hostd/        hostd.toml + pools.d/{alpha,beta}.toml from examples/, listening on
#                      0.0.0.0:8080 (so a port forward from the host reaches it), apps in
#                      /srv/hostd/apps, run_dir /run/hostd, state_dir /var/lib/hostd
#   /etc/systemd/system/hostd.service   = systemd/hostd.service; enabled, `systemctl start`
# Env: HOSTD_SRC        the checkout (default: this script's parent directory)
#      HOSTD_WHEELHOUSE offline install: every dependency (and pytest, setuptools, wheel)
#                       as wheels here, nothing is fetched (run-vm-suite's guest has no
#                       network). Without it, pip and apt fetch what is missing.
#      HOSTD_VM_SUITE=0 install and start only, do not run the suite
set -euo pipefail
src=${HOSTD_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
venv=/opt/hostd
etc=/etc/hostd
apps=/srv/hostd/apps
t0=$(date +%s.%N)
say() { echo "provision: $*"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
[ "$(id -u)" = 0 ] || { echo "provision: run as root" >&2; exit 2; }

# --no-compile: byte-compiling every installed module (pyroute2 is large) costs ~half a
# minute under emulation; Python compiles what hostd imports on first use instead
pip_opts=(--quiet --disable-pip-version-check --no-warn-script-location --no-compile)
if [ -n "${HOSTD_WHEELHOUSE:-}" ]; then
  pip_opts+=(--no-index --find-links "$HOSTD_WHEELHOUSE")
else
  # online (Vagrant): python-prctl is built from source, it needs gcc + libcap headers
  need=()
  for p in python3-venv python3-dev gcc libcap-dev; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# ---- hostd into /opt/hostd, from the checkout ----------------------------------------
# Built from a copy: the checkout may be read-only (run-vm-suite mounts it so) and a
# build must not leave root-owned build/ or *.egg-info in the user's tree.
pip=("$venv/bin/python" -m pip)
if [ -n "${HOSTD_WHEELHOUSE:-}" ]; then
  # ensurepip alone takes ~30 s under emulation: make the venv without pip and run pip
  # straight from its wheel in the wheelhouse (pip supports that), which installs pip too
  [ -x "$venv/bin/python" ] || python3 -m venv --without-pip "$venv"
  [ -x "$venv/bin/pip" ] || pip=("$venv/bin/python" "$(ls "$HOSTD_WHEELHOUSE"/pip-*.whl | head -n 1)/pip")
else
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
fi
build=$(mktemp -d /tmp/hostd-src.XXXXXX)
tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=./bench --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis \
    --exclude='*.so' -cf - . \
  | tar -C "$build" -xf -
# (pip always rebuilds and reinstalls a local directory, so a re-provision installs this
# checkout's code even under the same version number)
# no build isolation: an isolated build env costs ~20 s more under emulation
"${pip[@]}" install "${pip_opts[@]}" pip 'setuptools>=61' wheel
"$venv/bin/pip" install "${pip_opts[@]}" --no-build-isolation "$build" pytest
rm -rf "$build"
say "hostd installed in $venv ($(since "$t0")s)"

# ---- configuration: the example, made absolute and listening for the port forward -----
install -d -m 0755 "$etc" "$etc/pools.d" "$apps"
for d in "$src"/examples/apps/*/; do
  n=$(basename "$d"); rm -rf "${apps:?}/$n"; cp -r "$d" "$apps/$n"
done
sed -e 's|^listen = .*|listen = ["0.0.0.0:8080"]   # all addresses: reachable through a port forward|' \
    -e 's|^state_dir = .*|state_dir = "/var/lib/hostd"|' \
    -e 's|^run_dir = .*|run_dir = "/run/hostd"         # control socket: /run/hostd/control.sock|' \
    -e 's|^# Relative paths.*|# Installed by vagrant/provision.sh from examples/hostd.toml.|' \
    -e 's|127.0.0.1:8080|0.0.0.0:8080|' \
    "$src/examples/hostd.toml" > "$etc/hostd.toml"
for f in "$src"/examples/pools.d/*.toml; do
  sed -E 's|^directory = "(\.\./)?apps/([^"]*)"|directory = "'"$apps"'/\2"|' "$f" > "$etc/pools.d/$(basename "$f")"
done
"$venv/bin/hostd" --check-config --config "$etc/hostd.toml"

# ---- the unit, as shipped in systemd/ ----------------------------------------------
install -m 0644 "$src/systemd/hostd.service" /etc/systemd/system/hostd.service
install -D -m 0644 "$src/systemd/hostd.catalog" /usr/lib/systemd/catalog/hostd.catalog
journalctl --update-catalog || true
systemctl daemon-reload
systemctl enable --quiet hostd
if systemctl is-active --quiet hostd; then
  systemctl restart hostd            # re-provision: run the code just installed
else
  systemctl start hostd              # Type=notify: returns once hostd sent READY=1
fi
systemctl --no-pager --lines=0 status hostd | head -n 3 || true
say "hostd started under systemd ($(since "$t0")s since start of provisioning)"
[ -n "${HOSTD_VM_CTL:-}" ] && echo "provision_s=$(since "$t0")" >> "$HOSTD_VM_CTL/guest-timing"

if [ "${HOSTD_VM_SUITE:-1}" = 0 ]; then exit 0; fi
exec "$src/vagrant/guest-suite" "$@"
