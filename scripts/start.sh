#!/usr/bin/env bash
# Starts the whole system: PostgreSQL, Redis and NATS (installed and started
# when missing), then the API, the dispatcher and a worker, built in release
# mode. Serves http://localhost:8080 until Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/lambda}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export BIND_ADDR="${BIND_ADDR:-127.0.0.1:8080}"
export RUST_LOG="${RUST_LOG:-info}"
# Callbacks to private and loopback addresses stay refused (scripts must not
# reach this machine's services through them); CALLBACK_ALLOW_PRIVATE=true
# allows them, for a callback receiver under development on this machine.
export CALLBACK_ALLOW_PRIVATE="${CALLBACK_ALLOW_PRIVATE:-false}"
if [ "$CALLBACK_ALLOW_PRIVATE" = "true" ]; then
  log "callbacks may go to private and loopback addresses (CALLBACK_ALLOW_PRIVATE=true)"
fi
# Each process serves its own Prometheus metrics (the API on BIND_ADDR).
export DISPATCHER_METRICS_ADDR="${DISPATCHER_METRICS_ADDR:-127.0.0.1:9091}"
export WORKER_METRICS_ADDR="${WORKER_METRICS_ADDR:-127.0.0.1:9092}"
# Local development: every caller here is anonymous and would be held to the
# anonymous limit (10 executes a minute); the quick start and the load
# generator need more. RATE_LIMIT_DISABLED=false turns the limits on.
export RATE_LIMIT_DISABLED="${RATE_LIMIT_DISABLED:-true}"
if [ "$RATE_LIMIT_DISABLED" = "true" ]; then
  log "rate limits are OFF for this local start (RATE_LIMIT_DISABLED=false turns them on)"
fi
# Local development: authentication is off unless asked for (AUTH_DISABLED=false).
export AUTH_DISABLED="${AUTH_DISABLED:-true}"

ensure_services
ensure_database "$DATABASE_URL"

log "building (release)"
(cd "$ROOT" && cargo build --release --locked -p api -p dispatcher -p workers)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

pids=()
stop() {
  trap - EXIT INT TERM
  log "stopping"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM

for service in dispatcher workers api; do
  "$BIN/$service" >>"$RUN_DIR/logs/$service.log" 2>&1 &
  pids+=("$!")
done

url="http://${BIND_ADDR/0.0.0.0/localhost}"
for _ in $(seq 1 300); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a service exited; see $RUN_DIR/logs/"
  done
  if curl -fsS "$url/health" 2>/dev/null | grep -q '"nodejs":{[^}]*"status":"ok"'; then
    log "ready at $url (logs in $RUN_DIR/logs/; Ctrl-C stops)"
    if [ "$AUTH_DISABLED" = "true" ]; then
      log "WARNING: AUTH_DISABLED=true: AUTHENTICATION IS OFF. Anyone who reaches $url runs code as the anonymous caller. For real use: AUTH_DISABLED=false AUTH_JWT_SECRET=... (see README, Authentication)."
    fi
    wait -n "${pids[@]}" || true
    die "a service exited; see $RUN_DIR/logs/"
  fi
  sleep 0.2
done
die "the system did not become healthy in 60 s; see $RUN_DIR/logs/"
