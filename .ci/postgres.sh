#!/usr/bin/env bash
# Start a local PostgreSQL for the storage test and print the URL to export as KDSTUDY_TEST_POSTGRES_URL.
# Needs root (apt-get). Prints nothing and exits 0 when it cannot (the test then skips and says why).
set -uo pipefail
{
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    [ "$(id -u)" = "0" ] || exit 0
    apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql; } || exit 0
  fi
  ver=$(pg_lsclusters -h | awk 'NR==1{print $1}')
  [ -n "$ver" ] || exit 0
  pg_ctlcluster "$ver" main start 2>/dev/null || true
  for _ in $(seq 20); do pg_isready -q && break; sleep 0.5; done
  su postgres -c "psql -qc \"DO \\\$\\\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='kdstudy') THEN CREATE ROLE kdstudy LOGIN PASSWORD 'kdstudy'; END IF; END\\\$\\\$;\"" || exit 0
  su postgres -c "psql -qc 'DROP DATABASE IF EXISTS kdstudy_test'" && su postgres -c "psql -qc 'CREATE DATABASE kdstudy_test OWNER kdstudy'" || exit 0
} >&2
echo "postgresql://kdstudy:kdstudy@127.0.0.1:5432/kdstudy_test"
