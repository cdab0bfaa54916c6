-- chatsvc schema, version 2: an answer is a list of parts (reasoning, text, tool
-- calls), and tool calls have a ledger that makes their effects happen once.

-- While an answer streams, reasoning is appended to message_chunks beside its
-- text, each in its own offset space (offsets count code points in the
-- concatenation of the parts of that kind).
ALTER TABLE message_chunks ADD COLUMN kind text NOT NULL DEFAULT 'text'
    CHECK (kind IN ('text', 'reasoning'));
ALTER TABLE message_chunks DROP CONSTRAINT message_chunks_pkey;
ALTER TABLE message_chunks ADD PRIMARY KEY (message_id, kind, start_offset);

-- `layout` is the order of an answer's parts while it streams: one object per
-- part, {"type": "reasoning"|"text", "step", "start"} with the part's first
-- offset in its kind, or {"type": "tool", "step", "tool_call_id", "name",
-- "input_text", "complete", "v"}. NULL means the answer is text alone (the hot
-- path of a plain answer never writes it). `tool_version` counts the changes of
-- its tool parts, the last component of a stream position. `parts` is the
-- finished answer's parts as the API returns them, written with its content.
ALTER TABLE messages
    ADD COLUMN reasoning_length integer NOT NULL DEFAULT 0,
    ADD COLUMN tool_version     integer NOT NULL DEFAULT 0,
    ADD COLUMN step             integer NOT NULL DEFAULT 0,
    ADD COLUMN layout           jsonb,
    ADD COLUMN parts            jsonb;

UPDATE messages SET parts = jsonb_build_array(jsonb_build_object('type', 'text', 'text', content))
WHERE role = 'assistant' AND status <> 'streaming' AND content <> '';
UPDATE messages SET parts = '[]'::jsonb
WHERE role = 'assistant' AND status <> 'streaming' AND content = '';

-- One llm_calls row per model call of an answer: `step` says which call (0 is
-- the first). A call that asked for tools is metered in the transaction that
-- records its calls; the last one with the answer's ending; a call its owner
-- died in is estimated by the process that takes the answer over (leases.py).
ALTER TABLE llm_calls ADD COLUMN step integer NOT NULL DEFAULT 0;

-- The tool-call ledger. A call is inserted `running`, in a committed
-- transaction, before its request is sent; its outcome is committed before the
-- model is called again. A process that takes the answer over never sends a
-- call whose outcome is committed, and sends a `running` one again (with the
-- same idempotency key) only if its tool is idempotent; otherwise it becomes
-- `unknown`.
CREATE TABLE tool_calls (
    message_id      uuid NOT NULL REFERENCES messages ON DELETE CASCADE,
    tool_call_id    text NOT NULL,                 -- as the model named it
    step            integer NOT NULL,              -- the model call that asked for it
    name            text NOT NULL,
    arguments       jsonb,                         -- NULL when they were not valid JSON
    status          text NOT NULL
                    CHECK (status IN ('running', 'succeeded', 'failed', 'unknown')),
    idempotency_key text NOT NULL UNIQUE,          -- the same for every attempt of this call
    output          jsonb,
    error           text,
    epoch           integer NOT NULL,              -- the owner's epoch that last sent it
    attempts        integer NOT NULL DEFAULT 0,    -- requests sent (0: refused before sending)
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    PRIMARY KEY (message_id, tool_call_id),
    CONSTRAINT tool_calls_finished CHECK ((status = 'running') = (finished_at IS NULL))
);

-- The text of a message as committed so far, whatever its status (its answer
-- text only: reasoning is never part of it).
CREATE OR REPLACE FUNCTION message_text(m messages) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN m.status = 'streaming' THEN
        coalesce((SELECT string_agg(c.content, '' ORDER BY c.start_offset)
                  FROM message_chunks c WHERE c.message_id = m.id AND c.kind = 'text'), '')
    ELSE m.content END
$$;

-- A tool part as the API shows it: its state comes from the ledger once the
-- call is recorded there, else from the layout (still streaming, or complete).
CREATE FUNCTION chatsvc_tool_part(entry jsonb, call tool_calls) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- Built key by key rather than stripped of nulls: a tool may return JSON null.
    SELECT jsonb_build_object(
        'type', 'tool',
        'tool_call_id', entry ->> 'tool_call_id',
        'name', entry ->> 'name',
        'input', coalesce(call.arguments, to_jsonb(coalesce(entry ->> 'input_text', ''))),
        'state', CASE
            WHEN call.status = 'succeeded' THEN 'output-available'
            WHEN call.status IN ('failed', 'unknown') THEN 'output-error'
            WHEN call.status = 'running' OR (entry ->> 'complete')::boolean THEN 'input-available'
            ELSE 'input-streaming' END)
        || CASE WHEN call.status = 'succeeded'
                THEN jsonb_build_object('output', coalesce(call.output, 'null'::jsonb))
                ELSE '{}'::jsonb END
        || CASE WHEN call.status IN ('failed', 'unknown')
                THEN jsonb_build_object('error', coalesce(call.error, ''))
                ELSE '{}'::jsonb END
$$;

-- The parts of an answer, in order, as committed so far: a finished answer's
-- stored parts, or a streaming answer's assembled from its layout, chunks and
-- ledger. NULL for a user message.
CREATE FUNCTION message_parts(m messages) RETURNS jsonb
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
        stop := CASE WHEN entry ->> 'type' = 'text' THEN m.content_length
                     ELSE m.reasoning_length END;
        FOR nxt IN SELECT value FROM jsonb_array_elements(m.layout) WITH ORDINALITY AS e(value, k)
                   WHERE k - 1 > i AND value ->> 'type' = entry ->> 'type' ORDER BY k LIMIT 1 LOOP
            stop := (nxt ->> 'start')::integer;
        END LOOP;
        SELECT substr(string_agg(c.content, '' ORDER BY c.start_offset),
                      (entry ->> 'start')::integer - min(c.start_offset) + 1,
                      stop - (entry ->> 'start')::integer)
        INTO body
        FROM message_chunks c
        WHERE c.message_id = m.id AND c.kind = entry ->> 'type'
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

-- active_streams gains the reasoning and the parts so far (new columns go last).
CREATE OR REPLACE VIEW active_streams AS
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
       m.model,
       m.reasoning_length,
       message_parts(m)        AS parts
FROM messages m
WHERE m.status = 'streaming';
