#!/usr/bin/env bash
# Builds the plugin, the clients, the tests and the dashboard into build/.
# BUILD_DIR and extra cmake arguments may be given: scripts/build.sh -DTALLY_SANITIZE=ON
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
# Installs go where Debian's own packages are (see CMakeLists.txt).
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
if [[ -x clients/web/build.sh ]]; then
  clients/web/build.sh
fi
