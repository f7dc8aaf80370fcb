#!/usr/bin/env bash
# A RabbitMQ node of the host's install (3.10 here) that speaks TLS, for the TLS tests, beside the
# shared node on 5672 (never touched): rabbit-tls@localhost, TLS on 127.0.0.1:5695, plain AMQP on
# 127.0.0.1:5694 (for checks only), Erlang dist on 25694.
#
#   scripts/tls-node.sh up DIR     make the certificates in DIR (once), start the node, wait for it
#   scripts/tls-node.sh down DIR   stop the node and remove DIR
#   scripts/tls-node.sh status DIR exit 0 when the node answers
#
# In DIR, made with openssl, valid for two days:
#   ca.pem / ca.key            a self-signed test CA
#   server.pem / server.key    the node's certificate, signed by it, for localhost and 127.0.0.1
#   client.pem / client.key    a client certificate signed by it (the node asks for one, and
#                              verifies it when given, but does not require it)
#   wrong-ca.pem               an unrelated self-signed CA: verifying the node with it must fail
#   node/                      the node's config, mnesia and logs
# DIR and everything in it belong to user rabbitmq (the Debian package runs nodes as that user),
# so DIR must be somewhere that user can reach (not under a 0700 directory such as
# /tmp/pytest-of-root). On success `up` prints the URL on stdout:
#   amqps://guest:guest@localhost:5695/?cafile=DIR/ca.pem
# TLS_NODE_NAME, TLS_NODE_PORT, TLS_NODE_PLAIN_PORT and TLS_NODE_DIST_PORT change the node name and
# ports (the test fixture picks free ones, so that two test runs never share a node); `down` and
# `status` read them back from DIR.
# Nothing depends on the caller's working directory (it may be one user rabbitmq cannot enter, such
# as a clone under `mktemp -d`): the node runs from DIR/node, rabbitmqctl from /.
# Every failure ends with one line starting "tls-node:" on stderr and a non-zero exit. Needs root.
set -euo pipefail

NODE=${TLS_NODE_NAME:-rabbit-tls@localhost}
PLAIN_PORT=${TLS_NODE_PLAIN_PORT:-5694}
TLS_PORT=${TLS_NODE_PORT:-5695}
DIST_PORT=${TLS_NODE_DIST_PORT:-25694}
COOKIE_HOME=/var/lib/rabbitmq
RMQ_LIB=/usr/lib/rabbitmq/bin

die() {
  echo "tls-node: $*" >&2
  exit 1
}
say() { echo "tls-node: $*" >&2; }

command=${1:-}
DIR=${2:-}
[[ $command =~ ^(up|down|status)$ && -n $DIR ]] || die "usage: $0 up|down|status DIR"
[[ $(id -u) == 0 ]] || die "needs root (the node runs as user rabbitmq)"
command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server is not installed"
command -v openssl >/dev/null 2>&1 || die "openssl is not installed"
(umask 022 && mkdir -p "$DIR") # new parents searchable by user rabbitmq
DIR=$(cd "$DIR" && pwd)
NODE_DIR=$DIR/node
if [[ $command != up && -s $NODE_DIR/settings ]]; then
  # shellcheck source=/dev/null
  . "$NODE_DIR/settings" # the name and ports this node was started with
fi
PID_FILE=$NODE_DIR/mnesia/$NODE.pid

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_rabbitmq() { # run a command as user rabbitmq with the node cookie's HOME, from /
  # Never from the caller's directory: when user rabbitmq cannot enter it, Erlang's code server
  # fails on "." and prints eacces reports on stdout.
  (cd / && exec runuser -u rabbitmq -- env HOME="$COOKIE_HOME" "$@")
}
ctl() { as_rabbitmq "$RMQ_LIB/rabbitmqctl" -n "$NODE" "$@"; }
vm_pid() {
  [[ -s $PID_FILE ]] || return 1
  local pid
  pid=$(tr -dc '0-9' <"$PID_FILE")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
url() { echo "amqps://guest:guest@localhost:$TLS_PORT/?cafile=$DIR/ca.pem"; }

certificates() {
  [[ -s $DIR/client.key && -s $DIR/wrong-ca.pem ]] && return 0
  local log=$DIR/openssl.log
  : >"$log"
  (
    cd "$DIR"
    leaf_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer"
    for ca in ca wrong-ca; do
      openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -keyout "$ca.key" -out "$ca.pem" \
        -subj "/CN=tim-recall test $ca" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    done
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
      -subj "/CN=localhost"
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
      -out server.pem -extfile <(printf '%s\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$leaf_ext")
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout client.key -out client.csr \
      -subj "/CN=tim-recall test client"
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
      -out client.pem -extfile <(printf '%s\nextendedKeyUsage=clientAuth\n' "$leaf_ext")
    rm -f server.csr client.csr
  ) >>"$log" 2>&1 || die "openssl could not make the test certificates; see $log"
}

configure() {
  mkdir -p "$NODE_DIR/mnesia" "$NODE_DIR/log"
  cat >"$NODE_DIR/rabbitmq.conf" <<EOF
# Written by tim-recall's scripts/tls-node.sh.
listeners.tcp.1 = 127.0.0.1:$PLAIN_PORT
listeners.ssl.1 = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $DIR/ca.pem
ssl_options.certfile = $DIR/server.pem
ssl_options.keyfile = $DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
loopback_users.guest = true
log.file.level = info
EOF
  echo '[].' >"$NODE_DIR/enabled_plugins"
  printf 'NODE=%q\nPLAIN_PORT=%q\nTLS_PORT=%q\nDIST_PORT=%q\n' \
    "$NODE" "$PLAIN_PORT" "$TLS_PORT" "$DIST_PORT" >"$NODE_DIR/settings"
  cat >"$NODE_DIR/rabbitmq-env.conf" <<EOF
# Written by tim-recall's scripts/tls-node.sh (replaces /etc/rabbitmq/rabbitmq-env.conf).
NODENAME=$NODE
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$PLAIN_PORT
DIST_PORT=$DIST_PORT
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  chown -R rabbitmq:rabbitmq "$DIR"
  chmod 700 "$DIR"
  chmod 600 "$DIR"/*.key
  as_rabbitmq test -r "$DIR/server.key" ||
    die "user rabbitmq cannot read $DIR/server.key: put DIR where that user can reach it"
}

up() {
  local started=$SECONDS
  if vm_pid >/dev/null && listening "$TLS_PORT"; then
    url
    return 0
  fi
  for port in "$PLAIN_PORT" "$TLS_PORT"; do
    listening "$port" && die "something else listens on 127.0.0.1:$port"
  done
  certificates
  configure
  # Its own session, no inherited descriptors, and its own directory as the working directory
  # (never the caller's: see as_rabbitmq).
  (
    cd "$NODE_DIR"
    exec setsid runuser -u rabbitmq -- env HOME="$COOKIE_HOME" \
      RABBITMQ_CONF_ENV_FILE="$NODE_DIR/rabbitmq-env.conf" \
      RABBITMQ_NODENAME="$NODE" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$PLAIN_PORT" \
      RABBITMQ_DIST_PORT="$DIST_PORT" \
      RABBITMQ_MNESIA_BASE="$NODE_DIR/mnesia" \
      RABBITMQ_LOG_BASE="$NODE_DIR/log" \
      RABBITMQ_CONFIG_FILE="$NODE_DIR/rabbitmq.conf" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$NODE_DIR/enabled_plugins" \
      RABBITMQ_PID_FILE="$PID_FILE" \
      "$RMQ_LIB/rabbitmq-server"
  ) </dev/null >>"$NODE_DIR/start.log" 2>&1 9>&- &
  disown
  local waited=0
  until listening "$TLS_PORT"; do
    if ((waited >= 120)); then
      tail -n 15 "$NODE_DIR/start.log" >&2 || true
      die "$NODE did not open its TLS port 127.0.0.1:$TLS_PORT in 120 s; see $NODE_DIR/log/"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  ctl await_startup --timeout 90 >/dev/null 2>&1 ||
    die "$NODE opened its port but did not finish booting; see $NODE_DIR/log/"
  say "$NODE up in $((SECONDS - started)) s: TLS on 127.0.0.1:$TLS_PORT, CA $DIR/ca.pem"
  url
}

down() {
  local pid
  if pid=$(vm_pid); then
    as_rabbitmq timeout 30 "$RMQ_LIB/rabbitmqctl" -n "$NODE" stop >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf --one-file-system "$DIR"
  say "down: $NODE stopped, $DIR removed"
}

status() {
  if vm_pid >/dev/null && listening "$TLS_PORT"; then
    echo "tls-node: $NODE up, TLS on 127.0.0.1:$TLS_PORT: $(url)"
    return 0
  fi
  echo "tls-node: $NODE not running"
  return 3
}

"$command"
