-- chatsvc schema, version 1: users, projects, conversations and streaming answers, readable from psql.

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    is_admin    boolean NOT NULL DEFAULT false,
    token_limit bigint CHECK (token_limit >= 0),
    -- Running totals of llm_calls (kept by a trigger), so a send checks the limit
    -- in one row read however many calls the user has made.
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Tokens are random and long, so a plain SHA-256 is the right hash: it cannot be
-- brute-forced, and it lets a request find its token by index in one lookup.
CREATE TABLE api_tokens (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Browser sessions (POST /api/session): the cookie holds a random secret, the
-- table its hash. Revoking the token ends its sessions.
CREATE TABLE sessions (
    secret_hash bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    token_id    uuid NOT NULL REFERENCES api_tokens ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE TABLE projects (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    created_by uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE project_members (
    project_id uuid NOT NULL REFERENCES projects ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (user_id);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    project_id uuid REFERENCES projects ON DELETE CASCADE,
    title      text NOT NULL DEFAULT '' CHECK (char_length(title) <= 200),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX conversations_user_recent ON conversations (user_id, created_at DESC, id DESC);
CREATE INDEX conversations_project_recent ON conversations (project_id, created_at DESC, id DESC)
    WHERE project_id IS NOT NULL;

-- One row per message. An assistant answer is a row in status 'streaming' from
-- the moment it is requested; while it streams, its text lives in message_chunks
-- (append-only, so a checkpoint writes only the new text) and `content` is ''.
-- The transaction that ends it moves the text into `content` and sets the
-- terminal status, usage and error together.
CREATE TABLE messages (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id     uuid NOT NULL REFERENCES conversations ON DELETE CASCADE,
    seq                 bigint GENERATED ALWAYS AS IDENTITY,
    user_id             uuid REFERENCES users ON DELETE SET NULL,
    reply_to            uuid REFERENCES messages ON DELETE CASCADE,
    epoch               integer NOT NULL DEFAULT 0,
    resume_count        integer NOT NULL DEFAULT 0,
    -- The three columns every checkpoint changes sit side by side: Postgres logs
    -- an update as the bytes between the common prefix and suffix of the old and
    -- new row, so this keeps a checkpoint's WAL for the row to a few dozen bytes.
    content_length      integer NOT NULL DEFAULT 0,
    last_checkpoint_at  timestamptz,
    lease_expires_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at        timestamptz,
    cancel_requested_at timestamptz,
    role                text NOT NULL CHECK (role IN ('user', 'assistant')),
    status              text NOT NULL
                        CHECK (status IN ('streaming', 'completed', 'cancelled', 'failed', 'interrupted')),
    owner               text,
    model               text,
    client_message_id   text CHECK (char_length(client_message_id) BETWEEN 1 AND 200),
    usage               jsonb,
    error               text,
    content             text NOT NULL DEFAULT '',
    CONSTRAINT messages_terminal_has_completed_at CHECK ((status = 'streaming') = (completed_at IS NULL)),
    CONSTRAINT messages_only_answers_stream CHECK (role = 'assistant' OR status <> 'streaming')
) WITH (fillfactor = 80);  -- room for the HOT updates of each checkpoint

-- The database, not the service, guarantees one active answer per conversation.
CREATE UNIQUE INDEX messages_one_streaming_per_conversation
    ON messages (conversation_id) WHERE status = 'streaming';
CREATE UNIQUE INDEX messages_client_message_id
    ON messages (conversation_id, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE INDEX messages_conversation_order ON messages (conversation_id, seq);
CREATE INDEX messages_reply_to ON messages (reply_to) WHERE reply_to IS NOT NULL;

-- No foreign key: its check would lock the message row, a WAL record at every
-- checkpoint. Only streaming answers have chunks; the trigger below removes
-- them when such an answer is deleted (finishing removes them itself).
CREATE TABLE message_chunks (
    message_id   uuid NOT NULL,
    start_offset integer NOT NULL CHECK (start_offset >= 0),
    epoch        integer NOT NULL,  -- which owner wrote it (accounting after a crash)
    content      text NOT NULL,
    PRIMARY KEY (message_id, start_offset)
);

CREATE FUNCTION chatsvc_delete_chunks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM message_chunks WHERE message_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_delete_chunks
    AFTER DELETE ON messages
    FOR EACH ROW WHEN (OLD.status = 'streaming')
    EXECUTE FUNCTION chatsvc_delete_chunks();

-- Token accounting: one row per LLM call, written in the transaction that ends
-- (or hands over) that call, so a resumed answer counts each call exactly once.
CREATE TABLE llm_calls (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Deleting a conversation must not give its tokens back: keep the call.
    message_id        uuid REFERENCES messages ON DELETE SET NULL,
    user_id           uuid REFERENCES users ON DELETE CASCADE,
    epoch             integer NOT NULL,
    model             text NOT NULL,
    prompt_tokens     integer NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens integer NOT NULL CHECK (completion_tokens >= 0),
    estimated         boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_calls_user ON llm_calls (user_id);
CREATE INDEX llm_calls_message ON llm_calls (message_id);

CREATE FUNCTION chatsvc_count_tokens() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET prompt_tokens = prompt_tokens + NEW.prompt_tokens,
                     completion_tokens = completion_tokens + NEW.completion_tokens
    WHERE id = NEW.user_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER llm_calls_count_tokens
    AFTER INSERT ON llm_calls
    FOR EACH ROW EXECUTE FUNCTION chatsvc_count_tokens();

-- The text of a message as committed so far, whatever its status.
CREATE FUNCTION message_text(m messages) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN m.status = 'streaming' THEN
        coalesce((SELECT string_agg(c.content, '' ORDER BY c.start_offset)
                  FROM message_chunks c WHERE c.message_id = m.id), '')
    ELSE m.content END
$$;

CREATE VIEW active_streams AS
SELECT m.id                    AS message_id,
       m.conversation_id,
       m.owner,
       m.epoch,
       m.created_at            AS started_at,
       m.last_checkpoint_at,
       m.lease_expires_at,
       message_text(m)         AS content,
       m.content_length,
       now() - m.created_at    AS age,
       m.cancel_requested_at,
       m.resume_count,
       m.model
FROM messages m
WHERE m.status = 'streaming';

CREATE VIEW conversation_status AS
SELECT c.id                  AS conversation_id,
       s.id IS NOT NULL      AS is_streaming,
       s.id                  AS active_message_id,
       s.content_length,
       s.epoch,
       s.owner,
       s.lease_expires_at
FROM conversations c
LEFT JOIN messages s ON s.conversation_id = c.id AND s.status = 'streaming';

-- A cancel requested from psql (UPDATE messages SET cancel_requested_at = now() ...)
-- reaches the owning process through the same channel as everything else.
CREATE FUNCTION chatsvc_notify_cancel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chatsvc', json_build_array(
        json_build_array('c', NEW.conversation_id, NEW.id))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_cancel_requested
    AFTER UPDATE OF cancel_requested_at ON messages
    FOR EACH ROW
    WHEN (OLD.cancel_requested_at IS NULL AND NEW.cancel_requested_at IS NOT NULL
          AND NEW.status = 'streaming')
    EXECUTE FUNCTION chatsvc_notify_cancel();
