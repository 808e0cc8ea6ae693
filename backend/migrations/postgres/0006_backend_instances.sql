-- Rotation across several instances, made safe by the system (issue 16,
-- SPEC.md §7.7, §10.6). Keep in step with ../sqlite/ and ../postgres/.
-- (Numbered 0006: 0005 is the audit checkpoint of the same issue.)

-- One row per running backend instance, written by the instance itself every
-- second (its key-ring reload), not under the writer lock: which registered
-- key ids it serves (opens hellos sealed to them, vouches with them) and
-- which it holds (their private key is in its data directory, the committed
-- next key included). An instance counts as live until live_until_ms (its
-- last refresh plus its `keys.instance_ttl_s`). A Rotate to key N is handed
-- out to gateways only once every live instance serves N, and `keys rotate`
-- refuses while a live instance does not hold the committed key.
CREATE TABLE backend_instances (
    instance_id    TEXT PRIMARY KEY,  -- random, new at every start
    host           TEXT NOT NULL,     -- host name and data directory, for the operator
    started_ms     BIGINT NOT NULL,
    seen_ms        BIGINT NOT NULL,   -- its last refresh
    live_until_ms  BIGINT NOT NULL,   -- seen_ms + its instance_ttl_s
    serves         TEXT NOT NULL,     -- key ids, ascending, comma-separated
    holds          TEXT NOT NULL      -- key ids, ascending, comma-separated
);

-- When the revocation feed announced the update (event `anchor_updates`):
-- the first moment every live instance served the key it rotates to. The
-- updates issued before this migration were handed out already.
ALTER TABLE anchor_updates ADD COLUMN announced_ms BIGINT;
UPDATE anchor_updates SET announced_ms = at_ms;
