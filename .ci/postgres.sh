# Starts a PostgreSQL cluster on 127.0.0.1 from Debian's packages and exports
# DATABASE_URL for the tests. Sourced by .ci/run; usable by hand:
#   . .ci/postgres.sh && start_postgres
start_postgres() {
    local ver port=${VOUCH_PG_PORT:-5432}
    ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$ver main"; then
        pg_createcluster "$ver" main -p "$port" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    fi
    port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
    if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
        pg_ctlcluster "$ver" main start
    fi
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 0.5
    done
    pg_isready -h 127.0.0.1 -p "$port"
    su postgres -c "psql -q -p $port -c \"DO \\\$\\\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vouch') THEN
            CREATE ROLE vouch LOGIN SUPERUSER PASSWORD 'vouch';
        END IF; END \\\$\\\$;\""
    su postgres -c "psql -q -p $port -tc \"SELECT 1 FROM pg_database WHERE datname = 'vouch'\"" | grep -q 1 \
        || su postgres -c "createdb -p $port -O vouch vouch"
    export DATABASE_URL="postgres://vouch:vouch@127.0.0.1:$port/vouch"
}
