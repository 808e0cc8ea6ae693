-- Clone detection by evidence (issue 16, SPEC.md §10.5): sessions carry when
-- they started and when they last heard the peripheral, and two sessions on
-- different gateways are a clone only if the earlier one heard the device
-- after the later one began. A finished session keeps its start and whether
-- its attach was reported (each pair of sessions is judged once, at the
-- second of their attaches); a pair whose earlier session is still open
-- waits in clone_suspicions until that session's detach. Keep in step with
-- ../sqlite/ and ../postgres/.
ALTER TABLE session_detaches ADD COLUMN started_ms BIGINT;
ALTER TABLE session_detaches ADD COLUMN attach_seen INTEGER NOT NULL DEFAULT 0;
CREATE TABLE clone_suspicions (
    peripheral_id   TEXT NOT NULL,
    -- the session that began while the other was open
    gateway_key     TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    since_ms        BIGINT NOT NULL,
    -- the earlier session, open when this was recorded
    earlier_gateway TEXT NOT NULL,
    earlier_session TEXT NOT NULL,
    expires_ms      BIGINT NOT NULL,
    PRIMARY KEY (peripheral_id, gateway_key, earlier_gateway, earlier_session)
);
CREATE INDEX clone_suspicions_earlier
    ON clone_suspicions (peripheral_id, earlier_gateway, earlier_session);
