-- Listing one group's or one status's peripherals a page at a time, in id
-- order after a cursor, reads only those rows when the id is in the index:
-- with the index on the group (or status) alone, the planner walks the
-- primary key and filters, which at a million rows means reading all of
-- them for a small group (benches/registry_million.rs).
DROP INDEX peripherals_grp;
DROP INDEX peripherals_status;
CREATE INDEX peripherals_grp_id ON peripherals (grp, id);
CREATE INDEX peripherals_status_id ON peripherals (status, id);
