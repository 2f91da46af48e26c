#!/usr/bin/env bash
# One command from a fresh clone to an answer: fetch the model, build, index the
# project's own docs into the embedded default, start the server, ask it a question
# over gRPC, stop it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

./scripts/fetch-model.sh
cargo build --release --locked
skyfuse=target/release/skyfuse

echo "== indexing docs/ into the skyfuse home (\$SKYFUSE_HOME, else ~/.local/share/skyfuse)"
$skyfuse index docs

address=127.0.0.1:50051
echo "== starting the server on $address"
$skyfuse serve --listen "$address" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  $skyfuse sources --server "$address" >/dev/null 2>&1 && break
  sleep 0.2
done

echo "== search"
$skyfuse search --server "$address" "how does fusion merge results from different sources?"
echo
echo "== ask"
$skyfuse ask --server "$address" "How does skyfuse keep indexing safe after a crash?"
