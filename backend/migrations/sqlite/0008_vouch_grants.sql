-- What each vouch granted, as data (issue 17). An attach report counts only
-- from a gateway holding a live vouch for the peripheral (SPEC.md §10.5):
-- the latest vouch of the pair, within the longer of its two lifetimes.
-- Until now those lifetimes were read back from the text of the vouch's
-- audit entry; they are now written here, in the same transaction as that
-- entry (one row per pair: the latest grant, with its entry's sequence
-- number, which an audit prune deletes with the entry). The audit entry
-- keeps its text unchanged, so the hash chain keeps its shape.
--
-- Backfilled from the audit log here rather than by falling back to
-- parsing old entries at run time: one code path reads grants from then
-- on, and the old parser does not have to live until every vouch written
-- before this migration has expired. The backfill reads the latest vouch of
-- each pair exactly as the old lookup did; an entry whose text does not
-- have the shape the backend wrote (it never happens) is left out, and its
-- pair is unvouched, as the old lookup's parse failure made it.
-- Keep in step with ../postgres/.
CREATE TABLE vouch_grants (
    peripheral_id  TEXT NOT NULL,
    gateway_key    TEXT NOT NULL,
    audit_seq      BIGINT NOT NULL,
    at_ms          BIGINT NOT NULL,
    session_s      BIGINT NOT NULL,
    resumption_s   BIGINT NOT NULL,
    PRIMARY KEY (peripheral_id, gateway_key)
);
CREATE INDEX vouch_grants_seq ON vouch_grants (audit_seq);

INSERT INTO vouch_grants (peripheral_id, gateway_key, audit_seq, at_ms, session_s, resumption_s)
SELECT a.peripheral_id, a.gateway_key, a.seq, a.at_ms,
       CAST(substr(a.detail, instr(a.detail, ' session_s=') + 11,
                   instr(a.detail, ' resumption_s=') - instr(a.detail, ' session_s=') - 11)
            AS INTEGER),
       CAST(substr(a.detail, instr(a.detail, ' resumption_s=') + 14,
                   instr(a.detail, ' kid=') - instr(a.detail, ' resumption_s=') - 14)
            AS INTEGER)
FROM audit_log a
JOIN (SELECT peripheral_id, gateway_key, MAX(seq) AS seq FROM audit_log
      WHERE action = 'vouch' AND outcome = 'vouched'
        AND peripheral_id IS NOT NULL AND gateway_key IS NOT NULL
      GROUP BY peripheral_id, gateway_key) latest ON a.seq = latest.seq
WHERE a.detail GLOB 'scope=[0-9]* session_s=[0-9]* resumption_s=[0-9]* kid=[0-9]*'
  AND NOT a.detail GLOB '*[^a-z0-9_= ]*';

-- The index served only the lookup of the latest vouch, which reads
-- vouch_grants now.
DROP INDEX audit_log_vouches;
