-- The attach check (SPEC.md §10.5) looks up the latest vouch for one
-- peripheral to one gateway. Without this index that lookup scans the
-- peripheral's whole audit history when the pair was never vouched.
-- Keep in step with ../sqlite/.
CREATE INDEX audit_log_vouches ON audit_log (peripheral_id, gateway_key, seq)
    WHERE action = 'vouch' AND outcome = 'vouched';
