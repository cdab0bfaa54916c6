-- chatsvc schema, version 3: a conversation is a tree of messages.
--
-- Every message follows its parent (NULL for a first message); messages with
-- the same parent are versions of one another (an edited question, a
-- regenerated answer). A branch is the path from a first message to a leaf, and
-- a conversation shows one branch at a time: the one ending at its
-- `current_leaf_id`. Old versions are never changed; a branch is a query.

ALTER TABLE messages ADD COLUMN parent_id uuid REFERENCES messages ON DELETE CASCADE;

-- Until now a conversation was one line: each message follows the one before it.
UPDATE messages m SET parent_id = p.previous
FROM (SELECT id, lag(id) OVER (PARTITION BY conversation_id ORDER BY seq) AS previous
      FROM messages) p
WHERE m.id = p.id AND p.previous IS NOT NULL;

-- Children of a message, oldest first (siblings, and the way down a branch);
-- first messages of a conversation likewise.
CREATE INDEX messages_children ON messages (parent_id, seq) WHERE parent_id IS NOT NULL;
CREATE INDEX messages_first ON messages (conversation_id, seq) WHERE parent_id IS NULL;

-- The last message of the branch the conversation shows. No foreign key: a
-- check would lock the message row. Changed only in a transaction that holds
-- the conversation row, so sends, edits, regenerations, continuations and
-- branch switches of one conversation happen one at a time.
ALTER TABLE conversations ADD COLUMN current_leaf_id uuid;

UPDATE conversations c SET current_leaf_id = (
    SELECT m.id FROM messages m WHERE m.conversation_id = c.id ORDER BY m.seq DESC LIMIT 1);

-- The branch that ends at a message: the message and its ancestors, each with
-- its distance from the end (0 for the message itself). Order by depth DESC for
-- the branch from its first message:
--   SELECT m.role, left(m.content, 60) FROM message_branch('…') b
--   JOIN messages m USING (id) ORDER BY b.depth DESC;
CREATE FUNCTION message_branch(leaf uuid) RETURNS TABLE (id uuid, depth integer)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE up(id, parent_id, depth) AS (
        SELECT m.id, m.parent_id, 0 FROM messages m WHERE m.id = leaf
        UNION ALL
        SELECT p.id, p.parent_id, up.depth + 1 FROM messages p JOIN up ON p.id = up.parent_id
    )
    SELECT up.id, up.depth FROM up
$$;

-- The messages of a conversation's current branch, in order, as psql shows them.
CREATE FUNCTION conversation_branch(conversation uuid) RETURNS SETOF messages
LANGUAGE sql STABLE AS $$
    SELECT m.* FROM message_branch(
        (SELECT c.current_leaf_id FROM conversations c WHERE c.id = conversation)) b
    JOIN messages m ON m.id = b.id
    ORDER BY b.depth DESC
$$;

-- A message and the other versions of it (the messages with the same parent),
-- oldest first.
CREATE FUNCTION message_sibling_ids(m messages) RETURNS uuid[]
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN m.parent_id IS NULL THEN
        ARRAY(SELECT s.id FROM messages s
              WHERE s.conversation_id = m.conversation_id AND s.parent_id IS NULL ORDER BY s.seq)
    ELSE
        ARRAY(SELECT s.id FROM messages s WHERE s.parent_id = m.parent_id ORDER BY s.seq)
    END
$$;
