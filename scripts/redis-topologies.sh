# Sourced by scripts/test.sh after scripts/emulators.sh (free_port, emulator_pids,
# emulators_root): a three-primary Redis Cluster and a Sentinel-watched primary with
# one replica, from Debian's redis-server, on 127.0.0.1, without persistence, stopped
# on exit with the emulators. Each node works in its own folder under
# .emulators/redis-topologies/, wiped at each start.

# A port P with P and its cluster bus port P + 10000 both free.
free_cluster_port() {
    python3 - <<'PORT'
import random, socket
while True:
    port = random.randint(20000, 50000)
    sockets, free = [], True
    for candidate in (port, port + 10000):
        probe = socket.socket()
        sockets.append(probe)
        try:
            probe.bind(("127.0.0.1", candidate))
        except OSError:
            free = False
    for probe in sockets:
        probe.close()
    if free:
        print(port)
        break
PORT
}

# Waits until the server on PORT answers PING.
wait_for_redis() {
    local port="$1"
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    redis-cli -p "$port" ping >/dev/null
}

# Starts redis-server with ARGS, in folder DIR, logging to LOG; remembers its pid.
start_redis_node() {
    local dir="$1" log="$2"
    shift 2
    mkdir -p "$dir"
    (cd "$dir" && exec redis-server "$@") >"$log" 2>&1 &
    emulator_pids+=($!)
}

start_redis_cluster() {
    local root="$emulators_root/redis-topologies/cluster" ports=() port
    rm -rf "$root"
    for _ in 1 2 3; do
        port=$(free_cluster_port)
        ports+=("$port")
        start_redis_node "$root/$port" "$emulators_root/logs/redis-cluster-$port.log" \
            --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
            --save "" --appendonly no
    done
    for port in "${ports[@]}"; do wait_for_redis "$port"; done
    redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" \
        "127.0.0.1:${ports[2]}" --cluster-yes >"$emulators_root/logs/redis-cluster-create.log" 2>&1
    # Every node must see all slots served before a test routes to it.
    for port in "${ports[@]}"; do
        for _ in $(seq 1 200); do
            redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
            sleep 0.1
        done
        redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok'
    done
    export SKYFUSE_TEST_REDIS_CLUSTER_URL="redis+cluster://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
}

start_redis_sentinel() {
    local root="$emulators_root/redis-topologies/sentinel" primary replica sentinel
    rm -rf "$root"
    primary=$(free_port)
    replica=$(free_port)
    sentinel=$(free_port)
    start_redis_node "$root/primary" "$emulators_root/logs/redis-sentinel-primary.log" \
        --bind 127.0.0.1 --port "$primary" --save "" --appendonly no
    start_redis_node "$root/replica" "$emulators_root/logs/redis-sentinel-replica.log" \
        --bind 127.0.0.1 --port "$replica" --save "" --appendonly no \
        --replicaof 127.0.0.1 "$primary"
    wait_for_redis "$primary"
    wait_for_redis "$replica"
    # Sentinel rewrites its config file, so it gets one of its own. A quorum of one:
    # the only sentinel decides (SENTINEL FAILOVER needs no agreement anyway).
    mkdir -p "$root/sentinel"
    cat >"$root/sentinel/sentinel.conf" <<CONF
bind 127.0.0.1
port $sentinel
sentinel monitor skyfuse-test 127.0.0.1 $primary 1
sentinel down-after-milliseconds skyfuse-test 5000
sentinel failover-timeout skyfuse-test 10000
CONF
    start_redis_node "$root/sentinel" "$emulators_root/logs/redis-sentinel.log" \
        "$root/sentinel/sentinel.conf" --sentinel
    wait_for_redis "$sentinel"
    # The sentinel learns the replica from the primary's INFO (every 10 s): a failover
    # test needs it known.
    for _ in $(seq 1 300); do
        redis-cli -p "$sentinel" sentinel replicas skyfuse-test 2>/dev/null | grep -q "$replica" && break
        sleep 0.1
    done
    redis-cli -p "$sentinel" sentinel replicas skyfuse-test | grep -q "$replica"
    export SKYFUSE_TEST_REDIS_SENTINEL_URL="redis+sentinel://127.0.0.1:$sentinel/skyfuse-test"
}
