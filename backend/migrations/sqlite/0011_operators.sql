-- Named operators with roles, and their API tokens (issue 18). Keep in step
-- with the other dialect.
--
-- An operator is never deleted, only marked removed: the audit log names
-- operators, and a name that came back for someone else would make an old
-- entry point at the wrong person. The table being empty means "never
-- bootstrapped": the first start turns the data directory's admin token
-- (the one `init` printed) into the first admin's token, once.
CREATE TABLE operators (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    removed_ms  BIGINT
);

-- A token is `vouch_<id>_<secret>`; the id is public (it names the token in
-- listings and the log), and only the SHA-256 of the whole token is kept.
-- The init token has the older form `vouch_<secret>` and the id `init`.
-- Revoked tokens stay, as the operators do, for the record.
CREATE TABLE operator_tokens (
    id           TEXT PRIMARY KEY,
    operator     TEXT NOT NULL REFERENCES operators (name),
    hash         TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    revoked_ms   BIGINT
);
CREATE INDEX operator_tokens_operator ON operator_tokens (operator);
