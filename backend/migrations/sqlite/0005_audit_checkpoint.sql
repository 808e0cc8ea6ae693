-- Audit retention (issue 16, SPEC.md §11.12). Pruning deletes the oldest
-- entries of the hash chain; this row keeps the chain provable from there:
-- the sequence number and hash of the last pruned entry, signed with the
-- backend CA's Ed25519 key (store/audit.rs says what is signed and why that
-- key). One row at most (id = 1): a later prune replaces it. Keep in step
-- with ../sqlite/ and ../postgres/.
CREATE TABLE audit_checkpoint (
    id         INTEGER PRIMARY KEY,
    seq        BIGINT NOT NULL,   -- the last pruned entry
    hash       TEXT NOT NULL,     -- its hash (hex): the prev_hash of entry seq + 1
    at_ms      BIGINT NOT NULL,   -- its time
    made_ms    BIGINT NOT NULL,   -- when the checkpoint was made
    signature  TEXT NOT NULL      -- Ed25519 (hex) over the checkpoint message
);
