#!/usr/bin/env python3
"""Independent conformance check of the Vouch protocol, version 1.

Written from SPEC.md alone (not from the Rust sources). Starting only from
`inputs` in proto/tests/vectors/v1.json it recomputes every other value of the
file and compares it byte for byte, then feeds every negative vector to the
party named by its state and checks that it is rejected, and where.

Usage:  python3 check_vectors.py [path/to/v1.json]
Needs:  Python 3.8+ and the PyPI package `cryptography`.

Output: one line per check, "ok NAME" or "FAIL NAME: expected ... got ...",
then "N passed, M failed". Exit status 1 if anything failed.

Section numbers (§) refer to SPEC.md. Comments marked "SPEC GAP" are places
where the spec had to be interpreted; see tests/conformance/README.md.
"""

import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

DEFAULT_VECTORS = Path(__file__).resolve().parents[2] / "proto/tests/vectors/v1.json"

VERSION = 1  # §4.1
SUITE = 1  # §3.1

# §4.2 message types
HELLO, RESPONSE, FINISH, RESUME_HELLO, RESUME_RESPONSE, RECORD, ALERT = range(7)
KNOWN_TYPES = range(7)
HANDSHAKE_TYPES = {HELLO, RESPONSE, FINISH, RESUME_HELLO, RESUME_RESPONSE}

MAX_MESSAGE = 1024  # §4.1
MAX_HANDSHAKE = 244  # §4.1
MAX_SEALED_VOUCH = 112  # §4.4

# §5.5 scope bits, §7.3 content types
TELEMETRY, COMMAND = 1 << 0, 1 << 1
CT_APPLICATION = 0
CT_ANCHOR_UPDATE = 2

# §7.7 anchor actions: 0-2 are reserved (always refused), 3 is the rotation
ADD, REPLACE, RETIRE, ROTATE = range(4)

# §5.7 labels
L_PERIPHERAL_ID = b"vouch/1 peripheral-id"
L_HELLO_SIG = b"vouch/1 hello signature"
L_SEAL = b"vouch/1 seal"
L_RESPONSE = b"vouch/1 response"
L_VOUCH_SIG = b"vouch/1 vouch signature"
L_P2G = b"vouch/1 p2g"
L_G2P = b"vouch/1 g2p"
L_RESUMPTION = b"vouch/1 resumption"
L_RESUMPTION_ID = b"vouch/1 resumption id"
L_SESSION_ID = b"vouch/1 session id"
L_BINDER = b"vouch/1 binder"
L_RESUME_CONFIRM = b"vouch/1 resume confirm"
L_ANCHOR_UPDATE = b"vouch/1 anchor update"
L_ANCHOR_COMMITMENT = b"vouch/1 anchor commitment"


class Reject(Exception):
    """A rejection by a party. `code` names the check that failed."""

    def __init__(self, code, detail=""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


# ---------------------------------------------------------------------------
# §3 Cryptography
# ---------------------------------------------------------------------------


def H(data):
    """H(x) = SHA-256 (conventions at the top of the spec)."""
    return hashlib.sha256(data).digest()


def le32(n):
    return struct.pack("<I", n)


def le64(n):
    return struct.pack("<Q", n)


def hkdf_extract(salt, ikm):
    """RFC 5869 §2.2."""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, length=32):
    """RFC 5869 §2.3."""
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def hkdf(salt, ikm, info, length=32):
    """§3.5 HKDF(salt, ikm, info) = Expand(Extract(salt, ikm), info, L)."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


def hmac16(key, msg):
    """§3.5 HMAC16: first 16 bytes of HMAC-SHA-256."""
    return hmac.new(key, msg, hashlib.sha256).digest()[:16]


def ratchet(key, info):
    """§3.5 Ratchet(k, info) = HKDF-Expand(PRK = k, info, 32)."""
    return hkdf_expand(key, info, 32)


def chacha20(key, data):
    """§3.3 ChaCha20 for single-use keys: nonce = 12 zero bytes.

    SPEC GAP (§3.3): the initial block counter is not stated. RFC 8439 uses 1
    in its encryption examples and in the AEAD; the vectors use 0. The
    `cryptography` API takes a 16-byte value: LE32(block counter) || nonce.
    """
    initial_counter = 0
    nonce16 = le32(initial_counter) + bytes(12)
    return Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(data)


def aead_nonce(counter):
    """§7.2 nonce = 0x00000000 || LE64(counter)."""
    return bytes(4) + le64(counter)


def x25519_public(secret):
    """RFC 7748 X25519(secret, 9); `cryptography` clamps the secret."""
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def x25519(secret, public):
    """§3.2: X25519 and reject an all-zero result (low-order peer share)."""
    try:
        shared = X25519PrivateKey.from_private_bytes(secret).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:  # OpenSSL itself refuses an all-zero shared secret
        raise Reject("dh_zero", "§3.2 X25519 result is all zeros") from None
    if shared == bytes(32):
        raise Reject("dh_zero", "§3.2 X25519 result is all zeros")
    return shared


def ed25519_public(seed):
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def ed25519_sign(seed, msg):
    """RFC 8032 Ed25519 from a 32-byte seed (deterministic)."""
    return Ed25519PrivateKey.from_private_bytes(seed).sign(msg)


# --- §3.4 strict verification ------------------------------------------------
# SPEC GAP (§3.4): the rules are given by reference to ed25519-dalek's
# `verify_strict`. OpenSSL (behind `cryptography`) checks S < L and the
# cofactorless equation with a byte comparison of R, but it does NOT reject
# small-order A or R, so those checks are added here with a few lines of
# Edwards arithmetic. Point decoding follows RFC 8032 §5.1.3 (non-canonical
# y >= p rejected); the spec does not say whether that is intended.

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(enc):
    """RFC 8032 §5.1.3; returns affine (x, y) or None."""
    if len(enc) != 32:
        return None
    y = int.from_bytes(enc, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        if (v * x * x + u) % _P != 0:
            return None
        x = (x * _SQRT_M1) % _P
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y)


def _point_add(p, q):
    """Complete twisted Edwards addition (a = -1), affine coordinates."""
    (x1, y1), (x2, y2) = p, q
    t = (_D * x1 * x2 * y1 * y2) % _P
    x3 = ((x1 * y2 + y1 * x2) * pow(1 + t, _P - 2, _P)) % _P
    y3 = ((y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P)) % _P
    return (x3, y3)


def _point_neg(p):
    return ((-p[0]) % _P, p[1])


def _scalar_mul(k, p):
    """[k]P by double-and-add (not constant time: public values only)."""
    q = (0, 1)
    while k:
        if k & 1:
            q = _point_add(q, p)
        p = _point_add(p, p)
        k >>= 1
    return q


def _encode_point(p):
    """RFC 8032 §5.1.2: y, with the low bit of x as the top bit."""
    x, y = p
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


_BASE = _decode_point((4 * pow(5, _P - 2, _P) % _P).to_bytes(32, "little"))


def _is_small_order(point):
    """[8]P is the identity (0, 1)."""
    for _ in range(3):
        point = _point_add(point, point)
    return point == (0, 1)


def ed25519_verify_strict(public, msg, sig):
    """§3.4: S < L, A and R decode and are not of small order, [S]B = R + [k]A."""
    if len(public) != 32 or len(sig) != 64:
        raise Reject("signature", "§3.4 bad length")
    if int.from_bytes(sig[32:], "little") >= _L:
        raise Reject("signature", "§3.4 S is not canonical")
    a_point, r_point = _decode_point(public), _decode_point(sig[:32])
    if a_point is None or r_point is None:
        raise Reject("signature", "§3.4 A or R is not a valid point")
    if _is_small_order(a_point) or _is_small_order(r_point):
        raise Reject("signature", "§3.4 A or R has small order")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, msg)
    except InvalidSignature:
        raise Reject("signature", "§3.4 signature does not verify") from None


def ed25519_verify_hello(public, msg, sig):
    """§3.4, the rule for hello signatures: rules 1 to 3 as above (S < L; A
    and R canonical encodings, not of small order), then the cofactored
    equation [8][S]B = [8]R + [8][k]A. Written here from the equation, since
    OpenSSL has only the cofactorless check."""
    if len(public) != 32 or len(sig) != 64:
        raise Reject("signature", "§3.4 bad length")
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        raise Reject("signature", "§3.4 S is not canonical")
    # _decode_point refuses y >= p and x = 0 with the sign bit set: the
    # canonical encodings only
    a_point, r_point = _decode_point(public), _decode_point(sig[:32])
    if a_point is None or r_point is None:
        raise Reject("signature", "§3.4 A or R is not a canonical encoding of a point")
    if _is_small_order(a_point) or _is_small_order(r_point):
        raise Reject("small_order", "§3.4 A or R has small order")
    k = int.from_bytes(hashlib.sha512(sig[:32] + public + msg).digest(), "little") % _L
    # [S]B - [k]A - R, times 8
    diff = _point_add(_scalar_mul(s, _BASE), _point_neg(_point_add(_scalar_mul(k, a_point), r_point)))
    if not _is_small_order(diff):
        raise Reject("signature", "§3.4 the hello signature does not verify")


# ---------------------------------------------------------------------------
# §4 Messages: postcard encoding and the envelope
# ---------------------------------------------------------------------------


def varint(n):
    """postcard / LEB128 unsigned varint (conventions; §4.1)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Reader:
    """Cursor over a message; truncation and trailing bytes are §4.1 errors."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise Reject("truncated", "§4.1 message is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self):
        # SPEC GAP (§4.1): "integers are varints", but the one-byte fields
        # (suite, kid, backend_key, content type, alert code) are postcard
        # u8, i.e. one raw byte (the tables say "1 byte"). Read as raw bytes.
        return self.take(1)[0]

    def varint(self, bits):
        # SPEC GAP (§4.1): nothing says whether non-minimal encodings
        # (e.g. 0x81 0x00 for 1) or values wider than the field are accepted.
        # This implementation rejects both (untested by the vectors).
        value, shift = 0, 0
        for i in range((bits + 6) // 7):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if i > 0 and byte == 0:
                    raise Reject("varint", "non-minimal varint")
                if value >> bits:
                    raise Reject("varint", f"varint exceeds u{bits}")
                return value
        raise Reject("varint", f"varint longer than a u{bits}")

    def end(self):
        if self.pos != len(self.data):
            raise Reject("trailing", "§4.1 trailing bytes")


def open_envelope(msg, expected_types):
    """§4.1 checks done before any cryptography, plus the §5.8 state check.

    Returns (type, Reader positioned after the envelope/suite)."""
    if not msg:
        raise Reject("empty", "§4.1 empty message")
    if len(msg) > MAX_MESSAGE:
        raise Reject("too_long", "§4.1 longer than 1024 bytes")
    if msg[0] != VERSION:
        raise Reject("version", f"§4.1 version {msg[0]}")
    if len(msg) < 2:
        raise Reject("truncated", "§4.1 message is truncated")
    mtype = msg[1]
    if mtype not in KNOWN_TYPES:
        raise Reject("type", f"§4.1 unknown type {mtype}")
    if mtype in HANDSHAKE_TYPES and len(msg) > MAX_HANDSHAKE:
        raise Reject("too_long", "§4.1 handshake message longer than 244 bytes")
    if mtype not in expected_types:
        raise Reject("unexpected_type", f"§5.8 type {mtype} not expected in this state")
    reader = Reader(msg)
    reader.take(2)
    if mtype in (HELLO, RESUME_HELLO):
        suite = reader.u8()
        if suite != SUITE:
            raise Reject("suite", f"§4.1 suite {suite}")
    return mtype, reader


def decode_hello(reader):
    """§4.3 after version, type, suite: anchor kid, e_P, sealed (72)."""
    kid = reader.u8()
    e_P = reader.take(32)
    sealed = reader.take(72)
    reader.end()
    return kid, e_P, sealed


def decode_alert(reader):
    """§4.7."""
    code = reader.u8()
    reader.end()
    return code


def encode_vouch_body(v):
    """§4.4 vouch body (postcard): gateway_key, scope, session_s,
    resumption_s, backend_key, signature."""
    return (
        v["gateway_key"]
        + varint(v["scope"])
        + varint(v["session_s"])
        + varint(v["resumption_s"])
        + bytes([v["backend_key"]])
        + v["signature"]
    )


def decode_vouch_body(body):
    """§4.4 / §5.6 step 3 (no trailing bytes). A decoding failure is 'body'."""
    r = Reader(body)
    try:
        v = {
            "gateway_key": r.take(32),
            "scope": r.varint(32),
            "session_s": r.varint(32),
            "resumption_s": r.varint(32),
            "backend_key": r.u8(),
            "signature": r.take(64),
        }
        r.end()
    except Reject as e:
        raise Reject("body", f"§5.6 step 3 vouch body does not decode ({e})") from None
    return v


def vouch_statement(th1, id_p, e_G, v):
    """§5.4, fixed layout, 140 bytes."""
    stmt = (
        L_VOUCH_SIG
        + th1
        + id_p
        + e_G
        + v["gateway_key"]
        + le32(v["scope"])
        + le32(v["session_s"])
        + le32(v["resumption_s"])
        + bytes([v["backend_key"]])
    )
    assert len(stmt) == 140
    return stmt


def schedule(prk):
    """§5.6 step 6 (also used by §6.3)."""
    return {
        "k_p2g": hkdf_expand(prk, L_P2G, 32),
        "k_g2p": hkdf_expand(prk, L_G2P, 32),
        "resumption": hkdf_expand(prk, L_RESUMPTION, 32),
        "resumption_id": hkdf_expand(prk, L_RESUMPTION_ID, 16),
        "session_id": hkdf_expand(prk, L_SESSION_ID, 8),
    }


def finish_tag(k_p2g, th2):
    """§4.5: ChaCha20-Poly1305 tag of an empty plaintext under k_p2g, record
    counter 0 (so nonce = 12 zero bytes, §7.2), AAD = 1 || 2 || TH2."""
    return ChaCha20Poly1305(k_p2g).encrypt(aead_nonce(0), b"", bytes([VERSION, FINISH]) + th2)


def check_finish(msg, k_p2g, th2):
    """Gateway side of §4.5 (full handshake and §6.3)."""
    mtype, r = open_envelope(msg, {FINISH, ALERT})
    if mtype == ALERT:
        raise Reject("alert", f"§5.6 peer sent alert {decode_alert(r)}")
    tag = r.take(16)
    r.end()
    if not hmac.compare_digest(tag, finish_tag(k_p2g, th2)):
        raise Reject("finish_tag", "§4.5 Finish tag does not verify")


# ---------------------------------------------------------------------------
# §7 Session
# ---------------------------------------------------------------------------


class Session:
    """§7.1-§7.4. Rekeying (§7.5) and close (§7.6) are not exercised by the
    vectors and not implemented."""

    WINDOW = 64  # §7.4

    def __init__(self, send_key, recv_key, send_counter, recv_seen, scope, send_needs, recv_needs):
        self.send_key, self.recv_key = send_key, recv_key
        self.send_counter = send_counter
        # SPEC GAP (§7.2/§7.4): whether the Finish's counter 0 occupies the
        # gateway's p2g replay window is not stated; here it does (P never
        # sends a record with counter 0: that would reuse the Finish nonce).
        self.highest = max(recv_seen) if recv_seen else None
        self.seen = set(recv_seen)
        self.scope, self.send_needs, self.recv_needs = scope, send_needs, recv_needs

    def seal(self, content_type, content):
        """§7.2 record = 1 || 5 || varint(counter) || varint(len) || AEAD."""
        if content_type == CT_APPLICATION and not self.scope & self.send_needs:
            raise Reject("scope", "§7.3 application data outside the scope")
        counter = self.send_counter
        self.send_counter += 1
        sealed = ChaCha20Poly1305(self.send_key).encrypt(
            aead_nonce(counter),
            bytes([content_type]) + content,
            bytes([VERSION, RECORD]) + le64(counter),  # aad = 1 || 5 || LE64(counter)
        )
        # SPEC GAP (§4.6): `len` counts ciphertext AND tag (content type +
        # content + 16); only the "len < 17" rule says so.
        return bytes([VERSION, RECORD]) + varint(counter) + varint(len(sealed)) + sealed

    def open(self, record):
        """§7.4: decode, (epoch: only epoch 0 here), replay window, AEAD,
        then update state. A failure leaves the session usable."""
        _, r = open_envelope(record, {RECORD})
        counter = r.varint(64)
        length = r.varint(16)
        if length < 17:
            raise Reject("malformed", "§4.6 len < 17")
        sealed = r.take(length)
        r.end()
        if counter >> 32:
            raise Reject("epoch", "§7.5 epoch > 0 not implemented by this checker")
        # SPEC GAP (§7.4): "within 64 below it" does not fix the boundary;
        # here counters highest-63 .. highest are inside the window.
        if self.highest is not None:
            if counter in self.seen:
                raise Reject("replay", "§7.4 counter already accepted")
            if counter + self.WINDOW <= self.highest:
                raise Reject("replay", "§7.4 counter older than the window")
        try:
            plaintext = ChaCha20Poly1305(self.recv_key).decrypt(
                aead_nonce(counter), sealed, bytes([VERSION, RECORD]) + le64(counter)
            )
        except InvalidTag:
            raise Reject("aead", "§7.4 record does not authenticate") from None
        content_type, content = plaintext[0], plaintext[1:]
        if content_type == CT_APPLICATION and not self.scope & self.recv_needs:
            raise Reject("scope", "§7.3 application data outside the scope")
        # Only now update state (§7.4).
        self.seen.add(counter)
        self.highest = counter if self.highest is None else max(self.highest, counter)
        self.seen = {c for c in self.seen if c + self.WINDOW > self.highest}
        return content_type, content


def peripheral_session(keys, scope):
    """§7.1/§7.2: P sends with k_p2g from counter 1 (0 went to the Finish)."""
    return Session(keys["k_p2g"], keys["k_g2p"], 1, [], scope, TELEMETRY, COMMAND)


def gateway_session(keys, scope):
    """§7.1/§7.2: G sends with k_g2p from counter 0; P's counter 0 is spent."""
    return Session(keys["k_g2p"], keys["k_p2g"], 0, [0], scope, COMMAND, TELEMETRY)


# ---------------------------------------------------------------------------
# The three parties
# ---------------------------------------------------------------------------


def peripheral_id(public_key):
    """§2.2 PeripheralId = H("vouch/1 peripheral-id" || public_key)[0..8]."""
    return H(L_PERIPHERAL_ID + public_key)[:8]


class Backend:
    """§5.3 and §5.4. One instance = one backend with an empty replay cache."""

    def __init__(self, kid, signing_seed, sealing_secret, registry, enrolled_gateways, policy):
        self.keys = {kid: (signing_seed, sealing_secret)}
        self.registry = registry  # id_P -> Ed25519 public key
        self.gateways = enrolled_gateways
        self.policy = policy  # (id_P, gateway key) -> (scope, session_s, resumption_s)
        self.replay_cache = set()

    def vouch(self, gateway_key, hello, e_G):
        """§5.3 steps 1-8 then §5.4. Returns (vouch, id_P)."""
        # 1. gateway enrolled (from its TLS certificate)
        if gateway_key not in self.gateways:
            raise Reject("gateway", "§5.3 step 1 gateway not enrolled")
        # 2. hello decodes and names a key id the backend holds
        _, r = open_envelope(hello, {HELLO})
        kid, e_P, sealed = decode_hello(r)
        if kid not in self.keys:
            raise Reject("kid", "§5.3 step 2 unknown backend key id")
        signing_seed, b_x = self.keys[kid]
        # 3. replay cache (lockout not modelled)
        if e_P in self.replay_cache:
            raise Reject("replay", "§5.3 step 3 e_P already seen")
        # 4. open the sealed identity (§5.1 steps 4-6 in reverse)
        prefix, B_x = hello[:36], x25519_public(b_x)
        ss_B = x25519(b_x, e_P)
        k_seal = hkdf(H(prefix + B_x), ss_B, L_SEAL)
        opened = chacha20(k_seal, sealed)
        id_p, sig_p = opened[:8], opened[8:]
        # 5. id registered
        if id_p not in self.registry:
            raise Reject("id_unknown", "§5.3 step 5 id_P is not registered")
        # 6. sig_P over the statement of §5.1 step 3, by the hello rule (§3.4)
        ed25519_verify_hello(self.registry[id_p], L_HELLO_SIG + prefix + B_x + id_p, sig_p)
        # 7. policy
        if (id_p, gateway_key) not in self.policy:
            raise Reject("policy", "§5.3 step 7 policy refuses")
        scope, session_s, resumption_s = self.policy[(id_p, gateway_key)]
        # 8. record e_P, sign the vouch (§5.4)
        self.replay_cache.add(e_P)
        v = {
            "gateway_key": gateway_key,
            "scope": scope,
            "session_s": session_s,
            "resumption_s": resumption_s,
            "backend_key": kid,
        }
        v["signature"] = ed25519_sign(signing_seed, vouch_statement(H(hello), id_p, e_G, v))
        return v, id_p


class Peripheral:
    """§5.1, §5.6 (P side), §6.2, §6.3 (P side)."""

    def __init__(self, seed, id_p, anchors):
        self.seed, self.id_p = seed, id_p
        self.anchors = anchors  # §2.3 one anchor and the commitment to the next
        self.failed = None  # §5.8 errors are sticky

    def _sticky(self):
        if self.failed:
            raise Reject(self.failed.code, f"§5.8 sticky: {self.failed}")

    def hello(self, e_p):
        """§5.1 with the given ephemeral secret."""
        kid, _, B_x = self.anchors.anchor  # A, the anchor held (§5.1)
        e_P = x25519_public(e_p)  # 1.
        prefix = bytes([VERSION, HELLO, SUITE, kid]) + e_P  # 2.
        sig_p = ed25519_sign(self.seed, L_HELLO_SIG + prefix + B_x + self.id_p)  # 3.
        ss_B = x25519(e_p, B_x)  # 4.
        k_seal = hkdf(H(prefix + B_x), ss_B, L_SEAL)  # 5.
        hello = prefix + chacha20(k_seal, self.id_p + sig_p)  # 6.
        self.e_p, self.hello_msg, self.th1 = e_p, hello, H(hello)  # 7.
        self.sealed_to = self.anchors.anchor  # the only key whose vouch counts
        self.failed = None
        return hello

    def on_response(self, msg):
        """§5.6 steps 1-7. Returns the Finish."""
        self._sticky()
        try:
            return self._on_response(msg)
        except Reject as e:
            self.failed = e
            raise

    def _on_response(self, msg):
        mtype, r = open_envelope(msg, {RESPONSE, ALERT})  # 1.
        if mtype == ALERT:
            raise Reject("alert", f"§5.6 step 1 alert {decode_alert(r)}")
        e_G = r.take(32)
        length = r.varint(8)  # "len", 1 byte (a varint < 128, §4.1)
        if length > MAX_SEALED_VOUCH:
            raise Reject("too_long", "§4.4 sealed vouch longer than 112")
        sealed = r.take(length)
        r.end()
        ss = x25519(self.e_p, e_G)  # 2.
        k_resp = hkdf(H(self.th1 + e_G), ss, L_RESPONSE)  # 3.
        v = decode_vouch_body(chacha20(k_resp, sealed))
        kid, B_sig, _ = self.sealed_to
        if v["backend_key"] != kid:  # 4.
            raise Reject("anchor_unknown", "§5.6 step 4 not the anchor the Hello was sealed to")
        ed25519_verify_strict(B_sig, vouch_statement(self.th1, self.id_p, e_G, v), v["signature"])  # 5.
        th2 = H(self.hello_msg + msg)  # 6.
        self.keys = schedule(hkdf_extract(th2, ss))
        self.vouch = v
        self.ticket = {  # §6.1
            "G": v["gateway_key"],
            "id": self.keys["resumption_id"],
            "RS": self.keys["resumption"],
            "scope": v["scope"],
            "session_s": v["session_s"],
            "resumption_s": v["resumption_s"],
            "anchor": v["backend_key"],
        }
        self.session = peripheral_session(self.keys, v["scope"])
        return bytes([VERSION, FINISH]) + finish_tag(self.keys["k_p2g"], th2)  # 7.

    def resume_hello(self, e_p2):
        """§6.2, with a ticket under the anchor held (§6.1)."""
        t = self.ticket
        if t["anchor"] != self.anchors.anchor[0]:
            raise Reject("ticket_anchor", "§6.1 ticket granted under a rotated-away anchor")
        head = bytes([VERSION, RESUME_HELLO, SUITE]) + t["id"] + x25519_public(e_p2)
        binder = hmac16(ratchet(t["RS"], L_BINDER), head)  # over bytes 0..51
        self.e_p2, self.resume_msg, self.failed = e_p2, head + binder, None
        return self.resume_msg

    def on_resume_response(self, msg):
        """§6.3, P side. Returns the Finish."""
        self._sticky()
        try:
            mtype, r = open_envelope(msg, {RESUME_RESPONSE, ALERT})
            if mtype == ALERT:
                raise Reject("alert", f"§6.3 alert {decode_alert(r)}")
            e_G2, confirm = r.take(32), r.take(16)
            r.end()
            rs = self.ticket["RS"]
            ss = x25519(self.e_p2, e_G2)
            th_r = H(self.resume_msg + e_G2)
            expected = hmac16(hkdf(th_r, rs + ss, L_RESUME_CONFIRM), th_r)
            if not hmac.compare_digest(confirm, expected):
                raise Reject("confirm", "§6.3 confirm does not verify")
        except Reject as e:
            self.failed = e
            raise
        th2 = H(self.resume_msg + msg)
        self.keys = schedule(hkdf_extract(th2, rs + ss))
        # §6.1: next ticket; scope never widens, the anchor is carried
        # forward; SPEC GAP (§6.3) for session_s.
        self.ticket = dict(self.ticket, id=self.keys["resumption_id"], RS=self.keys["resumption"])
        self.session = peripheral_session(self.keys, self.ticket["scope"])
        return bytes([VERSION, FINISH]) + finish_tag(self.keys["k_p2g"], th2)


class Gateway:
    """§5.2, §5.6 (G side), §6.2/§6.3 (G side). One instance = one link."""

    def __init__(self, seed, now_ms, tickets=None):
        self.seed, self.key = seed, ed25519_public(seed)
        self.now = now_ms
        self.tickets = tickets if tickets is not None else {}
        self.state, self.failed = "ExpectFirst", None

    def _guard(self, state, fn, *args):
        """§5.8: right state, and errors are sticky."""
        if self.failed:
            raise Reject(self.failed.code, f"§5.8 sticky: {self.failed}")
        if self.state != state:
            raise Reject("state", f"§5.8 in {self.state}, not {state}")
        try:
            return fn(*args)
        except Reject as e:
            self.failed = e
            raise

    def on_first(self, msg):
        """§5.2 / §6.2: decode the first message (§4.1) before anything else."""
        return self._guard("ExpectFirst", self._on_first, msg)

    def _on_first(self, msg):
        mtype, r = open_envelope(msg, {HELLO, RESUME_HELLO})
        if mtype == HELLO:
            decode_hello(r)
            self.hello_msg, self.state = msg, "ExpectVouch"
        else:
            self.resume_fields = (r.take(16), r.take(32), r.take(16))
            r.end()
            self.resume_msg, self.state = msg, "ExpectTicket"
        return mtype

    def response(self, e_g, backend):
        """§5.2 VouchRequest to the backend, then §5.6 (G side)."""
        return self._guard("ExpectVouch", self._response, e_g, backend)

    def _response(self, e_g, backend):
        e_G = x25519_public(e_g)
        v, id_p = backend.vouch(self.key, self.hello_msg, e_G)
        # SPEC GAP (§5.2/§5.6): only §11.3 (a test name) says the gateway
        # refuses a vouch for another gateway key; §5 never states the check.
        if v["gateway_key"] != self.key:
            raise Reject("vouch_gateway", "vouch names another gateway")
        e_P = self.hello_msg[4:36]
        ss = x25519(e_g, e_P)
        th1 = H(self.hello_msg)
        body = encode_vouch_body(v)
        k_resp = hkdf(H(th1 + e_G), ss, L_RESPONSE)
        resp = bytes([VERSION, RESPONSE]) + e_G + varint(len(body)) + chacha20(k_resp, body)
        th2 = H(self.hello_msg + resp)
        self.keys = schedule(hkdf_extract(th2, ss))
        self.th2, self.vouch, self.id_p = th2, v, id_p
        self.state = "ExpectFinish"
        return resp

    def on_finish(self, msg):
        """§5.6 last paragraph / §6.3: check the Finish tag."""
        return self._guard("ExpectFinish", self._on_finish, msg)

    def _on_finish(self, msg):
        check_finish(msg, self.keys["k_p2g"], self.th2)
        if getattr(self, "resumed_from", None) is not None:
            # §6.1: delete the used ticket, store the next one, same expires_at
            old = self.tickets.pop(self.resumed_from)
            self.tickets[self.keys["resumption_id"]] = dict(old, RS=self.keys["resumption"])
            scope = old["scope"]
        else:
            v = self.vouch
            self.tickets[self.keys["resumption_id"]] = {
                "RS": self.keys["resumption"],
                "id_p": self.id_p,
                "scope": v["scope"],
                "session_s": v["session_s"],
                # §6.1: clock + resumption_s (Timestamp is in ms, §1.3)
                "expires_at": self.now + 1000 * v["resumption_s"],
            }
            scope = v["scope"]
        self.session = gateway_session(self.keys, scope)
        self.state = "Established"

    def resume_response(self, e_g2):
        """§6.2 checks (in order, before any DH), then §6.3 (G side)."""
        return self._guard("ExpectTicket", self._resume_response, e_g2)

    def _resume_response(self, e_g2):
        ticket_id, e_P2, binder = self.resume_fields
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            raise Reject("ticket_unknown", "§6.2 no such ticket")
        if self.now >= ticket["expires_at"]:
            raise Reject("ticket_expired", "§6.2 ticket expired")
        expected = hmac16(ratchet(ticket["RS"], L_BINDER), self.resume_msg[:51])
        if not hmac.compare_digest(binder, expected):
            raise Reject("binder", "§6.2 binder does not verify")
        e_G2 = x25519_public(e_g2)
        ss = x25519(e_g2, e_P2)
        th_r = H(self.resume_msg + e_G2)
        confirm = hmac16(hkdf(th_r, ticket["RS"] + ss, L_RESUME_CONFIRM), th_r)
        resp = bytes([VERSION, RESUME_RESPONSE]) + e_G2 + confirm
        self.th2 = H(self.resume_msg + resp)
        self.keys = schedule(hkdf_extract(self.th2, ticket["RS"] + ss))
        self.resumed_from, self.state = ticket_id, "ExpectFinish"
        return resp


# ---------------------------------------------------------------------------
# §7.7 Trust-anchor updates
# ---------------------------------------------------------------------------


def encode_anchor(anchor):
    """§2.3 / §7.7 anchor = kid (1) || signing (32) || sealing (32)."""
    kid, signing, sealing = anchor
    return bytes([kid]) + signing + sealing


def anchor_digest(anchor):
    """§2.3 the commitment to an anchor:
    H("vouch/1 anchor commitment" || kid || signing || sealing)."""
    return H(L_ANCHOR_COMMITMENT + encode_anchor(anchor))


def encode_anchor_action(action):
    """§7.7 action = varint(0) || anchor   Add      (reserved)
                   | varint(1) || anchor   Replace  (reserved)
                   | varint(2) || kid      Retire   (reserved)
                   | varint(3) || anchor || next (32)   Rotate"""
    kind, arg = action
    if kind == RETIRE:
        return varint(kind) + bytes([arg])
    if kind == ROTATE:
        anchor, next_digest = arg
        return varint(kind) + encode_anchor(anchor) + next_digest
    return varint(kind) + encode_anchor(arg)


def anchor_update_statement(serial, action):
    """§7.7 what the signature covers."""
    return L_ANCHOR_UPDATE + varint(serial) + encode_anchor_action(action)


def sign_anchor_update(serial, action, signer, seed):
    """§7.7 AnchorUpdate = varint(serial) || action || signer (1) || signature (64)."""
    signature = ed25519_sign(seed, anchor_update_statement(serial, action))
    return varint(serial) + encode_anchor_action(action) + bytes([signer]) + signature


def decode_anchor_update(data):
    """§7.7; every action decodes, the reserved ones are refused by apply."""
    r = Reader(data)
    serial = r.varint(32)
    kind = r.varint(32)
    if kind in (ADD, REPLACE):
        action = (kind, (r.u8(), r.take(32), r.take(32)))
    elif kind == RETIRE:
        action = (kind, r.u8())
    elif kind == ROTATE:
        action = (kind, ((r.u8(), r.take(32), r.take(32)), r.take(32)))
    else:
        raise Reject("action", "§7.7 unknown anchor action")
    signer, signature = r.u8(), r.take(64)
    r.end()
    return serial, action, signer, signature


class AnchorSet:
    """§2.3 what a peripheral trusts: its one anchor (kid, signing, sealing),
    the commitment `next` to its successor, and the serial of the last update
    it applied."""

    def __init__(self, anchor, next_digest, serial=0):
        self.anchor, self.next, self.serial = anchor, next_digest, serial

    def copy(self):
        return AnchorSet(self.anchor, self.next, self.serial)

    def __eq__(self, other):
        return (self.anchor, self.next, self.serial) == (other.anchor, other.next, other.serial)

    def apply(self, data):
        """§7.7 Applying, in this order: serial (no cryptography), action,
        signer and commitment, then the new key's signature. On any failure
        nothing changes; on success the old anchor is gone."""
        serial, action, signer, signature = decode_anchor_update(data)
        if serial <= self.serial:
            raise Reject("stale", "§7.7 serial not above the last one applied")
        kind, arg = action
        if kind != ROTATE:
            raise Reject("reserved", f"§7.7 action {kind} is reserved")
        anchor, next_digest = arg
        if signer != anchor[0]:
            raise Reject("signer", "§7.7 the signer is not the new anchor")
        if anchor_digest(anchor) != self.next:
            raise Reject("uncommitted", "§7.7 the new anchor is not the committed one")
        ed25519_verify_strict(anchor[1], anchor_update_statement(serial, action), signature)
        self.anchor, self.next, self.serial = anchor, next_digest, serial


# ---------------------------------------------------------------------------
# The check runner
# ---------------------------------------------------------------------------


class Results:
    def __init__(self):
        self.passed = self.failed = 0

    def ok(self, name, note=""):
        self.passed += 1
        print(f"ok {name}" + (f" ({note})" if note else ""))

    def fail(self, name, expected, got):
        self.failed += 1
        print(f"FAIL {name}: expected {expected} got {got}")

    def equal(self, name, expected_hex, got):
        got_hex = got.hex() if isinstance(got, (bytes, bytearray)) else str(got)
        if got_hex == str(expected_hex):
            self.ok(name)
        else:
            self.fail(name, expected_hex, got_hex)

    def true(self, name, cond, expected, got):
        if cond:
            self.ok(name)
        else:
            self.fail(name, expected, got)


def unhex(s):
    return bytes.fromhex(s)


class World:
    """Everything built from `inputs` (§12): the parties and the full run."""

    def __init__(self, inputs):
        i = inputs
        self.kid = i["backend_key_id"]
        self.b_sig_seed = unhex(i["backend_signing_seed"])
        self.b_x = unhex(i["backend_sealing_secret"])
        self.g_seed = unhex(i["gateway_seed"])
        self.p_seed = unhex(i["peripheral_seed"])
        self.e_p, self.e_g = unhex(i["e_p_secret"]), unhex(i["e_g_secret"])
        self.e_p2, self.e_g2 = unhex(i["resume_e_p_secret"]), unhex(i["resume_e_g_secret"])
        self.lifetimes = (i["scope"], i["session_lifetime_s"], i["resumption_lifetime_s"])
        self.p2g_plain = unhex(i["record_p2g_plaintext"])
        self.g2p_plain = unhex(i["record_g2p_plaintext"])
        self.now = 1000  # §12: all parties run at Timestamp(1000)

        self.B_sig = ed25519_public(self.b_sig_seed)
        self.B_x = x25519_public(self.b_x)
        self.G = ed25519_public(self.g_seed)
        self.P_pub = ed25519_public(self.p_seed)
        self.id_p = peripheral_id(self.P_pub)

        # §12 the backend's next two key pairs: key 1 commits to key 2, key 2
        # to key 3 (§2.3)
        self.anchor1 = (self.kid, self.B_sig, self.B_x)
        self.seed2 = unhex(i["anchor_signing_seed"])
        self.anchor2 = (i["anchor_key_id"], ed25519_public(self.seed2),
                        x25519_public(unhex(i["anchor_sealing_secret"])))
        self.seed3 = unhex(i["third_signing_seed"])
        self.anchor3 = (i["third_key_id"], ed25519_public(self.seed3),
                        x25519_public(unhex(i["third_sealing_secret"])))

    def backend(self):
        return Backend(
            self.kid,
            self.b_sig_seed,
            self.b_x,
            registry={self.id_p: self.P_pub},
            enrolled_gateways={self.G},
            policy={(self.id_p, self.G): self.lifetimes},
        )

    def peripheral(self):
        return Peripheral(self.p_seed, self.id_p, self.anchor_set())

    def anchor_set(self):
        """§2.3 the vector peripheral's anchors as provisioned: key 1, the
        commitment to key 2, serial 0."""
        return AnchorSet(self.anchor1, anchor_digest(self.anchor2), 0)

    def rotation(self):
        """§7.7 / §12 serial 1: Rotate to key 2 (committed by key 1), with
        key 2's commitment to key 3, signed by key 2."""
        action = (ROTATE, (self.anchor2, anchor_digest(self.anchor3)))
        return sign_anchor_update(1, action, self.anchor2[0], self.seed2)

    # The honest runs, each returning fresh parties in a given state.

    def peripheral_expecting_response(self):
        p = self.peripheral()
        hello = p.hello(self.e_p)
        return p, hello

    def gateway_expecting_finish(self):
        p, hello = self.peripheral_expecting_response()
        g = Gateway(self.g_seed, self.now)
        g.on_first(hello)
        resp = g.response(self.e_g, self.backend())
        return p, g, hello, resp

    def established(self):
        p, g, hello, resp = self.gateway_expecting_finish()
        fin = p.on_response(resp)
        g.on_finish(fin)
        return p, g, fin

    def gateway_expecting_resume(self):
        """A fresh link at the gateway that holds the vector ticket (§6.1)."""
        p, g, _ = self.established()
        return p, Gateway(self.g_seed, self.now, tickets=g.tickets)


def check_positive(V, res):
    w = World(V["inputs"])
    d, F, R = V["derived"], V["full"], V["resumption"]

    res.true("version_and_suite", V.get("version") == VERSION and V.get("suite") == SUITE,
             "version 1 suite 1", f"version {V.get('version')} suite {V.get('suite')}")

    # §2 identities and keys
    res.equal("derived.backend_signing_public", d["backend_signing_public"], w.B_sig)
    res.equal("derived.backend_sealing_public", d["backend_sealing_public"], w.B_x)
    res.equal("derived.gateway_public", d["gateway_public"], w.G)
    res.equal("derived.peripheral_public", d["peripheral_public"], w.P_pub)
    res.equal("derived.peripheral_id", d["peripheral_id"], w.id_p)

    # §5.1 Hello
    p = w.peripheral()
    hello = p.hello(w.e_p)
    res.equal("full.hello", F["hello"], hello)

    # §5.2 the gateway decodes it and asks the backend; §5.3 the backend
    # opens it, verifies sig_P and signs the vouch (§5.4); §5.6 the gateway
    # builds the Response
    g = Gateway(w.g_seed, w.now)
    res.equal("full.hello.gateway_decodes", HELLO, g.on_first(hello))
    resp = g.response(w.e_g, w.backend())
    res.equal("full.backend.opened_id", d["peripheral_id"], g.id_p)
    res.equal("full.response", F["response"], resp)
    res.true("full.response.body_is_103_bytes", resp[34] == 103 and len(resp) == 138,
             "len byte 103, 138 bytes", f"len byte {resp[34]}, {len(resp)} bytes")

    # §5.6 P checks the vouch, derives keys, sends Finish
    fin = p.on_response(resp)
    res.equal("full.finish", F["finish"], fin)
    for name in ("key_p2g", "key_g2p"):
        res.equal(f"full.{name}", F[name], p.keys["k_" + name[4:]])
    res.equal("full.resumption_id", F["resumption_id"], p.keys["resumption_id"])
    res.equal("full.session_id", F["session_id"], p.keys["session_id"])
    res.true("full.gateway_keys_match_peripheral", g.keys == p.keys, "equal key schedules", "different")
    res.true("full.peripheral_learns_G_and_scope", p.vouch == g.vouch and p.vouch["gateway_key"] == w.G
             and (p.vouch["scope"], p.vouch["session_s"], p.vouch["resumption_s"]) == w.lifetimes,
             "the backend's vouch for G", p.vouch)

    # G checks the Finish
    try:
        g.on_finish(fin)
        res.ok("full.finish.gateway_accepts")
    except Reject as e:
        res.fail("full.finish.gateway_accepts", "acceptance", e)

    # §7.2 records: P's first (counter 1), G's first (counter 0), content type 0
    rec_p2g = p.session.seal(CT_APPLICATION, w.p2g_plain)
    res.equal("full.record_p2g_counter_1", F["record_p2g_counter_1"], rec_p2g)
    rec_g2p = g.session.seal(CT_APPLICATION, w.g2p_plain)
    res.equal("full.record_g2p_counter_0", F["record_g2p_counter_0"], rec_g2p)
    opened = g.session.open(unhex(F["record_p2g_counter_1"]))
    res.true("full.record_p2g.gateway_opens", opened == (CT_APPLICATION, w.p2g_plain),
             (CT_APPLICATION, w.p2g_plain.hex()), (opened[0], opened[1].hex()))
    opened = p.session.open(unhex(F["record_g2p_counter_0"]))
    res.true("full.record_g2p.peripheral_opens", opened == (CT_APPLICATION, w.g2p_plain),
             (CT_APPLICATION, w.g2p_plain.hex()), (opened[0], opened[1].hex()))

    # §6.2 / §6.3 resumption with the ticket of this handshake
    res.true("full.ticket_stored_by_gateway", p.keys["resumption_id"] in g.tickets,
             "ticket id " + F["resumption_id"], list(k.hex() for k in g.tickets))
    rh = p.resume_hello(w.e_p2)
    res.equal("resumption.resume_hello", R["resume_hello"], rh)
    gr = Gateway(w.g_seed, w.now, tickets=g.tickets)
    res.equal("resumption.gateway_decodes", RESUME_HELLO, gr.on_first(rh))
    rr = gr.resume_response(w.e_g2)
    res.equal("resumption.resume_response", R["resume_response"], rr)
    rfin = p.on_resume_response(rr)
    res.equal("resumption.finish", R["finish"], rfin)
    res.equal("resumption.key_p2g", R["key_p2g"], p.keys["k_p2g"])
    res.equal("resumption.key_g2p", R["key_g2p"], p.keys["k_g2p"])
    res.equal("resumption.next_resumption_id", R["next_resumption_id"], p.keys["resumption_id"])
    try:
        gr.on_finish(rfin)
        ok = gr.keys == p.keys and unhex(F["resumption_id"]) not in gr.tickets \
            and unhex(R["next_resumption_id"]) in gr.tickets
        res.true("resumption.gateway_accepts_and_rotates_ticket", ok,
                 "keys equal, old ticket deleted, next stored", "mismatch")
    except Reject as e:
        res.fail("resumption.gateway_accepts_and_rotates_ticket", "acceptance", e)


def check_anchor_updates(V, res):
    """§7.7: the rotation of the vectors (serial 1 moves from key 1 to key 2,
    which key 1 committed to, carries key 2's commitment to key 3 and is
    signed by key 2), the record carrying it (§7.3 content type 2, the
    gateway's record after the vector's first), and §6.1: the ticket of the
    full handshake, granted under key 1, does not resume after it."""
    w, d, A = World(V["inputs"]), V["derived"], V["anchor_update"]
    res.equal("derived.anchor_signing_public", d["anchor_signing_public"], w.anchor2[1])
    res.equal("derived.anchor_sealing_public", d["anchor_sealing_public"], w.anchor2[2])
    res.equal("derived.anchor_commitment_1", d["anchor_commitment_1"], anchor_digest(w.anchor2))
    res.equal("derived.anchor_commitment_2", d["anchor_commitment_2"], anchor_digest(w.anchor3))
    rotate = w.rotation()
    res.equal("anchor_update.rotate", A["rotate"], rotate)
    res.true("anchor_update.rotate_fits_the_largest_update", len(rotate) <= 168,
             "at most 168 bytes (§7.7)", len(rotate))

    p, g, _ = w.established()
    g.session.seal(CT_APPLICATION, w.g2p_plain)  # counter 0: full.record_g2p_counter_0
    record = g.session.seal(CT_ANCHOR_UPDATE, rotate)
    res.equal("anchor_update.record_g2p_counter_1", A["record_g2p_counter_1"], record)
    opened = p.session.open(unhex(A["record_g2p_counter_1"]))
    res.true("anchor_update.record.peripheral_opens", opened == (CT_ANCHOR_UPDATE, rotate),
             (CT_ANCHOR_UPDATE, rotate.hex()), (opened[0], opened[1].hex()))

    s = p.anchors
    try:
        s.apply(unhex(A["rotate"]))
        res.true("anchor_update.rotate_moves_to_key_2",
                 s.anchor == w.anchor2 and s.next == anchor_digest(w.anchor3) and s.serial == 1,
                 "key 2 alone, committing to key 3, serial 1",
                 (s.anchor[0], s.next.hex(), s.serial))
    except Reject as e:
        res.fail("anchor_update.rotate_moves_to_key_2", "the rotation applied", e)
        return
    try:
        p.resume_hello(w.e_p2)
        res.fail("anchor_update.ticket_of_key_1_does_not_resume", "refusal (§6.1)", "a ResumeHello")
    except Reject as e:
        res.true("anchor_update.ticket_of_key_1_does_not_resume", e.code == "ticket_anchor",
                 "refusal by ticket_anchor", e)


def check_hello_signature(V, res):
    """§3.4 and §12 `hello_signature`: the torsion point is of order 8; the
    vector Hello re-signed with R = [r]B + T (r the RFC 8032 nonce) is
    recomputed from the inputs, and the backend vouches for it, although the
    cofactorless rule (every other signature's) refuses it."""
    w, H_ = World(V["inputs"]), V["hello_signature"]
    t_bytes = unhex(H_["torsion_point"])
    t = _decode_point(t_bytes)
    res.true("hello_signature.torsion_point_has_order_8",
             t is not None and _is_small_order(t)
             and _scalar_mul(4, t) != (0, 1),
             "a canonical point of order 8", H_["torsion_point"])
    p = w.peripheral()
    hello = p.hello(w.e_p)
    prefix, id_p = hello[:36], w.id_p
    statement = L_HELLO_SIG + prefix + w.B_x + id_p
    # RFC 8032 §5.1.6 with R changed: r from the key's prefix, a the
    # clamped scalar
    h = hashlib.sha512(w.p_seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    r = int.from_bytes(hashlib.sha512(h[32:] + statement).digest(), "little") % _L
    r_bytes = _encode_point(_point_add(_scalar_mul(r, _BASE), t))
    k = int.from_bytes(hashlib.sha512(r_bytes + w.P_pub + statement).digest(), "little") % _L
    sig = r_bytes + ((r + k * a) % _L).to_bytes(32, "little")
    # §5.1 steps 4 to 6 with this signature (the same e_P, so the same k_seal)
    k_seal = hkdf(H(prefix + w.B_x), x25519(w.e_p, w.B_x), L_SEAL)
    torsioned = prefix + chacha20(k_seal, id_p + sig)
    res.equal("hello_signature.torsioned_r_hello", H_["torsioned_r_hello"], torsioned)
    try:
        _, opened = w.backend().vouch(w.G, unhex(H_["torsioned_r_hello"]), x25519_public(w.e_g))
        res.equal("hello_signature.torsioned_r_hello.vouched", w.id_p.hex(), opened)
    except Reject as e:
        res.fail("hello_signature.torsioned_r_hello.vouched", "a vouch", e)
    res.true("hello_signature.torsioned_r_hello.cofactorless_rule_refuses",
             refused(ed25519_verify_strict, w.P_pub, statement, sig),
             "refused by the cofactorless strict rule", "accepted")


# For each negative vector: the rejection codes that count as "rejected for
# the reason the vector is about" (any other rejection is reported as FAIL).
EXPECTED_REJECTION = {
    "hello_version_2": {"version"},
    "hello_suite_2": {"suite"},
    "hello_unknown_type": {"type"},
    "hello_truncated": {"truncated"},
    "hello_trailing_byte": {"trailing"},
    # byte 40 = id_P byte 4: the opened id is not registered (step 5), or
    # if it happened to be, the signature over it fails (step 6)
    "hello_sealed_identity_flipped": {"id_unknown", "signature"},
    "hello_signature_flipped": {"signature"},
    # R = the torsion point, S = k·a: the cofactored equation holds, only the
    # small-order check (§3.4 rule 3) refuses it
    "hello_small_order_r": {"small_order"},
    # another e_P: another ss_B and k_seal, the opened id is garbage
    "hello_ephemeral_flipped": {"dh_zero", "id_unknown", "signature"},
    "response_vouch_signature_flipped": {"signature"},
    "response_gateway_key_flipped": {"signature"},
    # another e_G: another k_resp, the body is garbage
    "response_ephemeral_flipped": {"body", "anchor_unknown", "signature"},
    "response_low_order_ephemeral": {"dh_zero"},
    "response_reflected_hello": {"unexpected_type"},
    "finish_tag_flipped": {"finish_tag"},
    "finish_truncated": {"truncated"},
    "record_replayed": {"replay"},
    "record_tag_flipped": {"aead"},
    "record_counter_changed": {"aead"},
    "resume_hello_binder_flipped": {"binder"},
    "resume_hello_unknown_ticket": {"ticket_unknown"},
    "anchor_update_replayed": {"stale"},
    "anchor_update_signature_flipped": {"signature"},
    # the serial is signed: another serial, another statement
    "anchor_update_serial_changed": {"signature"},
    # the signer field says key 1, the rotation introduces key 2
    "anchor_update_signer_not_the_new_key": {"signer"},
    # the committed key 2, but signed by key 1 (whoever stole key 1)
    "anchor_update_signed_by_current_key": {"signature"},
    # a rotation to key 3, signed by key 3: key 1 committed to key 2
    "anchor_update_uncommitted_key": {"uncommitted"},
    # the first design's actions, signed by the held key: refused whatever
    # the serial (the Replace's is the highest, u32::MAX)
    "anchor_update_replace_reserved": {"reserved"},
    "anchor_update_add_reserved": {"reserved"},
}


def refused(fn, *args):
    """True if fn(*args) raises Reject."""
    try:
        fn(*args)
        return False
    except Reject:
        return True


def party_in_state(w, V, state):
    """Set up the party named by `state` from the honest run. Returns
    (receive, after): receive(msg) feeds the vector; after() checks the
    party once it has rejected it and returns a problem or None."""
    F = V["full"]
    if state == "gateway_first":
        return Gateway(w.g_seed, w.now).on_first, None
    if state == "backend_open":
        # A fresh backend with an empty replay cache: had it already vouched
        # for the vector Hello, §5.3 step 3 would refuse the tampered copies
        # (same e_P) before any of the checks they are about.
        return (lambda msg: w.backend().vouch(w.G, msg, x25519_public(w.e_g))), None
    if state == "peripheral_response":
        p, _ = w.peripheral_expecting_response()
        # §5.8 errors are sticky: the genuine Response is now refused too
        return p.on_response, lambda: None if refused(p.on_response, unhex(F["response"])) \
            else "the genuine Response was accepted after the failure"
    if state == "gateway_finish":
        _, g, _, _ = w.gateway_expecting_finish()
        return g.on_finish, lambda: None if refused(g.on_finish, unhex(F["finish"])) \
            else "the genuine Finish was accepted after the failure"
    if state in ("gateway_session", "gateway_session_after_record"):
        _, g, _ = w.established()
        genuine = unhex(F["record_p2g_counter_1"])
        if state == "gateway_session_after_record":
            g.session.open(genuine)  # the first time it is accepted
            return g.session.open, None
        # §7.4 a bad record is discarded and the session continues
        return g.session.open, lambda: "the session did not continue" \
            if refused(g.session.open, genuine) else None
    if state == "gateway_resume":
        _, g = w.gateway_expecting_resume()
        return (lambda msg: (g.on_first(msg), g.resume_response(w.e_g2))), None
    if state in ("peripheral_anchors", "peripheral_anchors_after_rotate"):
        s = w.anchor_set()
        if state == "peripheral_anchors_after_rotate":
            s.apply(unhex(V["anchor_update"]["rotate"]))
        before = s.copy()
        # §7.7 a refused update changes nothing
        return s.apply, lambda: None if s == before else "the anchors changed"
    raise LookupError(f"no such state {state!r}")


def check_negative(V, res):
    w = World(V["inputs"])
    for vec in V["negative"]:
        name, state = f"negative.{vec['name']}", vec["state"]
        try:
            receive, after = party_in_state(w, V, state)
        except LookupError:
            res.fail(name, "a known state", state)
            continue
        except Exception as e:  # the honest run itself failed
            res.fail(name, f"a party in {state}", f"setup failure {e!r}")
            continue
        try:
            receive(unhex(vec["input"]))
            res.fail(name, f"rejection in {state}", "acceptance")
            continue
        except Reject as e:
            rejection = e
        except Exception as e:  # a crash is not a clean rejection
            res.fail(name, f"rejection in {state}", f"exception {e!r}")
            continue
        wanted = EXPECTED_REJECTION.get(vec["name"])
        if wanted is not None and rejection.code not in wanted:
            res.fail(name, f"rejection by {sorted(wanted)}", f"rejection by {rejection}")
            continue
        problem = after() if after else None
        if problem:
            res.fail(name, "correct state after the rejection", problem)
            continue
        res.ok(name, f"rejected in {state}: {rejection}")


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_VECTORS
    res = Results()
    try:
        V = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        res.fail("load_vectors", f"a JSON file at {path}", repr(e))
        print(f"{res.passed} passed, {res.failed} failed")
        return 1
    for part in (check_positive, check_anchor_updates, check_hello_signature, check_negative):
        try:
            part(V, res)
        except Exception as e:  # keep going; report the crash as a failure
            res.fail(part.__name__, "no exception", repr(e))
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
