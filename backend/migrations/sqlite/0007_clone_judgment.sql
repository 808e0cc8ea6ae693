-- Clone detection by evidence (issue 16, SPEC.md §10.5): sessions carry when
-- they started and when they last heard the peripheral, and two sessions on
-- different gateways are a clone only if both heard the device at once. A
-- finished session keeps its start and whether its attach was reported
-- (each pair is judged once, at the second of its two attaches). A pair that
-- cannot be judged yet waits in clone_suspicions for the detach of its
-- waiting session; clone_alerts keeps one alert per peripheral and pair of
-- gateways at a time. Keep in step with ../sqlite/ and ../postgres/.
ALTER TABLE session_detaches ADD COLUMN started_ms BIGINT;
ALTER TABLE session_detaches ADD COLUMN attach_seen INTEGER NOT NULL DEFAULT 0;
CREATE TABLE clone_suspicions (
    peripheral_id   TEXT NOT NULL,
    -- the session the pair waits for the detach of
    waiting_gateway TEXT NOT NULL,
    waiting_session TEXT NOT NULL,
    -- the other one ('' for a vouch: an instant, not a session)
    partner_gateway TEXT NOT NULL,
    partner_session TEXT NOT NULL,
    -- the later of the two starts: a clone if the device was heard after it
    since_ms        BIGINT NOT NULL,
    -- 1: the partner's last-heard must be after it too (starts too close
    -- to tell which came first)
    both_sides      INTEGER NOT NULL,
    expires_ms      BIGINT NOT NULL,
    PRIMARY KEY (peripheral_id, waiting_gateway, waiting_session, partner_gateway)
);
CREATE TABLE clone_alerts (
    peripheral_id TEXT NOT NULL,
    gateway_lo    TEXT NOT NULL,
    gateway_hi    TEXT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    PRIMARY KEY (peripheral_id, gateway_lo, gateway_hi)
);
