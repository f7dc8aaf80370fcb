#!/usr/bin/env bash
# Make sure RabbitMQ answers on 127.0.0.1:5672: start the local server when it is installed,
# otherwise say how to get one. Exits non-zero with one clear line when it cannot.
set -euo pipefail
host=${TEST_AMQP_HOST:-127.0.0.1}
port=${TEST_AMQP_PORT:-5672}

listening() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if listening; then
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ is not answering on $host:$port and rabbitmq-server is not installed." >&2
  echo "Start one with 'docker compose up -d rabbitmq', or 'apt-get install rabbitmq-server'." >&2
  exit 1
fi
echo "RabbitMQ is not answering on $host:$port: starting it (rabbitmq-server -detached)" >&2
rabbitmq-server -detached || true
for _ in $(seq 1 90); do
  if listening; then
    # The port opens before the broker is fully booted; wait for it to say so.
    if command -v rabbitmqctl >/dev/null 2>&1; then
      rabbitmqctl await_startup --timeout 60 >/dev/null 2>&1 || true
    fi
    echo "RabbitMQ is up on $host:$port" >&2
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not come up on $host:$port within 90 s; see /var/log/rabbitmq/" >&2
exit 1
