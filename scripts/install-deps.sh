#!/usr/bin/env bash
# Installs what tally needs on Debian 12 (run as root). Idempotent: it calls
# apt-get only when a package is missing, and npm only when node_modules is.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config clang libclang-rt-14-dev clang-format
  mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev
  libcjson-dev check uthash-dev libwebsockets-dev zlib1g-dev
  python3 python3-pytest python3-pytest-xdist python3-paho-mqtt
  esbuild chromium
  libmicrohttpd-dev prometheus man-db python3-yaml
  debhelper fakeroot lintian
  node-typescript
)
# Node.js may come from Debian or from NodeSource (whose nodejs package has
# npm inside and conflicts with Debian's npm): ask for the commands.
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts a mosquitto service on 1883 when the package is installed;
# tally's configs use other ports, so it can stay.
if [[ ! -d clients/web/node_modules ]]; then
  (cd clients/web && npm ci --no-audit --no-fund)
fi
if [[ -f tests/e2e/package.json && ! -d tests/e2e/node_modules ]]; then
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi
