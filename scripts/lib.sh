# Shared by scripts/start.sh and scripts/test.sh: finds or installs and starts
# what lambda-microservice needs (PostgreSQL, Redis, NATS with JetStream,
# Node.js, Python 3), reusing whatever already runs on the default ports.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${LAMBDA_RUN_DIR:-$ROOT/.run}"
mkdir -p "$RUN_DIR/logs"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || die "missing $*; install it (this script knows apt-get only)"
  if [ -z "$APT_UPDATED" ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.1; done
  die "$what did not start listening on 127.0.0.1:$port"
}

ensure_node() {
  command -v node >/dev/null || apt_install nodejs
}

# The system's Python 3, which the worker prefers over shims on PATH.
ensure_python() {
  [ -x /usr/bin/python3 ] || apt_install python3
}

# bubblewrap: the sandbox every runtime process of the workers runs in.
ensure_bwrap() {
  command -v bwrap >/dev/null || apt_install bubblewrap
}

ensure_psql() {
  command -v psql >/dev/null || apt_install postgresql-client
}

# PostgreSQL on 127.0.0.1:5432. A server installed here gets the password
# 'postgres' for user postgres, the one in the default DATABASE_URL.
ensure_postgres() {
  if ! port_open 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n1)"
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
      || as_root pg_ctlcluster "$version" main start
    wait_port 5432 PostgreSQL
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
  ensure_psql
}

# Creates database $1 (from a postgres:// URL) if it is missing.
ensure_database() {
  local url=$1 name admin
  name="${url##*/}"; name="${name%%\?*}"
  admin="${url%/*}/postgres"
  if ! psql "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    log "creating database $name"
    psql "$admin" -qc "CREATE DATABASE \"$name\"" >/dev/null
  fi
}

# Redis on 127.0.0.1:6379 (a cache: nothing is kept on disk).
ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if ! port_open 6379; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --logfile "$RUN_DIR/logs/redis.log"
    wait_port 6379 Redis
  fi
}

# NATS with JetStream on 127.0.0.1:4222, with the configuration in nats/.
ensure_nats() {
  if ! port_open 4222; then
    command -v nats-server >/dev/null || apt_install nats-server
    log "starting NATS with JetStream"
    mkdir -p "$RUN_DIR/nats"
    nohup nats-server -c "$ROOT/nats/nats-server.conf" -sd "$RUN_DIR/nats" \
      >"$RUN_DIR/logs/nats.log" 2>&1 &
    wait_port 4222 NATS
  fi
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo is missing: install the Rust toolchain (https://rustup.rs)"
}

# What the worker compiles `rust` handlers with: Debian's rustc, its wasm32
# standard library and linker, and the sources of serde_json and its
# dependencies (the worker builds them once into WORKER_CACHE_DIR).
ensure_rust_wasm() {
  local missing=()
  [ -x /usr/bin/rustc ] || missing+=(rustc)
  [ -d /usr/lib/rustlib/wasm32-wasi ] || missing+=(libstd-rust-dev-wasm32)
  command -v lld-14 >/dev/null || missing+=(lld-14)
  ls -d /usr/share/cargo/registry/serde_json-1.* >/dev/null 2>&1 || missing+=(librust-serde-json-dev)
  command -v setpriv >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

ensure_services() {
  ensure_rust
  ensure_rust_wasm
  ensure_node
  ensure_python
  ensure_bwrap
  ensure_postgres
  ensure_redis
  ensure_nats
}
