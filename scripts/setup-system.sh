#!/usr/bin/env bash
# Install the Debian packages and the virtualenv this project needs.  Idempotent:
# packages already present are not reinstalled.  Usage: setup-system.sh run|test
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

packages=(python3 python3-venv python3-pip)
if [ "$mode" = test ]; then
  packages+=(postgresql memcached iproute2 util-linux openssh-server
             nginx-light libnginx-mod-http-modsecurity libnginx-mod-http-geoip2 modsecurity-crs
             caddy pebble knot knot-dnsutils openssl chromium glances python3-bottle
             docker-compose redis-server)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packaged services (nginx, caddy, postgresql, memcached) must not start: they would
  # listen on every interface. Tests start their own instances on loopback.
  policy=/usr/sbin/policy-rc.d
  created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
  fi
  # A fresh machine may still be running its own apt at boot: wait for its lock.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$created_policy" ]; then rm -f "$policy"; fi
fi
# The distribution's PostgreSQL service is not used: tests start their own.
if [ "$mode" = test ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now postgresql memcached nginx caddy glances >/dev/null 2>&1 || true
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
if [ "$mode" = test ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
else
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
