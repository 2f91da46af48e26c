#!/usr/bin/env bash
# Gateway overhead on loopback. One instant OpenAI-compatible upstream; the same
# fixed-rate load sent to it directly, through skyfuse's facade (`skyfuse serve`
# with [facade]), and through LiteLLM's proxy when LITELLM points at its binary.
# Also the skyfuse server's resident memory, idle and after the load.
#
#   QPS=200 SECONDS_=15 LITELLM=/tmp/litellm-venv/bin/litellm ./scripts/measure-facade.sh
#
# Streaming (issue 18: added TTFT <= 0.2 ms p99, <= 3 us a chunk): a facade of its
# own in front of instant upstreams streaming 2 or 202 content chunks. TTFT directly
# and through the facade at QPS gives the added TTFT (p50, p99); the facade's CPU
# time per request with 202 chunks minus with 2, over 200, its CPU per chunk: once
# with each answer written at once (at QPS), once paced a chunk a millisecond as a
# model sends them (at PACED_QPS=20, each STREAM_SECONDS=10). SKYFUSE_BIN=path runs
# another server binary (a copy: cargo rewrites target/) for before/after pairs.
#
# With wrk and nginx installed (apt-get install wrk nginx-light), a last part
# measures closed-loop throughput and latency: nginx answers every completion with
# the same SSE body, and wrk drives it directly, through three pass-through proxies
# and through the facade at 1, 8, 32 and 128 connections (CONNECTIONS overrides
# the list), then at 1 connection again with the servers pinned to one CPU and wrk
# to the other (taskset), which takes the scheduler's cross-CPU wake-ups out.
#
# The three proxies only forward bytes, on the same two cores: nginx's reverse proxy
# (proxy_buffering off, keep-alive upstreams), and the two floors of
# benches/proxy_floor.rs, hyper alone and axum with hyper-util's pooled client (the
# facade's own parts, without its authentication, routing, metering and
# re-encoding). nginx's proxy also stands in front of the stream upstreams (its added
# TTFT and CPU per chunk).
set -euo pipefail
cd "$(dirname "$0")/.."
QPS=${QPS:-200}
DURATION=${SECONDS_:-15}
UPSTREAM=18081 FACADE=18082 GRPC=18083 LITELLM_PORT=18084 NGINX=18085 NGINX_FACADE=18086 NGINX_GRPC=18087
NGINX_PROXY=18094 PROXY_SHORT=18095 PROXY_LONG=18096 PROXY_SHORT_PACED=18097 PROXY_LONG_PACED=18098
FLOOR_HYPER=18099 FLOOR_AXUM=18100
STREAM_SHORT=18088 STREAM_LONG=18089 STREAM_SHORT_PACED=18090 STREAM_LONG_PACED=18091 STREAM_FACADE=18092 STREAM_GRPC=18093
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --locked --bin skyfuse
# Another build of the server to compare (its own copy: cargo rewrites target/).
SKYFUSE=${SKYFUSE_BIN:-./target/release/skyfuse}
bench=$(cargo bench --locked --bench facade_load --no-run 2>&1 | grep -o 'target/release/deps/facade_load-[0-9a-f]*' | head -1)
floor=$(cargo bench --locked --bench proxy_floor --no-run 2>&1 | grep -o 'target/release/deps/proxy_floor-[0-9a-f]*' | head -1)
wait_port() { for _ in $(seq 1 1200); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
rss() { awk -v key="$2:" '$1 == key { print $2 / 1024 " MiB" }' "/proc/$1/status"; }

"$bench" upstream --port $UPSTREAM & pids+=($!)
wait_port $UPSTREAM

cat > "$work/skyfuse.toml" <<TOML
[server]
listen = "127.0.0.1:$GRPC"
data_dir = "$work/data"
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
[facade]
listen = "127.0.0.1:$FACADE"
TOML
"$SKYFUSE" --config "$work/skyfuse.toml" serve 2> "$work/skyfuse.log" & skyfuse=$!; pids+=($skyfuse)
wait_port $FACADE
sleep 1
echo "skyfuse idle: RSS $(rss $skyfuse VmRSS)"

for rate in 20 "$QPS"; do
  "$bench" load --label "direct   @${rate}/s" --target "http://127.0.0.1:$UPSTREAM" --qps "$rate" --seconds "$DURATION"
  "$bench" load --label "skyfuse  @${rate}/s" --target "http://127.0.0.1:$FACADE" --qps "$rate" --seconds "$DURATION"
done
echo "skyfuse after load: RSS $(rss $skyfuse VmRSS), peak $(rss $skyfuse VmHWM)"

if [ -n "${LITELLM:-}" ]; then
  cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:$UPSTREAM/v1
      api_key: unused
YAML
  # Like skyfuse without [[caller]]s: no authentication.
  LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true "$LITELLM" --config "$work/litellm.yaml" --host 127.0.0.1 --port $LITELLM_PORT > "$work/litellm.log" 2>&1 & litellm=$!; pids+=($litellm)
  wait_port $LITELLM_PORT
  sleep 2
  for rate in 20 "$QPS"; do
    "$bench" load --label "litellm  @${rate}/s" --target "http://127.0.0.1:$LITELLM_PORT" --qps "$rate" --seconds "$DURATION"
  done
  echo "litellm after load: RSS $(rss $litellm VmRSS), peak $(rss $litellm VmHWM)"
fi

# Streaming: the time to the first content chunk (TTFT) directly and through the
# facade at the same rate, then the facade's CPU time per request for answers of 2
# and of 202 content chunks (one body at once, then one chunk a millisecond as a
# model sends them): the difference over 200 is its CPU time per chunk. A facade
# of its own, so its CPU time is the streams' alone.
STREAM_SECONDS=${STREAM_SECONDS:-10}
PACED_QPS=${PACED_QPS:-20}
cat > "$work/skyfuse-stream.toml" <<TOML
[server]
listen = "127.0.0.1:$STREAM_GRPC"
data_dir = "$work/data-stream"
[routing]
default_model = "short"
[facade]
listen = "127.0.0.1:$STREAM_FACADE"
TOML
for shape in "short:2:0:$STREAM_SHORT" "long:202:0:$STREAM_LONG" "short-paced:2:1:$STREAM_SHORT_PACED" "long-paced:202:1:$STREAM_LONG_PACED"; do
  IFS=: read -r name chunks gap port <<< "$shape"
  "$bench" upstream --port "$port" --chunks "$chunks" --gap-ms "$gap" & pids+=($!)
  cat >> "$work/skyfuse-stream.toml" <<TOML
[[provider]]
id = "$name"
kind = "openai_compat"
base_url = "http://127.0.0.1:$port"
[[deployment]]
provider = "$name"
model = "$name"
input_per_1m_usd = 0.15
output_per_1m_usd = 0.60
TOML
done
for port in $STREAM_SHORT $STREAM_LONG $STREAM_SHORT_PACED $STREAM_LONG_PACED; do wait_port "$port"; done
proxy=
if command -v nginx > /dev/null; then
  # nginx's reverse proxy, a worker of its own: one server in front of each stream
  # upstream, and one in front of the wrk part's nginx (started below).
  mkdir -p "$work/proxy"
  {
    echo "worker_processes 1; daemon off; error_log $work/proxy/error.log; pid $work/proxy/nginx.pid;"
    echo "events { worker_connections 1024; }"
    echo "http { access_log off; client_body_temp_path $work/proxy; proxy_temp_path $work/proxy; keepalive_requests 1000000;"
    for pair in "$NGINX_PROXY:$NGINX" "$PROXY_SHORT:$STREAM_SHORT" "$PROXY_LONG:$STREAM_LONG" \
      "$PROXY_SHORT_PACED:$STREAM_SHORT_PACED" "$PROXY_LONG_PACED:$STREAM_LONG_PACED"; do
      echo "  upstream u${pair%%:*} { server 127.0.0.1:${pair##*:}; keepalive 64; }"
      echo "  server { listen 127.0.0.1:${pair%%:*}; location / { proxy_pass http://u${pair%%:*};"
      echo "    proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }"
    done
    echo "}"
  } > "$work/proxy/nginx.conf"
  nginx -c "$work/proxy/nginx.conf" -p "$work/proxy" & pids+=($!)
  wait_port $PROXY_SHORT
  proxy=$(pgrep -P "$(cat "$work/proxy/nginx.pid")")
fi
"$SKYFUSE" --config "$work/skyfuse-stream.toml" serve 2> "$work/skyfuse-stream.log" & streamer=$!; pids+=($streamer)
wait_port $STREAM_FACADE
stream_load() { "$bench" load --stream --seconds "$STREAM_SECONDS" "$@"; }
stream_load --label "direct  stream short @${QPS}/s" --target "http://127.0.0.1:$STREAM_SHORT" --chunks 2 --qps "$QPS" | tee "$work/direct.txt"
if [ -n "$proxy" ]; then
  for shape in short:2:$QPS:$PROXY_SHORT long:202:$QPS:$PROXY_LONG short-paced:2:$PACED_QPS:$PROXY_SHORT_PACED long-paced:202:$PACED_QPS:$PROXY_LONG_PACED; do
    IFS=: read -r name chunks rate port <<< "$shape"
    stream_load --label "nginx   stream $name @${rate}/s" --target "http://127.0.0.1:$port" \
      --chunks "$chunks" --qps "$rate" --server-pid "$proxy" | tee "$work/nginx-$name.txt"
  done
fi
# Paced answers last ~0.5 s each: a lower rate, or the 2 cores fall behind.
for shape in short:2:$QPS long:202:$QPS short-paced:2:$PACED_QPS long-paced:202:$PACED_QPS; do
  IFS=: read -r name chunks rate <<< "$shape"
  stream_load --label "skyfuse stream $name @${rate}/s" --target "http://127.0.0.1:$STREAM_FACADE" \
    --model "$name" --chunks "$chunks" --qps "$rate" --server-pid "$streamer" | tee "$work/$name.txt"
done
ttft() { awk -v q="$2" '/TTFT/ { for (i = 1; i < NF; i++) if ($i == q) print $(i + 1) }' "$work/$1.txt"; }
per_request() { awk '/server CPU/ { print $(NF - 3) }' "$work/$1.txt"; }
peers=skyfuse:
[ -n "$proxy" ] && peers="nginx:nginx- $peers"
for peer in $peers; do
  IFS=: read -r label prefix <<< "$peer"
  awk -v d50="$(ttft direct p50)" -v d99="$(ttft direct p99)" -v f50="$(ttft "${prefix}short" p50)" \
    -v f99="$(ttft "${prefix}short" p99)" -v label="$label" \
    'BEGIN { printf "%s added TTFT ms: p50 %.3f p99 %.3f\n", label, f50 - d50, f99 - d99 }'
  for pace in "" -paced; do
    awk -v short="$(per_request "${prefix}short$pace")" -v long="$(per_request "${prefix}long$pace")" \
      -v pace="$pace" -v label="$label" \
      'BEGIN { printf "%s CPU per chunk%s: %.2f us\n", label, pace, (long - short) / 200 }'
  done
done
echo "skyfuse (streams) after load: RSS $(rss $streamer VmRSS), peak $(rss $streamer VmHWM)"

if command -v wrk > /dev/null && command -v nginx > /dev/null; then
  # The completion the router asks for (it always streams upstream), as nginx returns it.
  sse='data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"bench-model","choices":[{"index":0,"delta":{"role":"assistant","content":"Paris is the capital of France."},"finish_reason":null}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","created":0,"model":"bench-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","created":0,"model":"bench-model","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":8,"total_tokens":28}}\n\ndata: [DONE]\n\n'
  mkdir -p "$work/nginx"
  cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX;
    location / { default_type text/event-stream; return 200 '$sse'; }
  }
}
NGINX
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)
  wait_port $NGINX
  sed -e "s/:$UPSTREAM/:$NGINX/" -e "s/:$FACADE/:$NGINX_FACADE/" -e "s/:$GRPC/:$NGINX_GRPC/" \
    -e "s#$work/data#$work/data-nginx#" "$work/skyfuse.toml" > "$work/skyfuse-nginx.toml"
  "$SKYFUSE" --config "$work/skyfuse-nginx.toml" serve 2> "$work/skyfuse-nginx.log" & facade=$!; pids+=($facade)
  "$floor" --port $FLOOR_HYPER --upstream 127.0.0.1:$NGINX --stack hyper > /dev/null & floor_hyper=$!; pids+=($floor_hyper)
  "$floor" --port $FLOOR_AXUM --upstream 127.0.0.1:$NGINX --stack axum-hyper > /dev/null & floor_axum=$!; pids+=($floor_axum)
  wait_port $NGINX_FACADE; wait_port $FLOOR_HYPER; wait_port $FLOOR_AXUM
  cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"What is the capital of France?"}]}'
LUA
  # One target at one load: wrk's figures, and the proxy's CPU time per request
  # (perf stat), which holds on a busy machine where req/s does not. $3 prefixes wrk.
  drive() {
    local name=${1%%:*} port=${1##*:} connections=$2 measured=
    case "$name" in
      skyfuse) measured=$facade ;; nginx-proxy) measured=$proxy ;;
      hyper-floor) measured=$floor_hyper ;; axum-hyper-floor) measured=$floor_axum ;;
    esac
    if [ -n "$measured" ] && command -v perf > /dev/null; then
      perf stat -e task-clock -p "$measured" -o "$work/cpu.txt" -- sleep "$DURATION" & stat=$!
    fi
    ${3:-} wrk -t1 -c"$connections" -d"${DURATION}s" --latency -s "$work/post.lua" \
      "http://127.0.0.1:$port/v1/chat/completions" > "$work/wrk.txt"
    grep -E "Requests/sec|50%|90%|99%|Non-2xx|errors" "$work/wrk.txt"
    if [ -n "${stat:-}" ]; then
      wait "$stat" || true
      awk -v reqs="$(awk '/requests in/ { print $1 }' "$work/wrk.txt")" \
        '/task-clock/ { gsub(",", "", $1); printf "  proxy CPU per request: %.1f us\n", $1 * 1000 / reqs }' "$work/cpu.txt"
      stat=
    fi
  }
  targets=("direct:$NGINX" "nginx-proxy:$NGINX_PROXY" "hyper-floor:$FLOOR_HYPER"
    "axum-hyper-floor:$FLOOR_AXUM" "skyfuse:$NGINX_FACADE")
  for connections in ${CONNECTIONS:-1 8 32 128}; do
    for target in "${targets[@]}"; do
      echo "== ${target%%:*} at $connections connections"
      drive "$target" "$connections"
    done
  done
  # One connection again with every server on CPU 0 and wrk on CPU 1. Unpinned, the
  # scheduler sometimes wakes the next process of the chain on the other CPU, and a
  # virtual CPU's wake-up costs tens of microseconds: that adds to a proxy with
  # longer turns (the facade) more than to a short one (docs/benchmarks.md).
  if command -v taskset > /dev/null; then
    servers=("${pids[@]}")
    for pid in "${pids[@]}"; do servers+=($(pgrep -P "$pid" || true)); done
    for pid in "${servers[@]}"; do taskset -a -pc 0 "$pid" > /dev/null 2>&1 || true; done
    for target in "${targets[@]}"; do
      echo "== ${target%%:*} at 1 connection, pinned"
      drive "$target" 1 "taskset -c 1"
    done
    for pid in "${servers[@]}"; do taskset -a -pc 0-1 "$pid" > /dev/null 2>&1 || true; done
  fi
  echo "skyfuse (facade only) after wrk: RSS $(rss $facade VmRSS), peak $(rss $facade VmHWM)"
fi
