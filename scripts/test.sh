#!/usr/bin/env bash
# Run the whole test suite: installs test dependencies and Chromium, starts PostgreSQL if none
# answers on 127.0.0.1:5432, then runs pytest. Extra arguments go to pytest. With CI set (as
# .ci/run does) skips outside the allow-list in tests/conftest.py fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Chromium (Debian package) for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "starting PostgreSQL"
  if ! command -v pg_ctlcluster >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! psql -h 127.0.0.1 -U postgres -d test -tAc "select 1" >/dev/null 2>&1; then
  # a cluster without trust auth for TCP or without the test database: set both up
  su postgres -c "psql -tAc \"select 1\"" >/dev/null 2>&1 || true
  su postgres -c "createdb test" 2>/dev/null || true
  hba=$(su postgres -c "psql -tAc 'show hba_file'" 2>/dev/null || true)
  if [ -n "$hba" ] && ! grep -q "multiref-tests" "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust # multiref-tests' "$hba"
    su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
  fi
fi

if [ -n "${CI:-}" ]; then
  echo "CI=$CI: a missing PostgreSQL or Chromium fails, and so does any skip not allow-listed in tests/conftest.py"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest --durations=15 "$@"  # the 15 slowest tests, to keep the suite short
