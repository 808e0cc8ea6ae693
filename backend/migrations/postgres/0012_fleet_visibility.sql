-- Fleet visibility (issue 18): when each gateway last polled the revocation
-- feed (written by every instance about once a second for the gateways that
-- polled it, outside the audit chain: it is an observation, not a decision),
-- and the live sessions of a gateway, counted from its attachments. Keep in
-- step with the other dialect.
ALTER TABLE gateways ADD COLUMN last_poll_ms BIGINT;
CREATE INDEX attachments_gateway_live ON attachments (gateway_key, expires_ms);
