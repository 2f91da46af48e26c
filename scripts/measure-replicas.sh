#!/usr/bin/env bash
# The facade at a fixed rate through one skyfuse, and through three replicas sharing
# one Redis (budgets, rate limits, deployment quotas and cooldowns: every shared path of
# a chat call), against an instant OpenAI-compatible upstream on loopback. The load
# generator spreads the requests over the replicas in turn, as a round-robin load
# balancer would. The differences from "direct" are the gateway's cost.
#
#   QPS=1000 SECONDS_=10 ./scripts/measure-replicas.sh
#
# Needs redis-server (apt-get install redis-server); SKYFUSE_BIN and FACADE_LOAD point
# at prebuilt binaries instead of building them (release profile) here.
set -euo pipefail
cd "$(dirname "$0")/.."
QPS=${QPS:-1000}
DURATION=${SECONDS_:-10}
UPSTREAM=18181 REDIS=18189
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

if [ -z "${SKYFUSE_BIN:-}" ]; then
    cargo build --release --locked --bin skyfuse
    SKYFUSE_BIN=target/release/skyfuse
fi
if [ -z "${FACADE_LOAD:-}" ]; then
    FACADE_LOAD=$(cargo bench --locked --bench facade_load --no-run 2>&1 | grep -o 'target/release/deps/facade_load-[0-9a-f]*' | head -1)
fi
wait_port() { for _ in $(seq 1 1200); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

redis-server --bind 127.0.0.1 --port $REDIS --save "" --appendonly no > "$work/redis.log" 2>&1 & pids+=($!)
"$FACADE_LOAD" upstream --port $UPSTREAM & pids+=($!)
wait_port $REDIS
wait_port $UPSTREAM
export SKYFUSE_REDIS_URL="redis://127.0.0.1:$REDIS" BENCH_KEY="bench-key-$$"

# One replica's config: a caller with a budget and a rate limit, a deployment with a
# quota (all far above the load, so every call is admitted and every check runs), and
# [shared_state] when the second argument says so.
replica() {
    local index=$1 shared=$2
    cat > "$work/replica-$index.toml" <<TOML
[server]
listen = "127.0.0.1:$((18190 + index))"
data_dir = "$work/data-$index"
max_concurrent_calls = 4096
[facade]
listen = "127.0.0.1:$((18200 + index))"
[routing]
default_model = "bench-model"
[[provider]]
id = "upstream"
kind = "openai_compat"
base_url = "http://127.0.0.1:$UPSTREAM"
[[deployment]]
provider = "upstream"
model = "bench-model"
input_per_1m_usd = 0.15
output_per_1m_usd = 0.60
requests_per_minute = 10000000
tokens_per_minute = 10000000000
[[caller]]
id = "bench"
api_key = "env:BENCH_KEY"
budget_usd_per_day = 100000
[limits]
[[limits.caller]]
id = "bench"
requests_per_minute = 10000000
TOML
    if [ "$shared" = shared ]; then
        printf '[shared_state]\nredis_url = "env:SKYFUSE_REDIS_URL"\nkey_prefix = "bench-%s"\n' "$$" >> "$work/replica-$index.toml"
    fi
    "$SKYFUSE_BIN" --config "$work/replica-$index.toml" serve 2> "$work/replica-$index.log" & pids+=($!)
    wait_port $((18200 + index))
}

load() { "$FACADE_LOAD" load --key "$BENCH_KEY" --qps "$QPS" --seconds "$DURATION" "$@"; }

"$FACADE_LOAD" load --label "direct                 @${QPS}/s" --target "http://127.0.0.1:$UPSTREAM" --qps "$QPS" --seconds "$DURATION"
replica 0 alone
load --label "one skyfuse, in process @${QPS}/s" --target "http://127.0.0.1:18200"
for index in 1 2 3; do replica $index shared; done
load --label "three replicas + Redis  @${QPS}/s" --target "http://127.0.0.1:18201,http://127.0.0.1:18202,http://127.0.0.1:18203"
budget_key=$(redis-cli -p $REDIS --scan --pattern "bench-$$:budget:*" | head -1)
echo "spent in Redis by the three replicas: $(redis-cli -p $REDIS hget "$budget_key" spent) micro-USD"
