-- Clone detection by session (issue 16, SPEC.md §10.5). Attach and detach
-- reports of one session can arrive in either order (two requests, retries),
-- so each session is its own row: a detach removes only its own session's
-- attachment, and leaves a marker so that an attach arriving after it does
-- not make the finished session live again. The old rows, keyed by
-- (peripheral, gateway) without a session, cannot be carried over; they
-- expire within attachment_ttl_s anyway. Keep in step with ../sqlite/ and
-- ../postgres/.
DROP TABLE attachments;
CREATE TABLE attachments (
    peripheral_id TEXT NOT NULL,
    gateway_key   TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    attached_ms   BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    PRIMARY KEY (peripheral_id, gateway_key, session_id)
);
CREATE TABLE session_detaches (
    peripheral_id TEXT NOT NULL,
    gateway_key   TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    detached_ms   BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    PRIMARY KEY (peripheral_id, gateway_key, session_id)
);
