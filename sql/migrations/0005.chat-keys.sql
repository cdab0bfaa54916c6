-- chatsvc schema: the chat ids of the Vercel AI SDK transport (POST /api/chat).
-- A chat id that is not the UUID of a conversation the caller can see names a
-- private conversation of the caller's by this key; the first POST with the key
-- creates the conversation and this row, in one transaction. Keys belong to a
-- user, so two users' equal keys name two conversations. Deleting the
-- conversation frees its key: the next POST with it starts a new conversation.
CREATE TABLE chat_keys (
    user_id         uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    key             text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 200),
    conversation_id uuid NOT NULL UNIQUE REFERENCES conversations ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
