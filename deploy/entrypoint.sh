#!/bin/sh
# The container's entrypoint: write cluster.toml from the pod's stable name, then run
# the node. Kubernetes StatefulSet pods are named <set>-<ordinal> (kv-0, kv-1, ...) and
# reachable as <pod>.<headless service>.<namespace>.svc.<domain>, so every pod can derive
# the whole founding cluster from its own name and the replica count: no discovery
# service, no shared file.
#
#   kv-entrypoint                 write the config and exec `kv serve` (extra args pass on)
#   kv-entrypoint print-config    print the config this pod would use, and exit
#   kv-entrypoint healthcheck     exit 0 when this node's /livez answers (Docker HEALTHCHECK)
#
# Environment (defaults in brackets):
#   KV_NODE_ID         this node's id, <base>-<ordinal> [$KV_POD_NAME, else $HOSTNAME]
#   KV_REPLICAS        founding members: ordinals 0..N-1 [3]; a higher ordinal starts
#                      with join = true and waits for `kv member add`
#   KV_SERVICE         the headless Service [kv];  KV_NAMESPACE [default]
#   KV_CLUSTER_DOMAIN  [cluster.local]
#   KV_HOST_TEMPLATE   a member's advertised host, {name} = its id
#                      [{name}.$KV_SERVICE.$KV_NAMESPACE.svc.$KV_CLUSTER_DOMAIN]
#   KV_CLIENT_PORT, KV_PEER_PORT   one port for all [8001, 7001], or one per ordinal
#                      separated by commas (several nodes sharing one network)
#   KV_LISTEN_HOST     the address to bind [0.0.0.0]
#   KV_DATA_DIR        the volume: cluster.toml and <id>/ live here [/data]
#   KV_CLUSTER_NAME    [kv];  KV_LOG_FORMAT  text or json [json]
#   KV_INITIAL_CLUSTER true: a founder whose volume holds no log founds the cluster
#                      without asking its peers (`kv serve --initial-cluster`) [false].
#                      Not needed: with false a founder on an empty volume asks its
#                      peers and founds unless one has seen an earlier incarnation of it
#                      (a wiped or replaced volume, which then refuses to start).
#   KV_PEER_SECRET     the cluster secret authenticating peer traffic (32+ characters;
#                      written to $KV_DATA_DIR/peer.secret, mode 0600), or
#   KV_PEER_SECRET_FILE  a file holding it. Required unless KV_LISTEN_HOST is loopback:
#                      a node never serves unauthenticated peers beyond loopback
set -eu

fail() { echo "kv-entrypoint: $*" >&2; exit 2; }

node_id=${KV_NODE_ID:-${KV_POD_NAME:-${HOSTNAME:-}}}
[ -n "$node_id" ] || fail "no node id: set KV_NODE_ID or KV_POD_NAME"
ordinal=${node_id##*-}
base=${node_id%-*}
case "$ordinal" in
  '' | *[!0-9]*) fail "node id '$node_id' does not end in -<ordinal> (like kv-0)" ;;
esac
[ "$base" != "$node_id" ] || fail "node id '$node_id' has no -<ordinal> suffix"
ordinal=$((ordinal + 0))

replicas=${KV_REPLICAS:-3}
service=${KV_SERVICE:-kv}
namespace=${KV_NAMESPACE:-default}
domain=${KV_CLUSTER_DOMAIN:-cluster.local}
template=${KV_HOST_TEMPLATE:-"{name}.$service.$namespace.svc.$domain"}
client_ports=${KV_CLIENT_PORT:-8001}
peer_ports=${KV_PEER_PORT:-7001}
listen_host=${KV_LISTEN_HOST:-0.0.0.0}
data_dir=${KV_DATA_DIR:-/data}
config="$data_dir/cluster.toml"
log_format=${KV_LOG_FORMAT:-json}
initial=${KV_INITIAL_CLUSTER:-false}
case "$initial" in
  true | false) ;;
  *) fail "KV_INITIAL_CLUSTER must be true or false, got '$initial'" ;;
esac

# port_of LIST ORDINAL: the ordinal's entry of a comma list, or the only entry.
port_of() {
  count=$(echo "$1" | awk -F, '{print NF}')
  if [ "$count" -eq 1 ]; then echo "$1"; return; fi
  [ "$2" -lt "$count" ] || fail "no port for ordinal $2 in '$1'"
  echo "$1" | cut -d, -f"$(($2 + 1))"
}

host_of() { echo "$template" | sed "s/{name}/$1/g"; }

members=$replicas
[ "$ordinal" -lt "$members" ] || members=$((ordinal + 1))

secret_file=${KV_PEER_SECRET_FILE:-}

write_config() {
  mkdir -p "$data_dir"
  if [ -n "${KV_PEER_SECRET:-}" ]; then
    secret_file="$data_dir/peer.secret"
    (umask 077 && printf '%s' "$KV_PEER_SECRET" > "$secret_file")
  fi
  tmp="$config.tmp.$$"
  {
    echo "# Written by kv-entrypoint for $node_id at every start; edits are overwritten."
    echo "[cluster]"
    echo "name = \"${KV_CLUSTER_NAME:-kv}\""
    echo "data_dir = \"$data_dir\""
    echo "log_format = \"$log_format\""
    i=0
    while [ "$i" -lt "$members" ]; do
      name="$base-$i"
      host=$(host_of "$name")
      cport=$(port_of "$client_ports" "$i")
      pport=$(port_of "$peer_ports" "$i")
      echo ""
      echo "[[nodes]]"
      echo "id = \"$name\""
      echo "client_url = \"http://$host:$cport\""
      echo "peer_url = \"http://$host:$pport\""
      if [ "$name" = "$node_id" ]; then
        echo "listen_client = \"$listen_host:$cport\""
        echo "listen_peer = \"$listen_host:$pport\""
      fi
      if [ "$i" -ge "$replicas" ]; then echo "join = true"; fi
      i=$((i + 1))
    done
    if [ -n "$secret_file" ]; then
      echo ""
      echo "[peer_auth]"
      echo "secret_file = \"$secret_file\""
    fi
  } > "$tmp"
  mv "$tmp" "$config"
}

case "${1:-}" in
  print-config)
    write_config
    cat "$config"
    exit 0
    ;;
  healthcheck)
    port=$(port_of "$client_ports" "$ordinal")
    exec python3 -c "import sys, urllib.request
try:
    urllib.request.urlopen('http://127.0.0.1:$port/livez', timeout=3)
except Exception as exc:
    sys.exit(f'not live: {exc}')"
    ;;
esac

write_config
if [ "$initial" = true ] && [ "$ordinal" -lt "$replicas" ]; then
  set -- --initial-cluster "$@"  # ignored by a node that already has data
fi
exec kv serve --config "$config" --node "$node_id" "$@"
