#!/usr/bin/env bash
# Mutual TLS with OpenSSL on either side, as an operator's TLS terminator or
# proxy would be: `openssl s_client` with a gateway's certificate and key
# talks to the backend (and is refused a gateway route without them), and
# the gateway's backend client completes mutual TLS with `openssl s_server
# -Verify` configured with the backend's CA. Needs the debug binaries built.
set -euo pipefail
BIN="${CARGO_TARGET_DIR:-/var/cache/vouch-target}/debug"
B=$BIN/vouch-backend; G=$BIN/vouch-gateway
W=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$W"/*.log; do echo "--- $f"; tail -15 "$f"; done; exit 1; }
wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "timed out waiting for $what"
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(port); SP=$(port)

$B --data-dir "$W/vb" init > /dev/null
$B --data-dir "$W/vb" serve --listen "127.0.0.1:$BP" > "$W/backend.log" 2>&1 & pids+=($!)
wait_for "the backend" grep -q "listening on" "$W/backend.log"
mkdir -p "$W/vg"
$G init --key "$W/vg/identity.pem" > /dev/null
$B --data-dir "$W/vb" enroll gateway --public-key @"$W/vg/identity.pub.pem" --site lab --out "$W/vg/client.pem" > /dev/null 2>&1

# A gateway route over OpenSSL's client: the revocation feed, at once.
request=$'GET /v1/feed?after=0&wait_ms=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'
s_client() {
    printf '%s' "$request" | timeout 20 openssl s_client -quiet -connect "127.0.0.1:$BP" \
        -CAfile "$W/vb/ca.pem" -verify_return_error "$@" 2>"$W/s_client.log" | head -c 4096 | tr -d '\0'
}
with=$(s_client -cert "$W/vg/client.pem" -key "$W/vg/identity.pem")
echo "$with" | head -1 | grep -q "^HTTP/1.1 200" || fail "openssl s_client with the gateway's certificate: $(echo "$with" | head -1)"
echo "openssl s_client with the gateway's certificate and key: $(echo "$with" | head -1 | tr -d '\r')"
without=$(s_client || true)
echo "$without" | head -1 | grep -q "^HTTP/1.1 401" && echo "$without" | grep -q client_certificate_required \
    || fail "openssl s_client without a certificate was not refused: $(echo "$without" | head -1)"
echo "openssl s_client without a certificate: $(echo "$without" | head -1 | tr -d '\r'), client_certificate_required"

# The gateway's backend client against OpenSSL's server, which demands a
# certificate from the backend's CA (-Verify) and serves its status page.
openssl s_server -accept "127.0.0.1:$SP" -cert "$W/vb/server.pem" -key "$W/vb/server-key.pem" \
    -CAfile "$W/vb/ca.pem" -Verify 1 -verify_return_error -www > "$W/s_server.log" 2>&1 & pids+=($!)
wait_for "openssl s_server" grep -q "ACCEPT" "$W/s_server.log"
cp "$W/vb/ca.pem" "$W/vg/ca.pem"
$G example-config | sed -e "s|/var/lib/vouch-gateway|$W/vg|; s|/etc/vouch/backend-ca.pem|$W/vg/ca.pem|" \
   -e "s|https://backend.example.net:8443|https://127.0.0.1:$SP|; s|/run/vouch-gateway|$W/vg|; s|127.0.0.1:7800|127.0.0.1:0|" > "$W/vg/gateway.toml"
$G run --config "$W/vg/gateway.toml" > "$W/gateway.log" 2>&1 & pids+=($!)
# The gateway asks for the feed at once: s_server verifies its certificate
# (from the backend's CA), and the gateway gets an answer that is not a
# Vouch body (s_server's status page): TLS completed both ways.
wait_for "openssl s_server to verify the gateway's certificate" grep -q "depth=0 CN = vouch gateway" "$W/s_server.log"
grep -A1 "depth=0 CN = vouch gateway" "$W/s_server.log" | grep -q "verify return:1" \
    || fail "openssl s_server did not accept the gateway's certificate"
wait_for "the gateway to read s_server's answer" grep -q "backend answer malformed" "$W/gateway.log"
echo "the gateway's backend client against openssl s_server -Verify 1: mutual TLS completed, its certificate verified"
