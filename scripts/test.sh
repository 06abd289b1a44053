#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, and the whole workspace's
# unit and integration tests against real PostgreSQL, Redis and NATS
# (installed and started when missing).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

export TEST_ADMIN_DATABASE_URL="${TEST_ADMIN_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

ensure_services

# Databases left by an interrupted earlier run.
for db in $(psql "$TEST_ADMIN_DATABASE_URL" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'lt\_%'"); do
  psql "$TEST_ADMIN_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
done

cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo test"
results="$RUN_DIR/test-output.log"
cargo test --locked --workspace 2>&1 | tee "$results"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$results"
