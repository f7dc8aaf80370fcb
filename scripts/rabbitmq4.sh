#!/usr/bin/env bash
# RabbitMQ 4 (Debian 13's rabbitmq-server 4.0.5, Erlang 27) for the tests and CI, beside the host's
# RabbitMQ 3.10: a minimal Debian 13 tree made with debootstrap, cached between runs on the same
# machine, and one node started inside it (chroot, as the tree's own `rabbitmq` user) on other
# ports. The host's epmd (127.0.0.1:4369) serves both nodes. Needs root.
#
#   scripts/rabbitmq4.sh [start]     build the tree if needed, start the node, wait until it is booted
#   scripts/rabbitmq4.sh stop        stop the node (the tree and its mounts stay, for the next start)
#   scripts/rabbitmq4.sh status      say whether it answers; exit 0 when it does
#   scripts/rabbitmq4.sh ctl ARGS…   rabbitmqctl ARGS… inside the tree against the node
#   scripts/rabbitmq4.sh destroy     stop, unmount and delete the tree (the next start rebuilds it)
#
# Environment (all optional):
#   RABBITMQ4_ROOT   the tree         (default /var/cache/tim-recall/rabbitmq4-trixie)
#   RABBITMQ4_PORT   AMQP port        (default 5680)
#   RABBITMQ4_DIST   Erlang dist port (default 25680)
#   RABBITMQ4_MIRROR Debian mirror    (default http://deb.debian.org/debian)
# Every failure ends with one line starting "rabbitmq4:" on stderr and a non-zero exit.
set -euo pipefail

ROOT=${RABBITMQ4_ROOT:-/var/cache/tim-recall/rabbitmq4-trixie}
PORT=${RABBITMQ4_PORT:-5680}
DIST=${RABBITMQ4_DIST:-25680}
MIRROR=${RABBITMQ4_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
NODE=rabbit4@localhost
MARKER=.tim-recall-rabbitmq4-complete # written last: a tree without it is rebuilt
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() {
  echo "rabbitmq4: $*" >&2
  exit 1
}
say() { echo "rabbitmq4: $*" >&2; }

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mount)"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# ---- the tree ----------------------------------------------------------------------------------

mount_into() { # the pseudo file systems the node and apt need inside the tree, each once
  local dir=$1
  mkdir -p "$dir/proc" "$dir/dev/pts"
  mountpoint -q "$dir/proc" || mount -t proc proc "$dir/proc"
  mountpoint -q "$dir/dev/pts" || mount --bind /dev/pts "$dir/dev/pts"
}

unmount_from() {
  local dir=$1 m
  for m in "$dir/dev/pts" "$dir/proc"; do
    if mountpoint -q "$m"; then umount "$m" || umount -l "$m"; fi
  done
}

remove_tree() { # never follows a mount: unmount first, then stay on this file system
  local dir=$1
  [[ -d $dir ]] || return 0
  unmount_from "$dir"
  rm -rf --one-file-system "$dir"
}

in_tree() { # run a command inside the tree as root, with a clean environment
  chroot "$ROOT" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

as_rabbitmq() { # run a command inside the tree as its rabbitmq user
  chroot --userspec=rabbitmq:rabbitmq "$ROOT" /usr/bin/env -i PATH="$CHROOT_PATH" \
    HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8 "$@"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return 0
  say "installing debootstrap (apt-get)"
  apt-get update -qq >/dev/null || die "apt-get update failed: cannot install debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
    die "apt-get install debootstrap failed"
}

build_tree() {
  local partial=$ROOT.partial started=$SECONDS
  ensure_debootstrap
  remove_tree "$partial"
  remove_tree "$ROOT" # incomplete (no marker): start again from nothing
  mkdir -p "$(dirname "$ROOT")"
  say "building the Debian 13 tree in $ROOT (debootstrap $SUITE from $MIRROR; about a minute)"
  local log
  log=$(dirname "$ROOT")/rabbitmq4-build.log
  : >"$log"
  if ! debootstrap --variant=minbase "$SUITE" "$partial" "$MIRROR" >>"$log" 2>&1; then
    tail -n 5 "$log" >&2
    remove_tree "$partial"
    die "debootstrap of Debian 13 from $MIRROR failed (no network to the Debian mirror?); see $log"
  fi
  # Nothing the package installs may start a service: the node is started by this script.
  printf '#!/bin/sh\nexit 101\n' >"$partial/usr/sbin/policy-rc.d"
  chmod 755 "$partial/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$partial/etc/resolv.conf" 2>/dev/null || true
  # The node is rabbit4@localhost: the tree must resolve localhost to loopback by itself.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$partial/etc/hosts"
  mount_into "$partial"
  local ok=1
  chroot "$partial" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server \
     && apt-get clean' >>"$log" 2>&1 || ok=0
  unmount_from "$partial"
  if [[ $ok == 0 ]]; then
    tail -n 5 "$log" >&2
    remove_tree "$partial"
    die "apt-get install rabbitmq-server inside the Debian 13 tree failed; see $log"
  fi
  # shellcheck disable=SC2016 # dpkg-query's own ${Version}, not the shell's
  chroot "$partial" dpkg-query -W -f='${Version}\n' rabbitmq-server >"$partial/$MARKER"
  mv "$partial" "$ROOT"
  say "tree built in $((SECONDS - started)) s: rabbitmq-server $(cat "$ROOT/$MARKER")"
}

configure_node() { # idempotent: rewritten at every start
  mkdir -p "$ROOT/etc/rabbitmq"
  cat >"$ROOT/etc/rabbitmq/rabbitmq-env.conf" <<EOF
# Written by tim-recall's scripts/rabbitmq4.sh: a second node beside the host's RabbitMQ.
NODENAME=$NODE
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$PORT
DIST_PORT=$DIST
ERL_EPMD_ADDRESS=127.0.0.1
EOF
  # The tests connect as guest from loopback; keep the defaults otherwise (4.0's delivery limit
  # and all). The management plugin stays off.
  cat >"$ROOT/etc/rabbitmq/rabbitmq.conf" <<EOF
# Written by tim-recall's scripts/rabbitmq4.sh.
loopback_users.guest = true
log.file.level = info
EOF
  echo '[].' >"$ROOT/etc/rabbitmq/enabled_plugins"
  # The tree's rabbitmq user, not the host's: their ids may differ.
  in_tree chown -R rabbitmq:rabbitmq /etc/rabbitmq
}

# ---- the node ----------------------------------------------------------------------------------

ctl() { as_rabbitmq rabbitmqctl -n "$NODE" "$@"; }

answers() { listening && ctl await_startup --timeout 5 >/dev/null 2>&1; }

start() {
  local started=$SECONDS
  [[ -f $ROOT/$MARKER ]] || build_tree
  mount_into "$ROOT"
  configure_node
  if answers; then
    say "RabbitMQ $(cat "$ROOT/$MARKER") already up on 127.0.0.1:$PORT (node $NODE)"
    return 0
  fi
  if listening; then
    die "something else listens on 127.0.0.1:$PORT; RABBITMQ4_PORT picks another port"
  fi
  pgrep -x epmd >/dev/null 2>&1 || say "no epmd running on the host: the node starts one"
  local log=$ROOT/var/log/rabbitmq/tim-recall-start.log
  mkdir -p "$ROOT/var/log/rabbitmq"
  in_tree chown rabbitmq:rabbitmq /var/log/rabbitmq /var/lib/rabbitmq
  : >"$log"
  # Detached from this shell: its own session, no inherited stdin/stdout (make and CI wait for
  # their pipes to close), output to a log in the tree.
  setsid chroot --userspec=rabbitmq:rabbitmq "$ROOT" /usr/bin/env -i PATH="$CHROOT_PATH" \
    HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8 ERL_EPMD_ADDRESS=127.0.0.1 \
    /usr/lib/rabbitmq/bin/rabbitmq-server </dev/null >>"$log" 2>&1 9>&- &
  disown
  local waited=0
  until listening; do
    if ((waited >= 120)); then
      tail -n 20 "$log" >&2
      die "RabbitMQ 4 did not open 127.0.0.1:$PORT within 120 s; see $log and $ROOT/var/log/rabbitmq/"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  if ! ctl await_startup --timeout 90 >/dev/null 2>&1; then
    tail -n 20 "$log" >&2
    die "RabbitMQ 4 opened its port but did not finish booting; see $ROOT/var/log/rabbitmq/"
  fi
  say "RabbitMQ $(cat "$ROOT/$MARKER") up on 127.0.0.1:$PORT (node $NODE) in $((SECONDS - started)) s"
}

stop() {
  [[ -f $ROOT/$MARKER ]] || {
    say "no tree at $ROOT: nothing to stop"
    return 0
  }
  mount_into "$ROOT"
  if listening || ctl status >/dev/null 2>&1; then
    ctl stop >/dev/null 2>&1 || die "rabbitmqctl stop failed for $NODE"
    say "stopped $NODE"
  else
    say "$NODE is not running"
  fi
}

status() {
  if [[ -f $ROOT/$MARKER ]] && answers; then
    echo "rabbitmq4: up on 127.0.0.1:$PORT (node $NODE, rabbitmq-server $(cat "$ROOT/$MARKER"))"
    return 0
  fi
  if [[ -f $ROOT/$MARKER ]]; then
    echo "rabbitmq4: down (tree at $ROOT, rabbitmq-server $(cat "$ROOT/$MARKER"))"
  else
    echo "rabbitmq4: down (no tree at $ROOT yet: 'start' builds it)"
  fi
  return 3
}

# One invocation at a time changes the tree (CI and a developer may both start it).
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
command=${1:-start}
[[ $# -gt 0 ]] && shift
case $command in
  start | stop | destroy)
    flock -w 600 9 || die "another rabbitmq4.sh held $ROOT.lock for 10 minutes"
    ;;
esac
case $command in
  start) start ;;
  stop) stop ;;
  status) status ;;
  ctl)
    [[ -f $ROOT/$MARKER ]] || die "no tree at $ROOT: run '$0 start' first"
    mountpoint -q "$ROOT/proc" || mount_into "$ROOT"
    ctl "$@"
    ;;
  destroy)
    stop || true
    remove_tree "$ROOT"
    remove_tree "$ROOT.partial"
    say "removed $ROOT"
    ;;
  *) die "usage: $0 [start|stop|status|ctl ARGS…|destroy]" ;;
esac
