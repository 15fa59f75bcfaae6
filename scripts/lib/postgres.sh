# shellcheck shell=bash
# PostgreSQL for the scripts: the server the tests create their databases on,
# and the one `youtube_server --db postgres://…` uses. Source this file:
#
#   source scripts/lib/postgres.sh
#   ensure_postgres || exit 1
#
# ensure_postgres
#   Makes sure PostgreSQL answers on 127.0.0.1:5432 (installed with apt-get
#   and started if it is not, when running as root on Debian/Ubuntu), and that
#   YT_TEST_POSTGRES_URL names a role that may create databases there: the
#   one given, else postgres with no password if the server trusts it, else a
#   role ytnotify_test made for the purpose. Exports YT_TEST_POSTGRES_URL.
#   On another host, or without root, it says what to run and returns 1.
#
# postgres_drop_stale PREFIX
#   Drops the databases named PREFIX… that killed test runs left behind.
#   YTNOTIFY_NO_INSTALL=1 turns off installing and starting: only reuse.
#
# Messages go to stderr, one line each, prefixed with [postgres].

POSTGRES_START_TIMEOUT=60

postgres_log() {
    printf '[postgres] %s\n' "$*" >&2
}

# postgres_can URL: whether URL logs in and may create databases.
postgres_can() {
    local out
    # -w: never ask for a password (it would wait on a terminal no one reads).
    out=$(timeout 10 psql -w "$1" -XAtqc "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user" 2>/dev/null) || return 1
    [[ $out == t ]]
}

# postgres_as_admin SQL: runs SQL as the postgres superuser, over the local socket.
postgres_as_admin() {
    if ((EUID == 0)); then
        runuser -u postgres -- psql -XAtqc "$1"
    else
        sudo -u postgres psql -XAtqc "$1"
    fi
}

postgres_install() {
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/postgresql-install.XXXXXX.log")
    postgres_log "PostgreSQL is not installed; installing it with apt-get (a minute or two; output in $log)"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql postgresql-client; } >"$log" 2>&1; then
        postgres_log "installing postgresql failed; see $log"
        return 1
    fi
    rm -f "$log"
    postgres_log "installed PostgreSQL"
}

# postgres_start: starts every local cluster (Debian's pg_ctlcluster).
postgres_start() {
    local version cluster
    if ! command -v pg_lsclusters >/dev/null 2>&1; then
        postgres_log "pg_lsclusters is missing: start PostgreSQL yourself (sudo service postgresql start)"
        return 1
    fi
    while read -r version cluster _; do
        postgres_log "starting PostgreSQL $version/$cluster"
        pg_ctlcluster "$version" "$cluster" start 2>/dev/null || true
    done < <(pg_lsclusters -h)
    local waited=0
    while ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; do
        if ((waited >= POSTGRES_START_TIMEOUT)); then
            postgres_log "PostgreSQL did not open 127.0.0.1:5432 within ${POSTGRES_START_TIMEOUT}s; see /var/log/postgresql/"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

ensure_postgres() {
    if [[ -n ${YT_TEST_POSTGRES_URL:-} ]]; then
        if postgres_can "$YT_TEST_POSTGRES_URL"; then
            export YT_TEST_POSTGRES_URL
            return 0
        fi
        postgres_log "YT_TEST_POSTGRES_URL does not log in to PostgreSQL, or its role may not create databases; give the URL of a role that may (CREATEDB)"
        return 1
    fi
    if ! command -v psql >/dev/null 2>&1 || ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
        if [[ -n ${YTNOTIFY_NO_INSTALL:-} ]]; then
            postgres_log "no PostgreSQL answers at 127.0.0.1:5432: start one, or set YT_TEST_POSTGRES_URL"
            return 1
        fi
        if ((EUID != 0)); then
            postgres_log "no PostgreSQL answers at 127.0.0.1:5432: run  sudo apt-get install -y postgresql && sudo service postgresql start  or set YT_TEST_POSTGRES_URL"
            return 1
        fi
        if ! command -v pg_lsclusters >/dev/null 2>&1; then
            postgres_install || return 1
        fi
        postgres_start || return 1
    fi
    local trusted='postgres://postgres@127.0.0.1:5432/postgres'
    if postgres_can "$trusted"; then
        export YT_TEST_POSTGRES_URL=$trusted
        return 0
    fi
    # The server asks for a password over TCP (Debian's default): a role of
    # the tests' own, with one.
    local made='postgres://ytnotify_test:ytnotify_test@127.0.0.1:5432/postgres'
    if ! postgres_can "$made"; then
        postgres_log "making the role ytnotify_test, which may create databases, for the tests"
        if ! postgres_as_admin "DO \$\$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ytnotify_test') THEN
                    CREATE ROLE ytnotify_test LOGIN CREATEDB PASSWORD 'ytnotify_test';
                END IF; END \$\$" >/dev/null; then
            postgres_log "could not make it: run  sudo -u postgres createuser --createdb --pwprompt ytnotify_test  and set YT_TEST_POSTGRES_URL"
            return 1
        fi
    fi
    if ! postgres_can "$made"; then
        postgres_log "the role ytnotify_test cannot log in over TCP with the password ytnotify_test (made earlier with another one? check pg_hba.conf too), or set YT_TEST_POSTGRES_URL"
        return 1
    fi
    export YT_TEST_POSTGRES_URL=$made
}

# postgres_drop_stale PREFIX: drops the databases whose names start with
# PREFIX (what killed test runs left behind), on YT_TEST_POSTGRES_URL's server.
postgres_drop_stale() {
    local name
    while read -r name; do
        [[ -n $name ]] || continue
        psql -w "$YT_TEST_POSTGRES_URL" -XAtqc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 || true
    done < <(psql -w "$YT_TEST_POSTGRES_URL" -XAtqc "SELECT datname FROM pg_database WHERE starts_with(datname, '$1')" 2>/dev/null)
}
