-- Console sessions logged out before they expired. The session cookie is signed and holds
-- no server state, so a logout is written here, where every instance (and a restarted
-- daemon) reads it: each authenticated console request looks its session id up by the
-- primary key. A row is of no use once its session has expired (the cookie is refused for
-- that alone): logouts delete those, by expires_at.
CREATE TABLE console_sessions_revoked (
    sid        text        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_revoked_expires_at ON console_sessions_revoked (expires_at);
