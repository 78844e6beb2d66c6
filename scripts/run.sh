#!/bin/sh
# make run: the demo upstream (it counts executions) on an ephemeral port,
# and idemproxy in front of it on 127.0.0.1:8080 (LISTEN= to change), in
# the foreground. Ctrl-C stops both. Extra arguments go to idemproxy.
set -eu
build=${BUILD:-build}
listen=${LISTEN:-127.0.0.1:8080}
tmp=$(mktemp -d)
up_pid=
trap 'if [ -n "$up_pid" ]; then kill "$up_pid" 2>/dev/null; fi; rm -rf "$tmp"' EXIT INT TERM

"$build/demo_upstream" --listen 127.0.0.1:0 >"$tmp/up" &
up_pid=$!
i=0
until grep -q listening "$tmp/up" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 50 ]; then
        echo "run.sh: the demo upstream did not start" >&2
        exit 1
    fi
    sleep 0.1
done
upstream=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$tmp/up")
cat <<EOT
demo upstream on $upstream; idemproxy on $listen. Try:
  curl -i -X POST -H 'Idempotency-Key: order-1' -d '{"n":1}' http://$listen/orders
  curl -i -X POST -H 'Idempotency-Key: order-1' -d '{"n":1}' http://$listen/orders  # replay
  curl -i -X POST -H 'Idempotency-Key: order-1' -d '{"n":2}' http://$listen/orders  # 422
  curl -s http://$upstream/count        # executions the upstream saw
Ctrl-C stops both.
EOT
"$build/idemproxy" --listen "$listen" --upstream "$upstream" "$@"
