-- A file's path is bytes (Linux takes any in a name), and not always UTF-8: a Latin-1
-- client's é is b'\xe9', which no text column takes. The inbox reads these paths back (the
-- file a cut-off ingest was reading, where its results file goes beside it), so they are
-- stored as their bytes; names, for people, stay text (shown with such a byte as \xNN).
ALTER TABLE inbox_files ALTER COLUMN path TYPE bytea USING convert_to(path, 'UTF8'),
                        ALTER COLUMN filed_path TYPE bytea USING convert_to(filed_path, 'UTF8');
