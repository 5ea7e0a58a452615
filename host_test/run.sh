#!/usr/bin/env bash
# Run the ledger inside the real CommCare Connect (the "host"): build what is missing, start the
# private services, then run one command in that environment. Idempotent; see README.md.
#
#   host_test/run.sh setup                   # only install / build / start; run nothing
#   host_test/run.sh host-suite [ARGS]       # the host's own full suite, ledger installed
#   host_test/run.sh host-suite-baseline [ARGS]  # the same suite, host settings, no ledger
#   host_test/run.sh contract [ARGS]         # pytest --pyargs ledger.contract, from the host
#   host_test/run.sh shell CMD [ARGS]        # any command, in the host checkout, in the env
#   host_test/run.sh stop                    # stop the private PostgreSQL and Redis
#   host_test/run.sh [PYTEST ARGS]           # pytest ARGS in the host checkout, ledger settings
#
# Environment: HOST (host checkout, default /work/host), HOSTENV (work folder, default
# /work/hostenv), LEDGER_DIR (the ledger package to copy, default ../ledger next to this
# folder) or LEDGER_WHEEL (a wheel, installed without dependencies into a folder of its own,
# which must then hold only ledger/ and its dist-info), PG_PORT (5433),
# REDIS_PORT (6380), LEDGER_ACCESS_LOCK (dotted path, passed to the settings when set).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN=$(dirname "$HERE")
HOST=$(cd "${HOST:-/work/host}" && pwd)
HOSTENV=${HOSTENV:-/work/hostenv}
LEDGER_DIR=${LEDGER_DIR:-$MAIN/ledger}
LEDGER_WHEEL=${LEDGER_WHEEL:-}
XML2JSON_GIT=${XML2JSON_GIT:-/work/.mirror/dimagi+xml2json/repo}
XML2JSON_REV=${XML2JSON_REV:-041b1ef}
PYTHON=${PYTHON:-python3.11}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${PG_PORT:-5433}
REDIS_PORT=${REDIS_PORT:-6380}
APT_PACKAGES=(postgresql-15-postgis-3 redis-server gdal-bin libproj-dev binutils)
# What the ledger (msgspec) and its contract tests (model-bakery) add to the host's lock; both
# pins resolve against the host's Django 5.2. Override with a space-separated EXTRA_PACKAGES.
read -r -a EXTRAS <<<"${EXTRA_PACKAGES:-msgspec==0.23.0 model-bakery==1.24.2}"

mkdir -p "$HOSTENV"
HOSTENV=$(cd "$HOSTENV" && pwd)
VENV=$HOSTENV/venv
PGDATA=$HOSTENV/pgdata
PGRUN=$HOSTENV/pgrun      # the server's socket and log, owned by postgres
LEDGER_SRC=$HOSTENV/ledger_src  # holds ONLY the ledger package
PYSETTINGS=$HOSTENV/settings    # holds ONLY ledger_host_settings.py and ledger_host_conftest.py

log() { echo "[host_test] $*" >&2; }
die() {
  echo "[host_test] error: $*" >&2
  exit 1
}

[[ -f "$HOST/manage.py" && -f "$HOST/uv.lock" && -d "$HOST/commcare_connect" ]] ||
  die "HOST=$HOST is not a CommCare Connect checkout"

# ---- Debian packages ----------------------------------------------------------------------
ensure_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" == installed ]] || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ $EUID -eq 0 ]] || die "missing Debian packages (${missing[*]}); run as root or install them"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
}

# ---- Python environment -------------------------------------------------------------------
uv_bin() {
  if command -v uv >/dev/null 2>&1; then
    command -v uv
    return
  fi
  if [[ ! -x "$HOSTENV/tools/bin/uv" ]]; then
    log "installing uv into $HOSTENV/tools"
    "$PYTHON" -m venv "$HOSTENV/tools"
    "$HOSTENV/tools/bin/python" -m pip install --quiet uv
  fi
  echo "$HOSTENV/tools/bin/uv"
}

ensure_venv() {
  local stamp uv req
  stamp=$({
    sha256sum "$HOST/uv.lock" "$HOST/pyproject.toml" | cut -d' ' -f1
    echo "$PYTHON $XML2JSON_REV ${EXTRAS[*]}"
  } | sha256sum | cut -d' ' -f1)
  if [[ -f "$VENV/.hostenv-stamp" && "$(cat "$VENV/.hostenv-stamp")" == "$stamp" ]]; then
    return
  fi
  log "building $VENV (host lock file + ${EXTRAS[*]})"
  uv=$(uv_bin)
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  req=$HOSTENV/host-requirements.txt
  # The host's locked requirements without the two git-only packages: git-build-branch (a
  # deploy tool, not needed) and xml2json (installed below from dimagi's repository; the
  # PyPI package of that name is a different project).
  (cd "$HOST" && "$uv" export --frozen --group dev --no-hashes --no-emit-project) |
    grep -Ev '^(git-build-branch|xml2json)([ =@;]|$)' | grep -v 'git+' >"$req"
  "$uv" pip install --quiet --python "$VENV/bin/python" -r "$req"
  rm -rf "$HOSTENV/src/xml2json"
  mkdir -p "$HOSTENV/src/xml2json"
  git --git-dir="$XML2JSON_GIT" archive "$XML2JSON_REV" | tar -x -C "$HOSTENV/src/xml2json"
  "$uv" pip install --quiet --python "$VENV/bin/python" "$HOSTENV/src/xml2json"
  # Constrain to the host's lock so the extras cannot move Django or anything else.
  "$uv" pip install --quiet --python "$VENV/bin/python" -c "$req" "${EXTRAS[@]}"
  echo "$stamp" >"$VENV/.hostenv-stamp"
}

# ---- The ledger package and the settings, on the path from folders of their own ---------
stage_python_path() {
  rm -rf "$LEDGER_SRC"
  mkdir -p "$LEDGER_SRC"
  if [[ -n "$LEDGER_WHEEL" ]]; then
    [[ -f "$LEDGER_WHEEL" ]] || die "LEDGER_WHEEL=$LEDGER_WHEEL does not exist"
    # Installed into this folder of its own, without dependencies (the host's lock decides
    # those; they are checked below): the package and its dist-info, whose pytest11 entry
    # point pytest then finds. The venv itself stays without the ledger.
    "$(uv_bin)" pip install --quiet --no-deps --target "$LEDGER_SRC" "$LEDGER_WHEEL"
    rm -rf "${LEDGER_SRC:?}/bin" "${LEDGER_SRC:?}/.lock" # uv's own, not the wheel's
    local extra
    extra=$(find "$LEDGER_SRC" -mindepth 1 -maxdepth 1 ! -name ledger ! -name '*.dist-info')
    [[ -z "$extra" ]] || die "the wheel installs more than the ledger package: $extra"
    "$VENV/bin/python" - "$LEDGER_SRC" <<'EOF'
import importlib.metadata as md, sys
from packaging.requirements import Requirement
(dist,) = [d for d in md.distributions(path=[sys.argv[1]])]
bad = []
for spec in dist.requires or []:
    req = Requirement(spec)
    if req.marker and not req.marker.evaluate({"extra": "contract"}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        bad.append(f"{req} (missing)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        bad.append(f"{req} (have {have})")
if bad:
    sys.exit("[host_test] the host environment does not satisfy the wheel: " + "; ".join(bad))
print(f"[host_test] wheel {dist.metadata['Name']} {dist.version}: its requirements are met", file=sys.stderr)
EOF
  else
    [[ -f "$LEDGER_DIR/__init__.py" ]] || die "LEDGER_DIR=$LEDGER_DIR is not the ledger package"
    cp -a "$LEDGER_DIR" "$LEDGER_SRC/ledger"
    find "$LEDGER_SRC" -name __pycache__ -type d -prune -exec rm -rf {} +
  fi
  # Which ledger this run uses: its source, the git commit around it, a hash of its files.
  local origin=${LEDGER_WHEEL:-$LEDGER_DIR} rev="" digest
  if [[ -z "$LEDGER_WHEEL" ]] && git -C "$LEDGER_DIR" rev-parse --git-dir >/dev/null 2>&1; then
    rev=" at $(git -C "$LEDGER_DIR" rev-parse --short HEAD)"
    [[ -z "$(git -C "$LEDGER_DIR" status --porcelain -- .)" ]] || rev+=" (with uncommitted changes)"
  fi
  digest=$(cd "$LEDGER_SRC" && find ledger -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
  log "ledger from $origin$rev, files sha256 $digest"
  rm -rf "$PYSETTINGS"
  mkdir -p "$PYSETTINGS"
  cp "$HERE/ledger_host_settings.py" "$HERE/ledger_host_conftest.py" "$PYSETTINGS/"
}

# ---- Private PostgreSQL (PostGIS, ICU en-US) and Redis ------------------------------------
pg() { runuser -u postgres -- "$@"; }

ensure_postgres() {
  id postgres >/dev/null 2>&1 || die "no postgres system user (install postgresql-15)"
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    log "creating the PostgreSQL cluster $PGDATA (ICU en-US, trust auth)"
    rm -rf "$PGDATA"
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
      --locale-provider=icu --icu-locale=en-US --auth-local=trust --auth-host=trust >/dev/null
    # A throwaway test cluster: durability is not needed, speed is.
    cat >>"$PGDATA/postgresql.conf" <<EOF

# host_test: private test cluster
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi
  mkdir -p "$PGRUN"
  chown postgres:postgres "$PGRUN"
  if ! pg "$PG_BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    pg "$PG_BIN/pg_ctl" start -D "$PGDATA" -l "$PGRUN/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k $PGRUN" >/dev/null 9>&- ||
      die "PostgreSQL did not start; see $PGRUN/postgres.log"
  fi
  local provider
  provider=$(pg "$PG_BIN/psql" -h "$PGRUN" -p "$PG_PORT" -U postgres -d postgres -Atc \
    "SELECT datlocprovider::text || ' ' || coalesce(daticulocale, '') FROM pg_database WHERE datname = 'template1'") ||
    die "cannot connect to the private PostgreSQL on port $PG_PORT (is another server there?)"
  [[ "$provider" == "i en-US" ]] ||
    die "template1 of $PGDATA is not ICU en-US ($provider); remove $PGDATA to recreate it"
}

ensure_redis() {
  if [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; then
    return
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --dir "$HOSTENV" --pidfile "$HOSTENV/redis.pid" \
    --logfile "$HOSTENV/redis.log" 9>&-
  for _ in $(seq 50); do
    [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && return
    sleep 0.1
  done
  die "Redis did not start; see $HOSTENV/redis.log"
}

stop_services() {
  if [[ -f "$PGDATA/PG_VERSION" ]] && pg "$PG_BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
    pg "$PG_BIN/pg_ctl" stop -D "$PGDATA" -m fast >/dev/null && log "PostgreSQL stopped"
  fi
  if [[ -f "$HOSTENV/redis.pid" ]] && kill -0 "$(cat "$HOSTENV/redis.pid")" 2>/dev/null; then
    kill "$(cat "$HOSTENV/redis.pid")" && log "Redis stopped"
  fi
}

# ---- Run ----------------------------------------------------------------------------------
export_env() {
  local with_ledger=$1
  export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  export CELERY_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/1"
  # Never this project's root: its commcare_connect/ stand-in would shadow the host's.
  if [[ $with_ledger == 1 ]]; then
    export PYTHONPATH="$HOST:$LEDGER_SRC:$PYSETTINGS"
    export DJANGO_SETTINGS_MODULE=ledger_host_settings
  else
    export PYTHONPATH="$HOST"
    export DJANGO_SETTINGS_MODULE=config.settings.test
  fi
  unset PYTHONHOME
  # Guard: the host's commcare_connect, and the staged ledger, are the ones imported.
  (cd "$HOST" && python - "$HOST" "$LEDGER_SRC" "$with_ledger" <<'EOF'
import importlib.util as u, os, sys
host, ledger_src, with_ledger = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
cc = u.find_spec("commcare_connect")
assert cc and os.path.dirname(cc.origin) == os.path.join(host, "commcare_connect"), (
    f"commcare_connect resolves to {cc and cc.origin}, not the host's")
led = u.find_spec("ledger")
if with_ledger:
    assert led and led.origin == os.path.join(ledger_src, "ledger", "__init__.py"), (
        f"ledger resolves to {led and led.origin}")
else:
    assert led is None, f"ledger importable in the baseline run: {led.origin}"
EOF
  ) || die "the import path is wrong (see above)"
}

# The host's whole suite unless the arguments name test paths of their own.
host_paths() {
  local a
  for a in "$@"; do
    [[ "$a" != -* && ( -e "$HOST/${a%%::*}" || -e "${a%%::*}" ) ]] && return
  done
  echo commcare_connect
}

main() {
  local mode=${1:-}
  case "$mode" in
  stop)
    stop_services
    return
    ;;
  esac
  # One run at a time per HOSTENV: runs share the staged ledger and the test database.
  exec 9>"$HOSTENV/run.lock"
  flock -n 9 || die "another run.sh is using $HOSTENV (lock $HOSTENV/run.lock); wait for it"
  ensure_apt
  ensure_venv
  stage_python_path
  ensure_postgres
  ensure_redis
  [[ $# -gt 0 ]] && shift
  # Test runs start from an empty Redis: the host's tests leave quickcache entries (keyed by
  # row ids, which a new test database reuses; TTL about a day) and Celery messages behind.
  if [[ "$mode" != shell && "$mode" != setup && -n "$mode" ]]; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" flushall >/dev/null
  fi
  local common=(-o addopts= -p no:cacheprovider) paths
  mapfile -t paths < <(host_paths "$@")
  case "$mode" in
  setup) export_env 1 ;;
  host-suite)
    export_env 1
    cd "$HOST"
    exec python -m pytest "${common[@]}" --ds=ledger_host_settings --create-db "${paths[@]}" "$@"
    ;;
  host-suite-baseline)
    export_env 0
    cd "$HOST"
    exec python -m pytest "${common[@]}" --ds=config.settings.test --create-db "${paths[@]}" "$@"
    ;;
  contract)
    export_env 1
    [[ -d "$LEDGER_SRC/ledger/contract" ]] ||
      die "the staged ledger has no ledger.contract package (from ${LEDGER_WHEEL:-$LEDGER_DIR})"
    cd "$HOST"
    # --confcutdir: let conftest.py files inside ledger/contract load (the default cut-off is
    # the host checkout, where the host's pytest configuration lives).
    exec python -m pytest "${common[@]}" --ds=ledger_host_settings -p ledger_host_conftest \
      --confcutdir="$LEDGER_SRC" --create-db --pyargs ledger.contract "$@"
    ;;
  shell)
    export_env 1
    cd "$HOST"
    [[ $# -gt 0 ]] || set -- bash
    exec "$@"
    ;;
  "") export_env 1 ;;
  *)
    export_env 1
    cd "$HOST"
    exec python -m pytest "${common[@]}" --ds=ledger_host_settings "$mode" "$@"
    ;;
  esac
}

main "$@"
