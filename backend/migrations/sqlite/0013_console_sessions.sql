-- Web console sessions (issue 18). The cookie holds a random session id;
-- only its SHA-256 is kept, with the operator token the login presented: a
-- session lives only as long as that token and its operator (every request
-- checks both), and at most 8 hours. Each session has its own
-- CSRF token, which every state-changing form carries. Keep in step with
-- the other dialect.
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    token_id    TEXT NOT NULL REFERENCES operator_tokens (id),
    csrf        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_ms);

-- Searching peripherals by an attribute (the console's device search and
-- the admin API's `attribute=NAME=VALUE`) reads only the matching rows.
CREATE INDEX peripheral_attributes_name_value ON peripheral_attributes (name, value, peripheral_id);

-- The console's overview counts one action's entries in the last hour (or
-- day): by action, then time, it reads only those (by time alone it read
-- every entry of the hour, a million after a bulk import).
CREATE INDEX audit_log_action_at ON audit_log (action, at_ms);
