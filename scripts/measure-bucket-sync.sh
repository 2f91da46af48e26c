#!/usr/bin/env bash
# Measures a sync of small objects from the S3 emulator (moto): a first run and a
# no-change re-run, each with wall time, objects/s and the CPU time skyfuse itself used.
# The re-run must fetch nothing; the script fails if it does.
#
#   ./scripts/measure-bucket-sync.sh [objects=10000] [fetch_concurrency=8]
#
# Indexes into a BM25-only config so the figures are the sync's (list, fetch, extract,
# write, manifest), not the embedding model's. Credentials and endpoint come from the
# standard AWS variables, as for a user with no credentials in the config.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
objects=${1:-10000}
fetch_concurrency=${2:-8}

cargo build --release --locked --bin skyfuse
binary="${CARGO_TARGET_DIR:-$root/target}/release/skyfuse"

source ./scripts/emulators.sh
install_emulators
prepare_emulator_run
start_moto

prefix="sync-$objects"
echo "seeding $objects objects into s3://$SKYFUSE_TEST_BUCKET/$prefix" >&2
"$emulators_root/venv/bin/python" - "$SKYFUSE_TEST_S3_ENDPOINT" "$SKYFUSE_TEST_BUCKET" "$prefix" "$objects" <<'PYTHON'
import sys
from concurrent.futures import ThreadPoolExecutor
import boto3
endpoint, bucket, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
def put(index):
    body = f"Object {index} describes shipment {index} leaving port {index % 97}.".encode()
    client.put_object(Bucket=bucket, Key=f"{prefix}/doc-{index:06}.txt", Body=body)
with ThreadPoolExecutor(16) as pool:
    list(pool.map(put, range(count)))
PYTHON

work=$(mktemp -d)
cat >"$work/skyfuse.toml" <<TOML
[server]
data_dir = "$work/data"

[[source]]
id = "bm25"
kind = "tantivy"

[[index]]
id = "docs"
sources = ["bm25"]

[[bucket]]
url = "s3://$SKYFUSE_TEST_BUCKET"
fetch_concurrency = $fetch_concurrency
TOML

export AWS_ENDPOINT_URL="$SKYFUSE_TEST_S3_ENDPOINT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

echo "machine load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for run in first no-change; do
    TIMEFORMAT='%R %U %S'
    { time "$binary" --config "$work/skyfuse.toml" index "s3://$SKYFUSE_TEST_BUCKET/$prefix" \
        >"$work/out" 2>/dev/null; } 2>"$work/time"
    summary=$(grep '^indexed' "$work/out")
    read -r wall user system <"$work/time"
    python3 - "$run" "$wall" "$user" "$system" "$objects" "$fetch_concurrency" "$summary" <<'PYTHON'
import sys
run, wall, user, system, objects, concurrency, summary = sys.argv[1:8]
wall, cpu, objects = float(wall), float(user) + float(system), int(objects)
print(f"{run} run: {wall:.2f} s wall, {objects / wall:,.0f} objects/s, "
      f"skyfuse CPU {cpu:.2f} s (fetch_concurrency {concurrency})\n  {summary}")
PYTHON
    if [ "$run" = no-change ] && ! grep -q ' 0 fetched' <<<"$summary"; then
        echo "the no-change re-run fetched objects: $summary" >&2
        exit 1
    fi
done
rm -rf "$work"
