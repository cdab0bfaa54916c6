-- chatsvc schema, version 6: a checkpoint writes one row for all of its answers.
--
-- A checkpoint used to append one message_chunks row per answer (and kind):
-- per answer and checkpoint, a heap tuple header and a primary-key entry, then
-- a delete when the answer ended, about 230 bytes of WAL around ~20 bytes of
-- text at a real model's pace. Now the checkpointer's transaction appends ONE
-- chunk_batches row holding the new text of every answer it commits, in
-- parallel arrays (entry i: message_ids[i], kinds[i], starts[i], epochs[i],
-- texts[i]); those costs are paid once per transaction, shared by its answers.
--
-- message_chunks stays, as a view with the columns it had (plus batch_id), so
-- what reads it (message_text, message_parts, psql) reads the same rows. An
-- answer's entries are all in batches at or after its `batches_from` (the next
-- batch id when it started streaming): readers restrict to those, so a read
-- scans the batches written while the answer streamed, not the whole table.
--
-- Batches are shared, so finishing or deleting an answer no longer deletes its
-- text: chatsvc_sweep_chunks() deletes the batches older than every streaming
-- answer's batches_from (each process's reaper calls it on its timer).
--
-- A streaming answer's committed lengths are read from its chunks too
-- (message_committed), not from messages.content_length and reasoning_length,
-- and so is the time of its last checkpoint (message_checkpointed_at): every
-- reader sees the length of exactly the text it reads, in one snapshot, and a
-- checkpoint of text alone does not write the row at all (the owner renews its
-- lease every lease/3; see chatsvc/engine/writes.py for how writes are fenced).
CREATE TABLE chunk_batches (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_ids uuid[] NOT NULL,
    kinds       text[] NOT NULL,   -- 'text' or 'reasoning'
    starts      integer[] NOT NULL, -- the offset of texts[i] in its message's kind
    epochs      integer[] NOT NULL, -- the epoch that wrote it (accounting after a crash)
    texts       text[] NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now()
) WITH (toast_tuple_target = 8160); -- up to a page of text stays in the row, uncompressed

-- The first batch id that can come: an answer that starts streaming now has
-- every one of its entries in batches from here on (they are written after it
-- commits, so their ids are drawn later).
CREATE FUNCTION chatsvc_batches_now() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(max(id), 0) + 1 FROM chunk_batches);
END
$$;

-- Added without a default, then given one: existing rows are not rewritten
-- (NULL reads as 0, the start); new rows, and a continued answer, set it.
ALTER TABLE messages ADD COLUMN batches_from bigint;
ALTER TABLE messages ALTER COLUMN batches_from SET DEFAULT chatsvc_batches_now();

-- Chunks still there (answers streaming across the upgrade): one batch each.
INSERT INTO chunk_batches (message_ids, kinds, starts, epochs, texts)
SELECT ARRAY[message_id], ARRAY[kind], ARRAY[start_offset], ARRAY[epoch], ARRAY[content]
FROM message_chunks ORDER BY message_id, kind, start_offset;

DROP TRIGGER messages_delete_chunks ON messages;
DROP FUNCTION chatsvc_delete_chunks();
DROP TABLE message_chunks;

CREATE VIEW message_chunks AS
SELECT e.message_id, e.start_offset, e.epoch, e.content, e.kind, b.id AS batch_id
FROM chunk_batches b,
     unnest(b.message_ids, b.kinds, b.starts, b.epochs, b.texts)
         AS e(message_id, kind, start_offset, epoch, content);

-- A single chunk can still be inserted into the view (one batch each): a
-- continued answer's old text goes back this way, and so do the checkpoints of
-- a process of an earlier version during a rolling upgrade. Deleting through
-- the view does nothing: the sweep deletes batches.
CREATE FUNCTION chatsvc_chunk_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chunk_batches (message_ids, kinds, starts, epochs, texts)
    VALUES (ARRAY[NEW.message_id], ARRAY[coalesce(NEW.kind, 'text')], ARRAY[NEW.start_offset],
            ARRAY[NEW.epoch], ARRAY[NEW.content]);
    RETURN NEW;
END
$$;
CREATE TRIGGER message_chunks_insert INSTEAD OF INSERT ON message_chunks
    FOR EACH ROW EXECUTE FUNCTION chatsvc_chunk_insert();

CREATE FUNCTION chatsvc_chunk_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END
$$;
CREATE TRIGGER message_chunks_delete INSTEAD OF DELETE ON message_chunks
    FOR EACH ROW EXECUTE FUNCTION chatsvc_chunk_delete();

-- Deletes the batches no streaming answer reads (none at all when none
-- streams); returns how many. A batch written after this statement's snapshot
-- is never deleted by it, so an answer that starts meanwhile loses nothing.
CREATE FUNCTION chatsvc_sweep_chunks() RETURNS bigint
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM chunk_batches
        WHERE id < coalesce(
            (SELECT min(coalesce(batches_from, 0)) FROM messages WHERE status = 'streaming'),
            (SELECT max(id) + 1 FROM chunk_batches))
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

-- The committed length, in code points, of a message's text ('text') or
-- reasoning ('reasoning'): the end of its last chunk while it streams, the
-- row's column once it ended.
CREATE FUNCTION message_committed(m messages, kind text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN m.status <> 'streaming' THEN
                CASE $2 WHEN 'text' THEN m.content_length ELSE m.reasoning_length END
           ELSE coalesce((SELECT max(c.start_offset + char_length(c.content))
                          FROM message_chunks c
                          WHERE c.batch_id >= coalesce(m.batches_from, 0)
                            AND c.message_id = m.id AND c.kind = $2), 0) END
$$;

-- When a message's text was last committed: its last batch while it streams
-- (a checkpoint of text alone does not write the row), the row's column once
-- it ended.
CREATE FUNCTION message_checkpointed_at(m messages) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN m.status <> 'streaming' THEN m.last_checkpoint_at
           ELSE greatest(m.last_checkpoint_at,
                         (SELECT max(b.written_at) FROM chunk_batches b
                          WHERE b.id >= coalesce(m.batches_from, 0)
                            AND m.id = ANY(b.message_ids))) END
$$;

CREATE OR REPLACE FUNCTION message_text(m messages) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN m.status = 'streaming' THEN
        coalesce((SELECT string_agg(c.content, '' ORDER BY c.start_offset)
                  FROM message_chunks c
                  WHERE c.batch_id >= coalesce(m.batches_from, 0)
                    AND c.message_id = m.id AND c.kind = 'text'), '')
    ELSE m.content END
$$;

CREATE OR REPLACE FUNCTION message_parts(m messages) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    result jsonb := '[]'::jsonb;
    entry  jsonb;
    nxt    jsonb;
    i      integer;
    n      integer;
    stop   integer;
    body   text;
    call   tool_calls;
BEGIN
    IF m.role <> 'assistant' THEN
        RETURN NULL;
    ELSIF m.status <> 'streaming' THEN
        RETURN coalesce(m.parts, '[]'::jsonb);
    ELSIF m.layout IS NULL THEN
        body := message_text(m);
        RETURN CASE WHEN body = '' THEN '[]'::jsonb
                    ELSE jsonb_build_array(jsonb_build_object('type', 'text', 'text', body)) END;
    END IF;
    n := jsonb_array_length(m.layout);
    FOR i IN 0 .. n - 1 LOOP
        entry := m.layout -> i;
        IF entry ->> 'type' = 'tool' THEN
            SELECT * INTO call FROM tool_calls t
            WHERE t.message_id = m.id AND t.tool_call_id = entry ->> 'tool_call_id';
            result := result || jsonb_build_array(chatsvc_tool_part(entry, call));
            CONTINUE;
        END IF;
        -- A text or reasoning part ends where the next part of its kind starts.
        stop := message_committed(m, entry ->> 'type');
        FOR nxt IN SELECT value FROM jsonb_array_elements(m.layout) WITH ORDINALITY AS e(value, k)
                   WHERE k - 1 > i AND value ->> 'type' = entry ->> 'type' ORDER BY k LIMIT 1 LOOP
            stop := (nxt ->> 'start')::integer;
        END LOOP;
        SELECT substr(string_agg(c.content, '' ORDER BY c.start_offset),
                      (entry ->> 'start')::integer - min(c.start_offset) + 1,
                      stop - (entry ->> 'start')::integer)
        INTO body
        FROM message_chunks c
        WHERE c.batch_id >= coalesce(m.batches_from, 0)
          AND c.message_id = m.id AND c.kind = entry ->> 'type'
          AND c.start_offset < stop
          AND c.start_offset + char_length(c.content) > (entry ->> 'start')::integer;
        IF coalesce(body, '') <> '' THEN
            result := result || jsonb_build_array(
                jsonb_build_object('type', entry ->> 'type', 'text', body));
        END IF;
    END LOOP;
    RETURN result;
END
$$;

CREATE OR REPLACE VIEW active_streams AS
SELECT m.id                            AS message_id,
       m.conversation_id,
       m.owner,
       m.epoch,
       m.created_at                    AS started_at,
       message_checkpointed_at(m)      AS last_checkpoint_at,
       m.lease_expires_at,
       message_text(m)                 AS content,
       message_committed(m, 'text')    AS content_length,
       now() - m.created_at            AS age,
       m.cancel_requested_at,
       m.resume_count,
       m.model,
       message_committed(m, 'reasoning') AS reasoning_length,
       message_parts(m)                AS parts
FROM messages m
WHERE m.status = 'streaming';

CREATE OR REPLACE VIEW conversation_status AS
SELECT c.id                  AS conversation_id,
       s.id IS NOT NULL      AS is_streaming,
       s.id                  AS active_message_id,
       CASE WHEN s.id IS NOT NULL THEN message_committed(s, 'text') END AS content_length,
       s.epoch,
       s.owner,
       s.lease_expires_at
FROM conversations c
LEFT JOIN messages s ON s.conversation_id = c.id AND s.status = 'streaming';
