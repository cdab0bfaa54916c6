-- chatsvc schema, version 7: metering an LLM call no longer writes its user's row.
--
-- The trigger of migration 0001 added every llm_calls row to its user's running
-- totals (users.prompt_tokens, completion_tokens) in the transaction that
-- inserted it. Those transactions are the checkpointers': one commits the ends
-- of many answers of many users at once, on every instance. Each held the row
-- lock of every user it metered until its commit, so the checkpointers of two
-- instances queued on each other's users (measured at 200 concurrent answers:
-- metering inserts waiting 0.4-2.0 s, checkpoints late, leases lapsing).
--
-- Now the trigger appends the call's tokens to usage_pending (an insert takes no
-- lock anyone else waits for), and chatsvc_count_usage(), called on every
-- process's reaper timer, moves what is pending into the users' totals in one
-- short transaction of its own. The exact usage of a user is their totals plus
-- their pending rows, read in one snapshot: the view user_usage. A call is
-- metered exactly once still: its pending row commits with it, and a roll-up
-- deletes the rows it adds, atomically.
CREATE TABLE usage_pending (
    user_id           uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL
);
CREATE INDEX usage_pending_user ON usage_pending (user_id);

CREATE OR REPLACE FUNCTION chatsvc_count_tokens() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id IS NOT NULL THEN
        INSERT INTO usage_pending (user_id, prompt_tokens, completion_tokens)
        VALUES (NEW.user_id, NEW.prompt_tokens, NEW.completion_tokens);
    END IF;
    RETURN NULL;
END
$$;

-- Adds the pending tokens to the users' totals; returns how many calls it moved.
-- One roll-up at a time (two deleting the same rows in different orders could
-- deadlock): another caller returns 0 at once. Its two-key advisory lock is of
-- class 'csvu', beside chatsvc's other classes ('csva', 'csvc', 'csvf').
CREATE FUNCTION chatsvc_count_usage() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1668511349, 0) THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM usage_pending RETURNING *
    ), sums AS (
        SELECT user_id, sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion,
               count(*) AS calls
        FROM gone GROUP BY user_id
    ), counted AS (
        UPDATE users u SET prompt_tokens = u.prompt_tokens + s.prompt,
                           completion_tokens = u.completion_tokens + s.completion
        FROM sums s WHERE u.id = s.user_id
        RETURNING s.calls
    )
    SELECT coalesce(sum(calls), 0) INTO moved FROM counted;
    RETURN moved;
END
$$;

-- Every user's tokens as of now: what limits are checked against.
CREATE VIEW user_usage AS
SELECT u.id AS user_id, u.name,
       u.prompt_tokens + coalesce(p.prompt_tokens, 0) AS prompt_tokens,
       u.completion_tokens + coalesce(p.completion_tokens, 0) AS completion_tokens,
       u.prompt_tokens + u.completion_tokens
           + coalesce(p.prompt_tokens + p.completion_tokens, 0) AS total_tokens,
       u.token_limit
FROM users u
LEFT JOIN LATERAL (
    SELECT sum(q.prompt_tokens)::bigint AS prompt_tokens,
           sum(q.completion_tokens)::bigint AS completion_tokens
    FROM usage_pending q WHERE q.user_id = u.id
) p ON true;
