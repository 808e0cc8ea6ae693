#!/usr/bin/env bash
# The admin API against its own OpenAPI document (issue 18): schemathesis,
# a property-based API tester from PyPI, generates requests from
# /v1/openapi.json (valid and invalid ones, for every route, query and body)
# and checks every answer: no 5xx, every body valid against the document's
# schema, every status and content type one the document declares.
#
# Runs a real `vouch-backend serve` (debug build) with a little registry,
# as an admin named by a random token (so that the tester, which also
# removes operators and revokes tokens it names, cannot guess its own).
# Prints "N passed, M failed"; exits 1 on failure.
#
#   CARGO_TARGET_DIR=... .ci/api-fuzz.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/${PROFILE:-debug}"
B=$BIN/vouch-backend
VENV=${API_FUZZ_VENV:-${CARGO_TARGET_DIR:-target}/venv-api-fuzz}
EXAMPLES=${API_FUZZ_EXAMPLES:-40}
W=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
fail() { echo "api-fuzz FAILED: $*"; tail -20 "$W/b.log" 2>/dev/null; echo "0 passed, 1 failed"; exit 1; }

if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV" || fail "python3 -m venv (Debian: python3-venv)"
    "$VENV/bin/pip" install -q 'schemathesis>=4,<5' || fail "pip install schemathesis"
fi
echo "$("$VENV/bin/schemathesis" --version)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$B --data-dir "$W/vb" init > /dev/null || fail "init"
$B --data-dir "$W/vb" serve --listen "127.0.0.1:$port" > "$W/b.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$W/b.log" && break; sleep 0.1; done
grep -q "listening on" "$W/b.log" || fail "the backend did not start"
name="fuzz-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
$B --data-dir "$W/vb" operators add "$name" --role admin --out "$W/token" > /dev/null || fail "operators add"
# Something to read: a device, a gateway, a rule.
$B --data-dir "$W/vb" enroll peripheral --public-key "$(printf '%064x' 7)" --group meters --attr fw=1 > /dev/null 2>&1 \
    || $B --data-dir "$W/vb" enroll peripheral --public-key d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a --group meters > /dev/null
$B --data-dir "$W/vb" enroll gateway --public-key 3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c --site lab --out "$W/gw.pem" 2> /dev/null
$B --data-dir "$W/vb" associate --peripheral group:meters --gateway site:lab > /dev/null

url="https://127.0.0.1:$port"
# Two runs: everything but what revokes tokens or removes operators (the
# tester follows links, so it would feed its own token's id to them), then
# those alone.
fuzz() { # name, path filter option, regex
    "$VENV/bin/schemathesis" run "$url/v1/openapi.json" \
        --url "$url" \
        --header "Authorization: Bearer $(cat "$W/token")" \
        --tls-verify "$W/vb/ca.pem" \
        "$2" "$3" \
        --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
        --max-examples "$EXAMPLES" \
        --seed 1 \
        --no-color > "$W/st-$1.log" 2>&1
    local rc=$?
    echo "--- schemathesis, $1"
    sed -n "/FAILURES\|WARNINGS\|SUMMARY/,\$p" "$W/st-$1.log" | tail -60
    return $rc
}
rc=0
fuzz most --exclude-path-regex '^/v1/(feed|vouch|sessions|anchor-updates|certificate)|^/v1/admin/(tokens/|operators/)' || rc=1
fuzz revoking --include-path-regex '^/v1/admin/(tokens/|operators/)' || rc=1
if grep -q "panicked" "$W/b.log"; then
    fail "the backend panicked"
fi
if [ "$rc" != 0 ]; then
    echo "schemathesis found failures (above)"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "1 passed, 0 failed"
