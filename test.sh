#!/usr/bin/env bash
# The project's one test command: installs what the tests need and is missing, then runs every
# test. Installs (Debian packages, as root or with sudo): redis-server and nats-server (the
# cluster tests start their own on ephemeral loopback ports), chromium (the browser tests of the
# demo page and the dashboard), Node.js and npm when absent; then `npm ci` in tests/browser
# (playwright-core, pinned by its package-lock.json) when its node_modules is absent.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nats-server >/dev/null || missing+=(nats-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}"
fi
if [ ! -d tests/browser/node_modules ]; then
    echo "== npm ci (tests/browser)"
    (cd tests/browser && npm ci --no-audit --no-fund)
fi

echo "== cargo test --workspace"
cargo test --workspace "$@"
