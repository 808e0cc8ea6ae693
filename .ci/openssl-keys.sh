#!/usr/bin/env bash
# The key files Vouch writes are the PKCS#8 OpenSSL reads, and Vouch reads the
# ones OpenSSL writes (RFC 8410): the gateway's and the device's identity,
# the backend's signing and sealing keys. Needs the debug binaries built.
set -euo pipefail
BIN="${CARGO_TARGET_DIR:-/var/cache/vouch-target}/debug"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The raw 32-byte public key of a PKCS#8 key, in hex, as OpenSSL computes it.
openssl_public_hex() {
    openssl pkey -in "$1" -pubout -outform DER | tail -c 32 | od -An -tx1 | tr -d ' \n'
}

# Vouch writes, OpenSSL reads.
gw=$("$BIN/vouch-gateway" init --key "$work/gateway.pem" | awk '/^public key:/ { print $3 }')
[ "$(openssl_public_hex "$work/gateway.pem")" = "$gw" ] || { echo "FAIL: openssl reads another public key from vouch-gateway init's key"; exit 1; }
echo "vouch-gateway init: openssl pkey reads it, same public key"

dev=$("$BIN/vouch-peripheral" keygen --dir "$work/device" 2>/dev/null | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["public_key"])')
[ "$(openssl_public_hex "$work/device/identity.pem")" = "$dev" ] || { echo "FAIL: openssl reads another public key from vouch-peripheral keygen's key"; exit 1; }
echo "vouch-peripheral keygen: openssl pkey reads it, same public key"

"$BIN/vouch-backend" init --data-dir "$work/backend" > /dev/null
for f in signing-1.pem sealing-1.pem ca-key.pem server-key.pem; do
    openssl pkey -in "$work/backend/$f" -noout || { echo "FAIL: openssl cannot read the backend's $f"; exit 1; }
done
echo "vouch-backend init: openssl pkey reads signing-1, sealing-1, the CA and server keys"

# Python's cryptography, which refused the v2 form too ("extra data").
python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography
python3 - "$work/gateway.pem" "$work/device/identity.pem" "$work/backend/signing-1.pem" <<'PY'
import sys
from cryptography.hazmat.primitives.serialization import load_pem_private_key
for path in sys.argv[1:]:
    load_pem_private_key(open(path, "rb").read(), None)
print("Python cryptography reads the gateway's, the device's and the backend's signing key")
PY

# OpenSSL writes, Vouch reads.
openssl genpkey -algorithm ed25519 -out "$work/openssl.pem"
chmod 600 "$work/openssl.pem"
read_back=$("$BIN/vouch-gateway" init --key "$work/openssl.pem" | awk '/^public key:/ { print $3 }')
[ "$read_back" = "$(openssl_public_hex "$work/openssl.pem")" ] || { echo "FAIL: vouch-gateway reads another public key from openssl's key"; exit 1; }
echo "openssl genpkey ed25519: vouch-gateway reads it, same public key"

# An X25519 sealing key OpenSSL made, read by the backend: `keys list` shows
# the public value OpenSSL computes for it.
cp -r "$work/backend" "$work/backend-x"
openssl genpkey -algorithm x25519 -out "$work/backend-x/sealing-1.pem"
chmod 600 "$work/backend-x/sealing-1.pem"
want=$(openssl_public_hex "$work/backend-x/sealing-1.pem")
got=$("$BIN/vouch-backend" --data-dir "$work/backend-x" keys list --json \
      | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' | grep -o "$want" | head -1 || true)
[ "$got" = "$want" ] || { echo "FAIL: vouch-backend does not read openssl's X25519 key (sealing public $want not listed)"; exit 1; }
echo "openssl genpkey x25519: vouch-backend reads it as its sealing key, same public value"
