#!/usr/bin/env bash
# Start a throw-away three-node etcd cluster on 127.0.0.1, for `kv bench --target etcd`.
#
#   bench/run_etcd_cluster.sh            # client URLs 127.0.0.1:2379, :12379, :22379
#   KV_BENCH_ETCD_PORT=3000 bench/run_etcd_cluster.sh   # client URLs :3000, :3010, :3020
#
# (Not ETCD_*: etcd reads every ETCD_* variable as a flag.)
#
# Data lives in a temporary directory that is removed on exit. The cluster stops
# on Ctrl-C, on SIGTERM, and when the process that started this script exits
# (so a benchmark script that forgets to stop it does not leave etcd running).
# Uses Debian's etcd-server package; installs it when `etcd` is missing.
set -euo pipefail

if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd not found; installing Debian's etcd-server package" >&2
    if ! apt-get install -y etcd-server >&2; then
        apt-get update >&2 && apt-get install -y etcd-server >&2
    fi
fi

parent=$PPID
data=$(mktemp -d "${TMPDIR:-/tmp}/etcd-bench.XXXXXX")
pids=()

members_alive() {
    local pid
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || return 1
    done
}

stop() {
    trap - EXIT INT TERM
    local pid _
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do  # up to 5 s for a clean shutdown, then SIGKILL
        running=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && running=1
        done
        ((running)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$data"
    echo "etcd cluster stopped" >&2
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Port layout: node i (0..2) listens for clients on client_port(i), for peers on peer_port(i).
if [[ -n "${KV_BENCH_ETCD_PORT:-}" ]]; then
    client_port() { echo $((KV_BENCH_ETCD_PORT + 10 * $1)); }
    peer_port() { echo $((KV_BENCH_ETCD_PORT + 10 * $1 + 1)); }
else
    ports=(2379 12379 22379)  # below the ephemeral port range (32768+), which busy hosts fill
    client_port() { echo "${ports[$1]}"; }
    peer_port() { echo $(("${ports[$1]}" + 1)); }
fi

cluster=""
for i in 0 1 2; do
    cluster+="${cluster:+,}e$((i + 1))=http://127.0.0.1:$(peer_port "$i")"
done

urls=()
for i in 0 1 2; do
    name="e$((i + 1))"
    cport=$(client_port "$i")
    pport=$(peer_port "$i")
    etcd --name "$name" \
        --data-dir "$data/$name" \
        --listen-client-urls "http://127.0.0.1:$cport" \
        --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-peer-urls "http://127.0.0.1:$pport" \
        --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "$cluster" \
        --initial-cluster-token "kv-bench-$$" \
        --initial-cluster-state new \
        --log-level error \
        >"$data/$name.log" 2>&1 &
    pids+=("$!")
    urls+=("http://127.0.0.1:$cport")
done

# Wait (at most 10 s) until every member reports healthy; give up at once if one died.
for url in "${urls[@]}"; do
    for _ in $(seq 1 100); do
        if curl -fsS "$url/health" 2>/dev/null | grep -q '"health":"true"'; then
            continue 2
        fi
        members_alive || break
        sleep 0.1
    done
    echo "etcd did not come up (is a port in use?); the logs:" >&2
    tail -n 3 "$data"/*.log >&2
    exit 1
done

endpoints=$(IFS=,; echo "${urls[*]}")
echo "etcd cluster up (data in $data)"
echo "client URLs: $endpoints"
echo "try: kv bench --target etcd --endpoints $endpoints"

# Run until a signal, a member dies, or the parent goes away (this script is then
# re-parented, so its parent pid changes; `kill -0` alone would miss a zombie parent).
parent_alive() {
    [[ "$(ps -o ppid= -p $$ | tr -d ' ')" == "$parent" ]] && kill -0 "$parent" 2>/dev/null
}
while parent_alive; do
    if ! members_alive; then
        echo "an etcd member exited; stopping the cluster" >&2
        exit 1
    fi
    sleep 1
done
