#!/usr/bin/env bash
# Prepare this checkout on Debian 12 (as root): system packages and the virtualenv.
#   scripts/setup.sh          what `sipfleet up` needs
#   scripts/setup.sh --test   also what the test suite needs (sipp, MariaDB, PostgreSQL, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

packages=(python3 python3-venv python3-dev gcc)
if ((want_test)); then
  packages+=(sip-tester sipvicious mariadb-server mariadb-client postgresql iproute2 nftables conntrack procps)
  # MariaDB Galera, three nodes with rsync state transfers (tests/integration/test_galera.py)
  packages+=(galera-4 rsync)
  # real phones for tests/interop: baresip and the Linphone console (PJSIP comes from pip)
  packages+=(baresip-core linphone-cli)
  # the media relay the proxy drives (userspace forwarding; tests start their own)
  packages+=(rtpengine-daemon)
  # a real browser for the management status page's test (headless)
  packages+=(chromium)
  # promtool checks each role's /metrics text (tests/mgmt/test_metrics.py)
  packages+=(prometheus)
  # JsSIP from the npm registry for the browser test (tests/interop/test_jssip.py); a
  # Node.js that bundles npm (NodeSource's) needs no Debian npm, which would conflict
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Only promtool is wanted: the Prometheus server the package enables (port 9090) is not.
if ((want_test)) && [[ -d /run/systemd/system ]] && systemctl -q is-enabled prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# Debian's own python3: built with PGO/LTO, and what a fresh Debian 12 machine has.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.sipfleet-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[mysql,postgres,native,dev]'
  touch "$stamp"
fi
if ((want_test)) && [[ ! -d tests/interop/browser/node_modules/jssip ]]; then
  (cd tests/interop/browser && npm ci --no-audit --no-fund --loglevel=error) ||
    echo "setup: JsSIP not installed (tests/interop/test_jssip.py installs it when run)" >&2
fi
# The modules every packet runs through, compiled with mypyc (src/sipfleet/native.py);
# SIPFLEET_PURE=1 runs everything from source instead.
if [[ -z ${SIPFLEET_PURE:-} ]]; then
  .venv/bin/python scripts/compile.py || echo "setup: going on without the compiled build" >&2
fi
