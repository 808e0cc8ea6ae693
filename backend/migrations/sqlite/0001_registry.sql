-- Vouch backend schema, SQLite dialect. Keep in step with ../postgres/.
-- Ids and keys are lowercase hex text; times are milliseconds since the Unix epoch.

CREATE TABLE peripherals (
    id          TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL,
    grp         TEXT,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
CREATE INDEX peripherals_grp ON peripherals (grp);
CREATE INDEX peripherals_status ON peripherals (status);

CREATE TABLE peripheral_attributes (
    peripheral_id TEXT NOT NULL REFERENCES peripherals (id),
    name          TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (peripheral_id, name)
);

CREATE TABLE gateways (
    public_key  TEXT PRIMARY KEY,
    name        TEXT,
    grp         TEXT,
    site        TEXT,
    status      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

CREATE TABLE policies (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    peripheral_kind   TEXT NOT NULL,
    peripheral_value  TEXT NOT NULL,
    gateway_kind      TEXT NOT NULL,
    gateway_value     TEXT NOT NULL,
    scope             BIGINT NOT NULL,
    session_s         BIGINT NOT NULL,
    resumption_s      BIGINT NOT NULL,
    created_ms        BIGINT NOT NULL,
    UNIQUE (peripheral_kind, peripheral_value, gateway_kind, gateway_value)
);

CREATE TABLE replay_cache (
    ephemeral TEXT PRIMARY KEY,
    seen_ms   BIGINT NOT NULL
);
CREATE INDEX replay_cache_seen ON replay_cache (seen_ms);

CREATE TABLE lockouts (
    subject   TEXT PRIMARY KEY,
    until_ms  BIGINT NOT NULL,
    reason    TEXT NOT NULL
);

CREATE TABLE attachments (
    peripheral_id TEXT NOT NULL,
    gateway_key   TEXT NOT NULL,
    attached_ms   BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    PRIMARY KEY (peripheral_id, gateway_key)
);

CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    subject  TEXT NOT NULL
);

CREATE TABLE audit_log (
    seq            BIGINT PRIMARY KEY,
    at_ms          BIGINT NOT NULL,
    action         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    reason         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    peripheral_id  TEXT,
    gateway_key    TEXT,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_log_peripheral ON audit_log (peripheral_id, seq);
CREATE INDEX audit_log_gateway ON audit_log (gateway_key, seq);
CREATE INDEX audit_log_at ON audit_log (at_ms);

-- One row: the chain head. Every write transaction updates it first, which
-- serializes writers (SQLite write lock, PostgreSQL row lock).
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY,
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
