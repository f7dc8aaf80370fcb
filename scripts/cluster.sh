#!/usr/bin/env bash
# A local three-node RabbitMQ cluster of the host's RabbitMQ (3.10 here) on loopback, for the
# cluster tests and the benchmark, beside the shared node on 5672 (which it never touches):
#
#   node                 AMQP             Erlang dist
#   rabbit-c1@localhost  127.0.0.1:5691   25691
#   rabbit-c2@localhost  127.0.0.1:5692   25692
#   rabbit-c3@localhost  127.0.0.1:5693   25693
#
#   scripts/cluster.sh up             start the three nodes, join c2 and c3 to c1 (idempotent)
#   scripts/cluster.sh down           stop them and remove their directories
#   scripts/cluster.sh status         one line per node; exit 0 when all three run clustered
#   scripts/cluster.sh kill NODE      kill -9 a node's Erlang VM (NODE: c1, rabbit-c1@localhost or 1)
#   scripts/cluster.sh start NODE     start a killed or stopped node again (it rejoins by itself)
#   scripts/cluster.sh pid NODE       the OS pid of a node's Erlang VM
#   scripts/cluster.sh ctl NODE ARGS… rabbitmqctl -n NODE ARGS…
#   scripts/cluster.sh queues NODE ARGS…  rabbitmq-queues -n NODE ARGS…
#
# CLUSTER_DIR, CLUSTER_BASE_PORT, CLUSTER_BASE_DIST_PORT and CLUSTER_NODE_PREFIX give a second
# cluster beside this one (the test fixture makes its own so that two test runs never share one);
# pass the same ones to every call about that cluster.
# Each node has its own config, env file, mnesia and log directories under $CLUSTER_DIR (default
# /var/lib/tim-recall/cluster), owned by user rabbitmq: the Debian package runs nodes as that user,
# and they share its Erlang cookie (/var/lib/rabbitmq/.erlang.cookie) with rabbitmqctl. Needs root.
# Nothing depends on the caller's working directory (it may be one user rabbitmq cannot enter, such
# as a clone under `mktemp -d`): the nodes run from their own directories, rabbitmqctl from /.
# Every failure ends with one line starting "cluster:" on stderr and a non-zero exit.
set -euo pipefail

DIR=${CLUSTER_DIR:-/var/lib/tim-recall/cluster}
[[ $DIR == /* ]] || DIR=$PWD/$DIR # the nodes do not run in the caller's directory
NODES=(c1 c2 c3)
BASE_PORT=${CLUSTER_BASE_PORT:-5690}        # c1 listens on BASE_PORT+1, …
BASE_DIST=${CLUSTER_BASE_DIST_PORT:-25690} # c1's dist port is BASE_DIST+1, …
PREFIX=${CLUSTER_NODE_PREFIX:-rabbit-}    # node names: ${PREFIX}c1@localhost, …
COOKIE_HOME=/var/lib/rabbitmq
RMQ_LIB=/usr/lib/rabbitmq/bin

die() {
  echo "cluster: $*" >&2
  exit 1
}
say() { echo "cluster: $*" >&2; }

[[ $(id -u) == 0 ]] || die "needs root (the nodes run as user rabbitmq)"
command -v rabbitmq-server >/dev/null 2>&1 ||
  die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
id rabbitmq >/dev/null 2>&1 || die "there is no user rabbitmq (the Debian package makes it)"

short() { # c1 | 1 | rabbit-c1 | rabbit-c1@localhost -> c1
  local n=${1%@*}
  n=${n#"$PREFIX"}
  [[ $n =~ ^[0-9]+$ ]] && n=c$n
  [[ " ${NODES[*]} " == *" $n "* ]] || die "no node '$1' (one of: ${NODES[*]})"
  echo "$n"
}
index() { echo "${1#c}"; }
nodename() { echo "$PREFIX$1@localhost"; }
amqp_port() { echo $((BASE_PORT + $(index "$1"))); }
dist_port() { echo $((BASE_DIST + $(index "$1"))); }
pidfile() { echo "$DIR/$1/mnesia/$(nodename "$1").pid"; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_rabbitmq() { # run a RabbitMQ tool as user rabbitmq with the shared cookie's HOME, from /
  # Never from the caller's directory: when user rabbitmq cannot enter it, Erlang's code server
  # fails on "." and prints eacces reports on stdout, into the JSON that callers parse.
  (cd / && exec runuser -u rabbitmq -- env HOME="$COOKIE_HOME" "$@")
}
ctl() {
  local n
  n=$(short "$1")
  shift
  as_rabbitmq "$RMQ_LIB/rabbitmqctl" -n "$(nodename "$n")" "$@"
}
queues() {
  local n
  n=$(short "$1")
  shift
  as_rabbitmq "$RMQ_LIB/rabbitmq-queues" -n "$(nodename "$n")" "$@"
}

vm_pid() { # the node's beam pid when it is alive, else nothing
  local f
  f=$(pidfile "$1")
  [[ -s $f ]] || return 1
  local pid
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_node_files() {
  local n=$1 d=$DIR/$1
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
# Written by tim-recall's scripts/cluster.sh.
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users.guest = true
cluster_partition_handling = pause_minority
log.file.level = info
EOF
  echo '[].' >"$d/enabled_plugins"
  cat >"$d/rabbitmq-env.conf" <<EOF
# Written by tim-recall's scripts/cluster.sh (this file replaces /etc/rabbitmq/rabbitmq-env.conf).
NODENAME=$(nodename "$n")
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$(amqp_port "$n")
DIST_PORT=$(dist_port "$n")
MNESIA_BASE=$d/mnesia
LOG_BASE=$d/log
CONFIG_FILE=$d/rabbitmq.conf
ENABLED_PLUGINS_FILE=$d/enabled_plugins
PID_FILE=$(pidfile "$n")
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
}

start_node() { # start one node detached; returns at once
  local n=$1 d=$DIR/$1
  if vm_pid "$n" >/dev/null; then return 0; fi
  if listening "$(amqp_port "$n")"; then
    die "something else listens on 127.0.0.1:$(amqp_port "$n") (CLUSTER_BASE_PORT picks others)"
  fi
  [[ -f $d/rabbitmq-env.conf ]] || write_node_files "$n"
  chown -R rabbitmq:rabbitmq "$DIR"
  readable "$n"
  # Its own session, no inherited descriptors (make and pytest wait for their pipes), and the
  # node's own directory as its working directory (never the caller's: see as_rabbitmq).
  (
    cd "$d"
    exec setsid runuser -u rabbitmq -- env HOME="$COOKIE_HOME" \
      RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
      RABBITMQ_NODENAME="$(nodename "$n")" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
      RABBITMQ_DIST_PORT="$(dist_port "$n")" \
      RABBITMQ_MNESIA_BASE="$d/mnesia" \
      RABBITMQ_LOG_BASE="$d/log" \
      RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
      RABBITMQ_PID_FILE="$(pidfile "$n")" \
      "$RMQ_LIB/rabbitmq-server"
  ) </dev/null >>"$d/start.log" 2>&1 9>&- &
  disown
}

readable() { # user rabbitmq must reach the node's files: every directory above DIR searchable
  as_rabbitmq test -r "$DIR/$1/rabbitmq.conf" ||
    die "user rabbitmq cannot read $DIR/$1/rabbitmq.conf: CLUSTER_DIR must be where that user can reach it"
}

await_node() {
  local n=$1 waited=0
  until listening "$(amqp_port "$n")"; do
    if ((waited >= 120)); then
      tail -n 15 "$DIR/$n/start.log" >&2 || true
      die "$(nodename "$n") did not open 127.0.0.1:$(amqp_port "$n") in 120 s; see $DIR/$n/log/"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  ctl "$n" await_startup --timeout 90 >/dev/null 2>&1 ||
    die "$(nodename "$n") opened its port but did not finish booting; see $DIR/$n/log/"
}

running_nodes() { # the running members of the cluster, as c1 sees them
  ctl c1 cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["running_nodes"])))'
}

clustered() {
  local want
  want=$(for n in "${NODES[@]}"; do nodename "$n"; done | sort | tr '\n' ' ')
  [[ "$(running_nodes) " == "$want" ]]
}

up() {
  local started=$SECONDS n
  if clustered 2>/dev/null; then
    say "already up: $(running_nodes)"
    return 0
  fi
  # A half-made cluster from an interrupted run: start again from nothing.
  if [[ -d $DIR ]]; then down quiet; fi
  (umask 022 && mkdir -p "$DIR")
  for n in "${NODES[@]}"; do write_node_files "$n"; done
  chown -R rabbitmq:rabbitmq "$DIR"
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in "${NODES[@]:1}"; do
    {
      ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$(nodename c1)" &&
        ctl "$n" start_app
    } >>"$DIR/$n/start.log" 2>&1 || die "$(nodename "$n") could not join $(nodename c1); see $DIR/$n/start.log"
  done
  for n in "${NODES[@]}"; do ctl "$n" await_startup --timeout 60 >/dev/null 2>&1; done
  clustered || die "the nodes started but do not form one cluster: $(running_nodes)"
  say "up in $((SECONDS - started)) s: $(running_nodes) on 127.0.0.1:$(amqp_port c1)-$(amqp_port c3)"
}

down() {
  local quiet=${1:-} n pid
  for n in "${NODES[@]}"; do
    pid=$(vm_pid "$n") || continue
    as_rabbitmq timeout 30 "$RMQ_LIB/rabbitmqctl" -n "$(nodename "$n")" stop >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [[ -d $DIR ]]; then rm -rf --one-file-system "$DIR"; fi
  rm -f "$DIR.lock"
  [[ -n $quiet ]] || say "down: nodes stopped, $DIR removed"
}

status() {
  local n pid ok=0
  for n in "${NODES[@]}"; do
    if pid=$(vm_pid "$n"); then
      echo "cluster: $(nodename "$n") running (pid $pid) on 127.0.0.1:$(amqp_port "$n")"
    else
      echo "cluster: $(nodename "$n") not running"
      ok=3
    fi
  done
  if clustered 2>/dev/null; then
    echo "cluster: clustered: $(running_nodes)"
  else
    echo "cluster: not one cluster of three running nodes"
    ok=3
  fi
  return $ok
}

kill_node() {
  local n pid
  n=$(short "$1")
  pid=$(vm_pid "$n") || die "$(nodename "$n") is not running"
  kill -9 "$pid"
  for _ in $(seq 1 50); do # gone (reaped) before we say so
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  say "killed $(nodename "$n") (pid $pid)"
}

command=${1:-}
[[ $# -gt 0 ]] && shift
case $command in
  up | down)
    (umask 022 && mkdir -p "$(dirname "$DIR")") # new parents searchable by user rabbitmq
    exec 9>"$DIR.lock"
    flock -w 300 9 || die "another cluster.sh held $DIR.lock for 5 minutes"
    "$command"
    ;;
  status) status ;;
  kill) kill_node "${1:?usage: $0 kill NODE}" ;;
  start)
    n=$(short "${1:?usage: $0 start NODE}")
    [[ -d $DIR/$n ]] || die "no directory for $n: run '$0 up'"
    start_node "$n"
    await_node "$n"
    say "$(nodename "$n") up on 127.0.0.1:$(amqp_port "$n")"
    ;;
  pid)
    n=$(short "${1:?usage: $0 pid NODE}")
    vm_pid "$n" || die "$(nodename "$n") is not running"
    ;;
  ctl) ctl "${1:?usage: $0 ctl NODE ARGS…}" "${@:2}" ;;
  queues) queues "${1:?usage: $0 queues NODE ARGS…}" "${@:2}" ;;
  *) die "usage: $0 up|down|status|kill NODE|start NODE|pid NODE|ctl NODE ARGS…|queues NODE ARGS…" ;;
esac
