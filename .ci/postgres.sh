# Sourced by .ci/run: start a throw-away PostgreSQL server for the tests that need one and export
# its URI as SWEEPLAB_TEST_POSTGRES (a role that may create databases; each test makes its own).
# Installs Debian's postgresql package when no server binaries are found. If the server still
# cannot be started, say so and leave the variable unset: those tests then skip with that reason.

_pg_bin() {
    local found
    found="$(command -v pg_ctl 2>/dev/null || true)"
    if [ -z "$found" ]; then
        found="$(ls -1 /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)"
    fi
    [ -n "$found" ] && dirname "$found"
}

_pg_start() {
    local bin dir port user run
    bin="$(_pg_bin || true)"
    if [ -z "$bin" ] && command -v apt-get >/dev/null 2>&1; then
        echo "ci: installing PostgreSQL (apt-get)"
        if [ "$(id -u)" = 0 ]; then run=""; else run="sudo -n"; fi
        $run apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $run apt-get install -y -qq postgresql >/dev/null
        bin="$(_pg_bin || true)"
    fi
    if [ -z "$bin" ]; then
        echo "ci: no PostgreSQL server binaries; the PostgreSQL tests will skip"
        return 1
    fi
    dir="$(mktemp -d /tmp/sweeplab-ci-pg.XXXXXX)"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    run=""
    if [ "$(id -u)" = 0 ]; then  # initdb refuses root: run the server as the package's user
        user=postgres
        id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"
        chown "$user" "$dir"
        run="$(command -v runuser || echo /usr/sbin/runuser) -u $user --"
    fi
    $run "$bin/initdb" -D "$dir/data" -U sweeplab -A trust >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; return 1; }
    # In the configuration file, not on pg_ctl's command line: a test that stops and starts the
    # server (SWEEPLAB_TEST_POSTGRES_CTL) gets it back on the same port.
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nmax_connections = 200\nfsync = off\n" \
        "$port" "$dir" >>"$dir/data/postgresql.conf"
    $run "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { cat "$dir/server.log"; return 1; }
    export SWEEPLAB_TEST_POSTGRES="postgresql://sweeplab@127.0.0.1:$port/postgres"
    # pg_ctl with the server's folder and log: append "-m fast restart", "-m fast stop" or "start".
    export SWEEPLAB_TEST_POSTGRES_CTL="$run $bin/pg_ctl -D $dir/data -l $dir/server.log -w -t 60"
    _PG_STOP="$run $bin/pg_ctl -D $dir/data -m fast stop"
    echo "ci: PostgreSQL at $SWEEPLAB_TEST_POSTGRES ($("$bin/postgres" --version))"
}

_pg_start || echo "ci: PostgreSQL could not be started; the PostgreSQL tests will skip"
