#!/usr/bin/env bash
# Run the same `kv bench` load against this store and against etcd, side by side.
#
# What it does:
#   1. starts the three-node kv cluster of cluster.toml (`kv cluster up`),
#   2. starts a three-node etcd on 127.0.0.1 (bench/run_etcd_cluster.sh),
#   3. for each workload runs `kv bench` on both with identical settings,
#   4. stops both clusters on exit (also on Ctrl-C).
#
# Usage (from the repository root, after `make cluster` once or `pip install -e .`):
#   bench/compare.sh
#   DURATION=30 CONCURRENCY="1 16 64 256" PROCESSES=4 WORKLOADS="write mixed" bench/compare.sh
#   JSON=1 bench/compare.sh > results.jsonl      # one JSON object per run
#
# The same by hand, in three terminals:
#   kv cluster up --config cluster.toml
#   bench/run_etcd_cluster.sh
#   kv bench --target kv   --workload write --duration 10 --concurrency 32
#   kv bench --target etcd --workload write --duration 10 --concurrency 32 \
#       --endpoints http://127.0.0.1:2379,http://127.0.0.1:12379,http://127.0.0.1:22379
#
# Both targets get the same keys, value sizes and concurrency. Reads are
# linearizable on both (etcd's default range; add CONSISTENCY=stale to compare
# local reads: etcd `serializable`, kv `?consistency=stale`). etcd fsyncs its
# WAL and so does kv, so run both on the same disk. Loads only go to 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-32}
PROCESSES=${PROCESSES:-1}
VALUE_SIZE=${VALUE_SIZE:-128}
KEYS=${KEYS:-1000}
CONSISTENCY=${CONSISTENCY:-linearizable}
WORKLOADS=${WORKLOADS:-write read mixed}
CONFIG=${CONFIG:-cluster.toml}
KV_BENCH_ETCD_PORT=${KV_BENCH_ETCD_PORT:-}

if [[ -z "${KV:-}" ]]; then
    if [[ -x .venv/bin/kv ]]; then KV=.venv/bin/kv; else KV=kv; fi
fi

pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "compare: $*" >&2; }

log "starting the kv cluster from $CONFIG"
"$KV" cluster up --config "$CONFIG" >&2 &
pids+=("$!")

log "starting etcd"
etcd_out=$(mktemp)
KV_BENCH_ETCD_PORT=$KV_BENCH_ETCD_PORT bench/run_etcd_cluster.sh >"$etcd_out" &
pids+=("$!")

# Wait (bounded) for etcd to print its URLs and for kv to accept a write.
etcd_endpoints=""
for _ in $(seq 1 300); do
    etcd_endpoints=$(sed -n 's/^client URLs: //p' "$etcd_out")
    [[ -n "$etcd_endpoints" ]] && break
    sleep 0.1
done
rm -f "$etcd_out"
[[ -n "$etcd_endpoints" ]] || { log "etcd did not start"; exit 1; }

for _ in $(seq 1 60); do
    if "$KV" put --config "$CONFIG" --timeout 2 bench/ready 1 >/dev/null 2>&1; then
        kv_ready=1
        break
    fi
    sleep 0.5
done
[[ -n "${kv_ready:-}" ]] || { log "the kv cluster did not accept a write within 30 s"; exit 1; }

common=(--duration "$DURATION" --processes "$PROCESSES"
    --value-size "$VALUE_SIZE" --keys "$KEYS" --consistency "$CONSISTENCY" --seed 1)
[[ -n "${JSON:-}" ]] && common+=(--json)

# CONCURRENCY may list several levels ("1 16 64 256"); each runs on kv, then on etcd.
for workload in $WORKLOADS; do
    for concurrency in $CONCURRENCY; do
        log "workload $workload, concurrency $concurrency: kv"
        "$KV" bench --target kv --config "$CONFIG" --workload "$workload" \
            --concurrency "$concurrency" "${common[@]}" || true
        log "workload $workload, concurrency $concurrency: etcd"
        "$KV" bench --target etcd --endpoints "$etcd_endpoints" --workload "$workload" \
            --concurrency "$concurrency" "${common[@]}" || true
    done
done
