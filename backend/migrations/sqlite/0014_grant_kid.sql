-- Which backend key each device's vouches are signed with (issue 18: the
-- console's keys page says how many devices are on each anchor, so an
-- operator sees when no device needs an old key any more before purging
-- it). Written with each grant from now on; a grant written before has no
-- key id (the vouch's audit entry says it, in its detail). Keep in step
-- with the other dialect.
ALTER TABLE vouch_grants ADD COLUMN kid BIGINT;
CREATE INDEX vouch_grants_kid ON vouch_grants (kid, peripheral_id);
