-- chatsvc schema: disabling users, and the count of a user's streaming answers.

-- A disabled user's tokens and sessions stop working at once (`chatsvc users
-- disable`); the rows stay, so `chatsvc users enable` restores them.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;

-- A send counts the user's streaming answers (CHATSVC_MAX_ACTIVE_PER_USER) in
-- the transaction that adds one: an index scan of a handful of rows.
CREATE INDEX messages_streaming_by_user ON messages (user_id) WHERE status = 'streaming';
