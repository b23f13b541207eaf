-- A file's size in bytes (NULL: received before this migration): a cut-off ingest whose file
-- is gone from its place may have its content waiting elsewhere in the inbox (renamed, moved
-- to another target's folder); only the waiting files of its size are hashed to tell.
ALTER TABLE inbox_files ADD COLUMN size bigint;
-- The files whose ingest has begun and not ended: looked up at every file the inbox takes
-- (one cut off at that path whose content is no longer there) and every minute (one whose
-- file is gone), whatever the number of files ever received.
CREATE INDEX inbox_files_ingesting ON inbox_files (path) WHERE state = 'ingesting';
