-- Backend key rotation (SPEC.md §2.5, §7.7), PostgreSQL dialect. Keep in step with ../sqlite/.
-- The private halves of the keys live in the data directory (signing-N.pem,
-- sealing-N.pem); the database holds what every backend instance must agree
-- on: each key's public anchor and status, and the signed anchor updates in
-- the order they were issued. Both tables are written only under the global
-- writer lock (audit_head), with the audit entry of the change.

-- One row per key id the backend ever registered. Key ids are never reused.
CREATE TABLE backend_keys (
    kid             BIGINT PRIMARY KEY,  -- 0..255
    signing         TEXT NOT NULL,       -- Ed25519 public key, hex
    sealing         TEXT NOT NULL,       -- X25519 public key, hex
    created_ms      BIGINT NOT NULL,
    added_serial    BIGINT,              -- 0: provisioned before any update; n: added by update n; NULL: prepared, not announced
    retired_serial  BIGINT,              -- the update that retired it
    purged_ms       BIGINT               -- private key purged: no longer served
);

-- The signed anchor updates, exactly as gateways serve them. serial is the
-- update's own serial: 1, 2, 3, … in the order issued.
CREATE TABLE anchor_updates (
    serial  BIGINT PRIMARY KEY,
    at_ms   BIGINT NOT NULL,
    action  TEXT NOT NULL,    -- add | replace | retire
    kid     BIGINT NOT NULL,  -- the key id added, replaced to, or retired
    signer  BIGINT NOT NULL,  -- the key id that signed it
    body    TEXT NOT NULL     -- postcard(AnchorUpdate), hex
);
