-- When each gateway's current client certificate expires (issue 19).
-- Gateway certificates are short-lived (`certificates.gateway_lifetime_days`,
-- 90 by default) and renewed by the gateway over its mutual-TLS channel
-- (`POST /v1/certificate`, SPEC.md §10.8); every issue, at enrollment or
-- renewal, writes the new certificate's notAfter here, so that the admin
-- API's and the CLI's gateway lists show which gateways are about to lose
-- their certificate. NULL: no certificate was issued since this migration
-- (gateways enrolled before it hold a 10-year certificate, not recorded).
-- Keep in step with ../postgres/.
ALTER TABLE gateways ADD COLUMN cert_not_after_ms BIGINT;
