-- The targets with a batch still receiving rows: a DNC addition holds each one's dedupe
-- lock, including a target a reload removed while one of its files was still ingesting.
CREATE INDEX batches_receiving ON batches (target) WHERE state = 'receiving';
