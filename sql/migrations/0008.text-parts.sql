-- chatsvc schema, version 8: a finished answer that is text alone keeps its text once.
--
-- Until now every finished answer stored its parts in `parts`, written with
-- `content`. For an answer that is nothing but text, the one part was that text
-- again: [{"type": "text", "text": <content>}]. Every byte of such an answer was
-- written three times (once as it streamed, twice at the end), and measured at
-- 50 concurrent answers the second copy's TOAST was a quarter of all WAL.
--
-- Now such an answer's `parts` is NULL: its parts are its content as one text
-- part, or none when the content is empty. message_parts(m) reads them so, and
-- so does chatsvc. Answers finished before this migration keep the parts they
-- have; both forms read the same.

-- The parts of a finished answer whose stored `parts` is NULL: its text, as one part.
CREATE FUNCTION chatsvc_text_parts(content text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN content = '' THEN '[]'::jsonb
                ELSE jsonb_build_array(jsonb_build_object('type', 'text', 'text', content)) END
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
        RETURN coalesce(m.parts, chatsvc_text_parts(m.content));
    ELSIF m.layout IS NULL THEN
        RETURN chatsvc_text_parts(message_text(m));
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
