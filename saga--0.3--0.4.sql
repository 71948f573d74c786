/* saga--0.3--0.4.sql: bridges between orchestration and choreography, diagrams, topics */

\echo Use "ALTER EXTENSION saga UPDATE TO '0.4'" to load this file. \quit

/*
 * Bridges between orchestration and choreography.
 *
 * An await step waits as an outbox row on the internal topic 'saga await'
 * (not a valid topic name, so no service can claim it; visible_at is
 * infinity, so no poller sees it), with the event type it awaits in
 * awaits.  saga.publish finds the waiting steps of an awaited type and
 * correlation id through outbox_await; the index holds await rows only.
 */
ALTER TABLE saga.outbox ADD COLUMN awaits text;
CREATE INDEX outbox_await ON saga.outbox (awaits, (headers OPERATOR(pg_catalog.->>) 'correlation_id'))
    WHERE awaits IS NOT NULL;
COMMENT ON COLUMN saga.outbox.awaits IS
'an await step''s row (topic ''saga await'', never visible, never claimable): the event type it waits for; NULL for every other task';

-- the event that started a saga through a start_saga subscription: the cause of the events it publishes
ALTER TABLE saga.sagas ADD COLUMN event_id bigint;
COMMENT ON COLUMN saga.sagas.event_id IS
'the event whose start_saga subscription started the saga (NULL otherwise): the causation_id of the events the saga publishes, so their hops count on';

CREATE OR REPLACE VIEW saga.instances AS
SELECT s.id, s.name, s.version, s.status, s.correlation_id, s.input,
       s.started_at, s.finished_at, s.updated_at, s.idempotency_key,
       s.traceparent, s.cancel_reason, s.event_id
  FROM saga.sagas s;
COMMENT ON VIEW saga.instances IS 'one row per saga; event_id: the event that started it through a start_saga subscription';

COMMENT ON FUNCTION saga.define(text, jsonb) IS
'saga.define(name, definition) -> integer: validate and store a saga definition, returning its version (1, 2, ...; an identical document returns the current version and stores nothing). name matches ^[a-z][a-z0-9_]{0,62}$; definition is an object with "steps" (1 to 512), an optional "deadline" and an optional "publish" ({"completed", "compensated", "cancelled"}: the event type published when the saga ends so), at most saga.max_payload_size bytes; a step has a "topic", an "sql" function or an "await" event type, and may "publish" an event type when it succeeds (payload: its result); intervals are positive and at most 3650 days. SQL steps run as the calling role. Errors: 22004 null argument, 22001 name over 63 bytes, 42602 bad name, topic or event type, 22023 bad document (also "retry", "topic" or "sql" on an await step), 22008 interval out of range, 42710 duplicate step, 42704 unknown step in "after", 42P17 cycle, 42883 missing function, 42809 not a plain function, 42804 function not returning jsonb, 42P13 a function whose own search_path does not end in pg_temp, 42501 the caller lacks USAGE on its schema or EXECUTE, or the name''s latest version belongs to a role the caller is not a member of, 54000 too large, 0A000 "async", 42501 also a definition that publishes while the caller may not execute saga.publish. Granted to saga_admin.';

COMMENT ON FUNCTION saga.start(text, jsonb, text, text, text) IS
'saga.start(name, input jsonb, correlation_id, idempotency_key, traceparent) -> bigint: start a saga of the latest version of a definition and return its id; steps without predecessors are dispatched (SQL steps run, await steps find an event already published) in the caller''s transaction. correlation_id and idempotency_key are at most 255 bytes, traceparent is W3C (55 bytes), input at most saga.max_payload_size bytes. The same name and idempotency_key return the first saga. Errors: 22004 null name or input, or no correlation_id for a definition with await steps, 22001 argument too long, 22023 empty argument, bad traceparent, or an idempotency_key beginning with event: (reserved for start_saga), 42704 unknown definition, 54000 input too large. Granted to saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.subscribe(text, text, jsonb) IS
'saga.subscribe(event_type, topic, options jsonb) -> bigint: deliver every later event of event_type to topic (subscribing again updates options); returns the subscription id. options: retry (as for steps; default 3 attempts), filter (a jsonpath predicate on the payload, lax mode, at most 4096 bytes and saga.filter_timeout per event: false or null skip the delivery, an error skips it and is recorded in saga.filter_errors), replay_from (timestamptz: also deliver the retained events published since then), start_saga (a saga definition''s name: instead of a delivery, each event starts that saga in the publishing transaction, input the payload, correlation id and trace the event''s, idempotency key ''event:<event id>'', so a replayed event finds its saga rather than starting another; not with retry; one call starts and publishes at most 1000 sagas and events this way, 64 deep, else 54000). Errors: 22004 null argument, 22001 too long, 22023 bad event type or options, 42602 bad topic, 42601 a filter that does not parse, 42704 start_saga names no saga definition, 42809 start_saga names a choreography, 22008 interval out of range, 54000 filter too long or 1000 subscriptions of the type already, 42501 the subscription belongs to a role the caller is not a member of, or start_saga names a definition of such a role. Granted to saga_admin.';


/* Topics: the outbox's backlog per topic, for people and for monitoring */

/*
 * One row per topic with a task in the outbox or a dead letter.  A task is
 * in one of four states, by visible_at and lease_owner, as of now() (the
 * statement's transaction start, as the poll's "visible_at <= now()"):
 *   ready    visible_at <= now(): what a poll or saga.claim takes next;
 *            also a task whose lease lapsed unreported (the next claim
 *            counts that attempt) and one withdrawn in doubt (the next claim
 *            settles it)
 *   leased   lease_owner set and visible_at > now(): under a live lease
 *            (a lease moves visible_at to its end)
 *   parked   visible_at = 'infinity': a compensation that failed for good,
 *            waiting for saga.retry (it is in saga.incidents)
 *   delayed  the rest: visible_at in the future, not leased: a retry's
 *            backoff
 * The outbox keeps no record of a lease once it ended (nor does the
 * transactional poll leave one, and event deliveries have no history), so
 * last_claim is the start of the newest lease still on a task of the topic:
 * visible_at - lease_length, which a heartbeat without "extend" renews and a
 * step's timeout caps; never later than now().
 *
 * The engine's internal topics are not a service's and are left out: SQL
 * steps awaiting the worker's retry (saga sql, SAGA_SQL_RETRY_TOPIC) and
 * await steps waiting for their event (saga await, SAGA_AWAIT_TOPIC).
 *
 * Cost: the topics are found by skipping through the indexes on (topic,
 * ...) of the outbox and the dead letters, one probe per topic, and each
 * count is a range of outbox_claim (topic, visible_at, id), read
 * index-only where the visibility map allows; leases come from the partial
 * index outbox_leased.  No sort or hash over the whole outbox.  The planner
 * cannot know how few topics there are and prices the per-topic counts high
 * enough to JIT-compile them, which took longer (200 ms) than the query
 * (100 ms with a million tasks): the query is a function with jit off, and
 * the view reads it.
 */
CREATE FUNCTION saga.topic_backlog(OUT topic text, OUT ready bigint, OUT delayed bigint,
                                   OUT leased bigint, OUT parked bigint,
                                   OUT oldest_ready_age interval, OUT dead_letters bigint,
                                   OUT last_claim timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 20
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $topics$
    WITH RECURSIVE outbox_topics(topic) AS (
        SELECT pg_catalog.min(o.topic) FROM saga.outbox o
        UNION ALL
        SELECT (SELECT pg_catalog.min(o.topic) FROM saga.outbox o
                 WHERE o.topic OPERATOR(pg_catalog.>) t.topic)
          FROM outbox_topics t
         WHERE t.topic IS NOT NULL
    ), dead_topics(topic) AS (
        SELECT pg_catalog.min(d.topic) FROM saga.dead_letters d
        UNION ALL
        SELECT (SELECT pg_catalog.min(d.topic) FROM saga.dead_letters d
                 WHERE d.topic OPERATOR(pg_catalog.>) t.topic)
          FROM dead_topics t
         WHERE t.topic IS NOT NULL
    ), topics AS (
        SELECT topic FROM outbox_topics WHERE topic IS NOT NULL
        UNION
        SELECT topic FROM dead_topics WHERE topic IS NOT NULL
    ), leases AS (
        SELECT o.topic,
               pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) AS leased,
               pg_catalog.max(o.visible_at OPERATOR(pg_catalog.-) o.lease_length) AS last_claim
          FROM saga.outbox o
         WHERE o.lease_owner IS NOT NULL
         GROUP BY o.topic
    )
    SELECT t.topic,
           r.ready,
           l.later OPERATOR(pg_catalog.-) COALESCE(s.leased, 0) AS delayed,
           COALESCE(s.leased, 0) AS leased,
           l.parked,
           pg_catalog.now() OPERATOR(pg_catalog.-) r.oldest AS oldest_ready_age,
           d.dead_letters,
           -- LEAST would turn no lease into now()
           CASE WHEN s.last_claim OPERATOR(pg_catalog.>) pg_catalog.now() THEN pg_catalog.now()
                ELSE s.last_claim END AS last_claim
      FROM topics t
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS ready, pg_catalog.min(o.visible_at) AS oldest
             FROM saga.outbox o
            WHERE o.topic OPERATOR(pg_catalog.=) t.topic
              AND o.visible_at OPERATOR(pg_catalog.<=) pg_catalog.now()) r
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.<>) 'infinity') AS later,
                  pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.=) 'infinity') AS parked
             FROM saga.outbox o
            WHERE o.topic OPERATOR(pg_catalog.=) t.topic
              AND o.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) l
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS dead_letters
             FROM saga.dead_letters d
            WHERE d.topic OPERATOR(pg_catalog.=) t.topic) d
      LEFT JOIN leases s ON s.topic OPERATOR(pg_catalog.=) t.topic
     WHERE t.topic OPERATOR(pg_catalog.<>) 'saga sql' AND t.topic OPERATOR(pg_catalog.<>) 'saga await'
$topics$;

CREATE VIEW saga.topics AS
SELECT b.topic, b.ready, b.delayed, b.leased, b.parked, b.oldest_ready_age, b.dead_letters,
       b.last_claim
  FROM saga.topic_backlog() b;

/*
 * The function reads the outbox and the dead letters as its caller, which
 * saga_reader, saga_admin and saga_worker may; the view hides no rows from
 * anyone, so security_barrier would protect nothing.
 */
REVOKE ALL ON saga.topics FROM PUBLIC;
REVOKE ALL ON FUNCTION saga.topic_backlog() FROM PUBLIC;
GRANT SELECT ON saga.topics TO saga_reader, saga_admin, saga_worker;
GRANT EXECUTE ON FUNCTION saga.topic_backlog() TO saga_reader, saga_admin, saga_worker;

COMMENT ON VIEW saga.topics IS
'the backlog of every topic with a task in saga.outbox or a dead letter (the engine''s internal topics, of SQL steps awaiting a retry and of await steps, left out), as of now(): ready, delayed, leased and parked tasks, the age of the oldest ready one, dead letters, and the start of the newest lease';
COMMENT ON FUNCTION saga.topic_backlog() IS
'saga.topic_backlog() -> setof (topic, ready, delayed, leased, parked, oldest_ready_age, dead_letters, last_claim): what saga.topics shows, computed with jit off. Granted to saga_reader, saga_admin and saga_worker.';
COMMENT ON COLUMN saga.topics.topic IS 'the topic';
COMMENT ON COLUMN saga.topics.ready IS
'tasks visible now (visible_at <= now()): what a poll or saga.claim takes next, including tasks whose lease lapsed unreported';
COMMENT ON COLUMN saga.topics.delayed IS
'tasks visible later and not leased: waiting for a retry''s backoff';
COMMENT ON COLUMN saga.topics.leased IS
'tasks under a lease of saga.claim that has not expired';
COMMENT ON COLUMN saga.topics.parked IS
'compensations that failed for good, out of sight until saga.retry (see saga.incidents)';
COMMENT ON COLUMN saga.topics.oldest_ready_age IS
'now() minus the visible_at of the oldest ready task: how long it has waited; NULL when none is ready';
COMMENT ON COLUMN saga.topics.dead_letters IS
'rows of saga.dead_letters on the topic: event deliveries that failed for good';
COMMENT ON COLUMN saga.topics.last_claim IS
'when the newest lease still on a task of the topic began (or a heartbeat without extend renewed it), from visible_at - lease_length; NULL when no task of the topic is leased: ended leases and the transactional poll leave no record';

/* Diagrams ---------------------------------------------------------------- */

/*
 * Diagrams (0.4): saga.diagram, saga.flow_diagram and saga.timeline draw
 * what the tables hold, as Mermaid (flowchart, sequenceDiagram, gantt) or
 * Graphviz DOT text.  They are plain readers: SECURITY INVOKER, STABLE, and
 * see only what the caller may read.  A drawing is a graph of nodes and
 * edges (jsonb, built by diagram_saga_graph and diagram_choreography_graph)
 * rendered by diagram_render, so that both formats say the same.  Node ids
 * are generated (s0, e0, p0, ...); every user-supplied string goes through
 * diagram_escape, so that no name can end a label or start a statement.
 * Output is deterministic: every set is ordered, and only the timeline
 * prints times (its data).
 */

/*
 * One string made safe inside a quoted label.  Mermaid: the characters that
 * mean something to any of its grammars become numeric entity codes (#35;
 * for #, which goes first since every code starts with it), and a '-' or
 * '=' that could start an arrow too; other characters, Unicode included,
 * stay as they are.  DOT: backslash and double quote are escaped.  Control
 * characters and line separators become spaces in both.
 */
CREATE FUNCTION saga.diagram_escape(s text, format text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
SELECT COALESCE(pg_catalog.string_agg(
           CASE WHEN c.ch ~ '[[:cntrl:]]' OR c.ch IN (U&'\2028', U&'\2029', U&'\0085') THEN ' '
                WHEN format = 'dot' THEN
                     CASE c.ch WHEN '\' THEN '\\' WHEN '"' THEN '\"' ELSE c.ch END
                WHEN pg_catalog.strpos('#"&<>;%`|[]{}()\''=', c.ch) > 0
                  OR (format = 'gantt' AND c.ch IN (':', ','))
                  OR (c.ch = '-' AND pg_catalog.strpos('-.>=xo)', c.next) > 0)
                THEN '#' || pg_catalog.ascii(c.ch) || ';'
                ELSE c.ch END,
           '' ORDER BY c.n), '')
  FROM (SELECT r.ch, r.n, pg_catalog.lead(r.ch, 1, '') OVER (ORDER BY r.n) AS next
          FROM pg_catalog.regexp_split_to_table(s, '') WITH ORDINALITY AS r(ch, n)) c
$$;

/*
 * Render a graph: {"direction": "LR", "nodes": [{"id", "shape", "lines",
 * "classes"}], "edges": [{"from", "to", "label", "style", "color"}]}.
 * shape: step, sql, await, event, participant, start, end, deadline;
 * style: solid, dashed (compensations), thick (events of a saga);
 * color: fail.  Lines and labels are raw text, escaped here.
 */
CREATE FUNCTION saga.diagram_render(graph jsonb, format text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $render$
DECLARE
    -- class -> Mermaid classDef, DOT fill, DOT outline colour, DOT pen width
    styles CONSTANT jsonb := '{
        "participant":  ["fill:#e8eaf6,stroke:#283593", "#e8eaf6", "#283593", null],
        "event":        ["fill:#fff8e1,stroke:#f9a825", "#fff8e1", "#f9a825", null],
        "start_event":  ["fill:#c8e6c9,stroke:#2e7d32,stroke-width:2px", "#c8e6c9", "#2e7d32", "2"],
        "terminal":     ["fill:#b3e5fc,stroke:#0277bd,stroke-width:2px", "#b3e5fc", "#0277bd", "2"],
        "failure":      ["fill:#ffcdd2,stroke:#c62828", "#ffcdd2", "#c62828", null],
        "deadline":     ["fill:#ffe0b2,stroke:#e65100", "#ffe0b2", "#e65100", null],
        "compensation": ["fill:#d7ccc8,stroke:#4e342e", "#d7ccc8", "#4e342e", null],
        "pivot":        ["stroke:#6a1b9a,stroke-width:4px", null, "#6a1b9a", "3"],
        "pending":      ["fill:#eeeeee,stroke:#9e9e9e", "#eeeeee", "#9e9e9e", null],
        "ready":        ["fill:#e3f2fd,stroke:#1565c0", "#e3f2fd", "#1565c0", null],
        "running":      ["fill:#90caf9,stroke:#0d47a1", "#90caf9", "#0d47a1", null],
        "succeeded":    ["fill:#c8e6c9,stroke:#2e7d32", "#c8e6c9", "#2e7d32", null],
        "failed":       ["fill:#ef9a9a,stroke:#b71c1c", "#ef9a9a", "#b71c1c", null],
        "compensating": ["fill:#ffe0b2,stroke:#e65100", "#ffe0b2", "#e65100", null],
        "compensated":  ["fill:#d7ccc8,stroke:#4e342e", "#d7ccc8", "#4e342e", null],
        "skipped":      ["fill:#fafafa,stroke:#bdbdbd,stroke-dasharray:4 2", "#fafafa", "#bdbdbd", null]
    }';
    mermaid_shape CONSTANT jsonb := '{
        "step": ["[\"", "\"]"], "participant": ["[\"", "\"]"], "sql": ["[[\"", "\"]]"],
        "await": ["{{\"", "\"}}"], "event": ["([\"", "\"])"], "start": ["((\"", "\"))"],
        "end": ["(((\"", "\")))"], "deadline": [">\"", "\"]"]}';
    dot_shape CONSTANT jsonb := '{
        "step": "shape=box", "participant": "shape=box", "sql": "shape=component",
        "await": "shape=hexagon", "event": "shape=box, style=\"rounded,filled\"",
        "start": "shape=circle", "end": "shape=doublecircle", "deadline": "shape=cds"}';
    out text[] := '{}';
    n jsonb;
    e jsonb;
    cls text;
    label text;
    attrs text;
    fill text;
    pen text;
    colour text;
    i integer := 0;
    used text[] := '{}';
    fails text[] := '{}';
BEGIN
    IF format = 'mermaid' THEN
        out := out || ('flowchart ' || COALESCE(graph ->> 'direction', 'LR'));
        FOR n IN SELECT x FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') AS x LOOP
            SELECT pg_catalog.string_agg(saga.diagram_escape(l, 'mermaid'), '<br>' ORDER BY o)
              INTO label
              FROM pg_catalog.jsonb_array_elements_text(n -> 'lines') WITH ORDINALITY AS t(l, o);
            out := out || ('    ' || (n ->> 'id') || (mermaid_shape -> (n ->> 'shape') ->> 0)
                           || label || (mermaid_shape -> (n ->> 'shape') ->> 1));
        END LOOP;
        FOR e IN SELECT x FROM pg_catalog.jsonb_array_elements(graph -> 'edges') AS x LOOP
            out := out || ('    ' || (e ->> 'from')
                || CASE e ->> 'style' WHEN 'dashed' THEN ' -.->' WHEN 'thick' THEN ' ==>' ELSE ' -->' END
                || CASE WHEN e ? 'label'
                        THEN '|"' || saga.diagram_escape(e ->> 'label', 'mermaid') || '"|' ELSE '' END
                || ' ' || (e ->> 'to'));
            IF e ->> 'color' = 'fail' THEN
                fails := fails || i::text;
            END IF;
            i := i + 1;
        END LOOP;
        SELECT pg_catalog.array_agg(DISTINCT c ORDER BY c) INTO used
          FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') AS x,
               pg_catalog.jsonb_array_elements_text(x -> 'classes') AS c;
        FOREACH cls IN ARRAY COALESCE(used, '{}') LOOP
            out := out || ('    classDef ' || cls || ' ' || (styles -> cls ->> 0));
        END LOOP;
        FOR n IN SELECT x FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') AS x LOOP
            FOR cls IN SELECT c FROM pg_catalog.jsonb_array_elements_text(n -> 'classes') AS c LOOP
                out := out || ('    class ' || (n ->> 'id') || ' ' || cls);
            END LOOP;
        END LOOP;
        IF pg_catalog.cardinality(fails) > 0 THEN
            out := out || ('    linkStyle ' || pg_catalog.array_to_string(fails, ',')
                           || ' stroke:#c62828,color:#c62828');
        END IF;
    ELSE
        out := out || 'digraph saga {'::text || '    rankdir=LR;'::text
            || '    node [fontname="Helvetica", fontsize=11];'::text
            || '    edge [fontname="Helvetica", fontsize=9];'::text;
        FOR n IN SELECT x FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') AS x LOOP
            SELECT pg_catalog.string_agg(saga.diagram_escape(l, 'dot'), '\n' ORDER BY o)
              INTO label
              FROM pg_catalog.jsonb_array_elements_text(n -> 'lines') WITH ORDINALITY AS t(l, o);
            fill := NULL; pen := NULL; colour := NULL;
            -- the first class that says so wins (a state before pivot)
            FOR cls IN SELECT c FROM pg_catalog.jsonb_array_elements_text(n -> 'classes') AS c LOOP
                fill := COALESCE(fill, styles -> cls ->> 1);
                colour := COALESCE(colour, styles -> cls ->> 2);
                pen := COALESCE(pen, styles -> cls ->> 3);
            END LOOP;
            attrs := (dot_shape ->> (n ->> 'shape'));
            IF fill IS NOT NULL THEN
                IF n ->> 'shape' <> 'event' THEN
                    attrs := attrs || ', style=filled';
                END IF;
                attrs := attrs || ', fillcolor="' || fill || '"';
            END IF;
            IF colour IS NOT NULL THEN
                attrs := attrs || ', color="' || colour || '"';
            END IF;
            IF pen IS NOT NULL THEN
                attrs := attrs || ', penwidth=' || pen;
            END IF;
            out := out || ('    "' || (n ->> 'id') || '" [label="' || label || '", ' || attrs || '];');
        END LOOP;
        FOR e IN SELECT x FROM pg_catalog.jsonb_array_elements(graph -> 'edges') AS x LOOP
            attrs := pg_catalog.concat_ws(', ',
                CASE WHEN e ? 'label' THEN 'label="' || saga.diagram_escape(e ->> 'label', 'dot') || '"' END,
                CASE e ->> 'style' WHEN 'dashed' THEN 'style=dashed' WHEN 'thick' THEN 'penwidth=2' END,
                CASE WHEN e ->> 'color' = 'fail' THEN 'color="#c62828", fontcolor="#c62828"' END);
            out := out || ('    "' || (e ->> 'from') || '" -> "' || (e ->> 'to') || '"'
                           || CASE WHEN attrs <> '' THEN ' [' || attrs || ']' ELSE '' END || ';');
        END LOOP;
        out := out || '}'::text;
    END IF;
    RETURN pg_catalog.array_to_string(out, E'\n') || E'\n';
END
$render$;

/*
 * The graph of a saga definition document: a start node (title lines),
 * one node per step in document order (s0, s1, ...: topic, SQL and await
 * steps by shape), its "after" edges (the previous step by default),
 * compensations as dashed edges back to the steps it waited for (to the
 * start node from a first step), an end node after the last steps, the
 * events it publishes or awaits (e0, ...) and its deadline.  states, for
 * one saga, maps a step name to {"status", "attempts", "error"}.
 */
CREATE FUNCTION saga.diagram_saga_graph(definition jsonb, title text[], states jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $graph$
DECLARE
    steps jsonb := definition -> 'steps';
    nsteps integer := pg_catalog.jsonb_array_length(definition -> 'steps');
    idx jsonb := '{}';           -- step name -> index
    evs jsonb := '{}';           -- event type -> node id
    nodes jsonb := '[]';
    edges jsonb := '[]';
    events jsonb := '[]';
    preds jsonb;
    has_succ boolean[];
    st jsonb;
    comp jsonb;
    lines jsonb;
    classes jsonb;
    label text;
    p text;
    ev text;
    k text;
    i integer;
    terminal text;
BEGIN
    has_succ := pg_catalog.array_fill(false, ARRAY[nsteps]);
    FOR i IN 0 .. nsteps - 1 LOOP
        idx := idx || pg_catalog.jsonb_build_object(steps -> i ->> 'name', i);
    END LOOP;
    nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
        'id', 'b0', 'shape', 'start', 'lines', pg_catalog.to_jsonb(title), 'classes', '[]'::jsonb));

    FOR i IN 0 .. nsteps - 1 LOOP
        st := steps -> i;
        lines := pg_catalog.jsonb_build_array(st ->> 'name');
        IF st ? 'sql' THEN
            lines := lines || pg_catalog.to_jsonb('sql: ' || (st ->> 'sql')
                                   || CASE WHEN (st ->> 'async')::boolean THEN ' (async)' ELSE '' END);
        ELSIF st ? 'await' THEN
            lines := lines || pg_catalog.to_jsonb('await: ' || (st ->> 'await'));
        ELSE
            lines := lines || pg_catalog.to_jsonb('topic: ' || (st ->> 'topic'));
        END IF;
        IF st ? 'timeout' THEN
            lines := lines || pg_catalog.to_jsonb('timeout ' || (st ->> 'timeout'));
        END IF;
        IF st -> 'retry' ? 'max_attempts' THEN
            lines := lines || pg_catalog.to_jsonb('attempts ' || (st -> 'retry' ->> 'max_attempts'));
        END IF;
        classes := '[]';
        IF states ? (st ->> 'name') THEN
            lines := lines || pg_catalog.to_jsonb((states -> (st ->> 'name') ->> 'status')
                                 || CASE WHEN COALESCE((states -> (st ->> 'name') ->> 'attempts')::integer, 0) > 0
                                         THEN ', attempt ' || (states -> (st ->> 'name') ->> 'attempts') ELSE '' END);
            IF states -> (st ->> 'name') ->> 'error' IS NOT NULL THEN
                label := states -> (st ->> 'name') ->> 'error';
                lines := lines || pg_catalog.to_jsonb('error: ' || pg_catalog.left(label, 60)
                                     || CASE WHEN pg_catalog.length(label) > 60 THEN '...' ELSE '' END);
            END IF;
            classes := classes || pg_catalog.to_jsonb(states -> (st ->> 'name') ->> 'status');
        END IF;
        IF (st ->> 'pivot')::boolean THEN
            lines := lines || '"pivot"'::jsonb;
            classes := classes || '"pivot"'::jsonb;
        END IF;
        nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'id', 's' || i,
            'shape', CASE WHEN st ? 'sql' THEN 'sql' WHEN st ? 'await' THEN 'await' ELSE 'step' END,
            'lines', lines, 'classes', classes));
    END LOOP;

    -- forward edges, then compensations, then events (each in step order)
    FOR i IN 0 .. nsteps - 1 LOOP
        st := steps -> i;
        preds := CASE WHEN st ? 'after' THEN st -> 'after'
                      WHEN i > 0 THEN pg_catalog.jsonb_build_array(steps -> (i - 1) ->> 'name')
                      ELSE '[]' END;
        IF pg_catalog.jsonb_array_length(preds) = 0 THEN
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', 'b0', 'to', 's' || i));
        END IF;
        FOR p IN SELECT x FROM pg_catalog.jsonb_array_elements_text(preds) WITH ORDINALITY AS t(x, o) ORDER BY o LOOP
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', 's' || (idx ->> p), 'to', 's' || i));
            has_succ[(idx ->> p)::integer + 1] := true;
        END LOOP;
    END LOOP;
    nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
        'id', 'x0', 'shape', 'end', 'lines', '["completed"]'::jsonb, 'classes', '[]'::jsonb));
    FOR i IN 0 .. nsteps - 1 LOOP
        IF NOT has_succ[i + 1] THEN
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', 's' || i, 'to', 'x0'));
        END IF;
    END LOOP;

    FOR i IN 0 .. nsteps - 1 LOOP
        st := steps -> i;
        comp := st -> 'compensate';
        CONTINUE WHEN comp IS NULL;
        label := 'compensate: ' || CASE WHEN comp ? 'sql' THEN 'sql ' || (comp ->> 'sql')
                                        ELSE 'topic ' || (comp ->> 'topic') END;
        preds := CASE WHEN st ? 'after' THEN st -> 'after'
                      WHEN i > 0 THEN pg_catalog.jsonb_build_array(steps -> (i - 1) ->> 'name')
                      ELSE '[]' END;
        IF pg_catalog.jsonb_array_length(preds) = 0 THEN
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', 's' || i, 'to', 'b0', 'label', label, 'style', 'dashed'));
        END IF;
        FOR p IN SELECT x FROM pg_catalog.jsonb_array_elements_text(preds) WITH ORDINALITY AS t(x, o) ORDER BY o LOOP
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', 's' || i, 'to', 's' || (idx ->> p), 'label', label, 'style', 'dashed'));
        END LOOP;
    END LOOP;

    -- events: awaited and published by steps, then published at the end
    FOR i IN 0 .. nsteps - 1 LOOP
        st := steps -> i;
        FOREACH k IN ARRAY ARRAY['await', 'publish'] LOOP
            ev := st ->> k;
            CONTINUE WHEN ev IS NULL OR pg_catalog.jsonb_typeof(st -> k) <> 'string';
            IF NOT evs ? ev THEN
                evs := evs || pg_catalog.jsonb_build_object(ev, 'e' || pg_catalog.jsonb_array_length(events));
                events := events || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                    'id', evs ->> ev, 'shape', 'event', 'lines', pg_catalog.jsonb_build_array(ev),
                    'classes', '["event"]'::jsonb));
            END IF;
            edges := edges || pg_catalog.jsonb_build_array(CASE k
                WHEN 'await' THEN pg_catalog.jsonb_build_object(
                    'from', evs ->> ev, 'to', 's' || i, 'label', 'awaited', 'style', 'thick')
                ELSE pg_catalog.jsonb_build_object(
                    'from', 's' || i, 'to', evs ->> ev, 'label', 'publish', 'style', 'thick') END);
        END LOOP;
    END LOOP;
    IF pg_catalog.jsonb_typeof(definition -> 'publish') = 'object' THEN
        FOR k, terminal IN SELECT t.k, t.node
                             FROM (VALUES (1, 'completed', 'x0'), (2, 'compensated', 'x1'),
                                          (3, 'cancelled', 'x2')) AS t(o, k, node)
                            WHERE definition -> 'publish' ? t.k ORDER BY t.o LOOP
            ev := definition -> 'publish' ->> k;
            IF terminal <> 'x0' THEN
                nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                    'id', terminal, 'shape', 'end', 'lines', pg_catalog.jsonb_build_array(k),
                    'classes', '["compensation"]'::jsonb));
            END IF;
            IF NOT evs ? ev THEN
                evs := evs || pg_catalog.jsonb_build_object(ev, 'e' || pg_catalog.jsonb_array_length(events));
                events := events || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                    'id', evs ->> ev, 'shape', 'event', 'lines', pg_catalog.jsonb_build_array(ev),
                    'classes', '["event"]'::jsonb));
            END IF;
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', terminal, 'to', evs ->> ev, 'label', 'publish', 'style', 'thick'));
        END LOOP;
    END IF;
    nodes := nodes || events;
    IF definition ? 'deadline' THEN
        nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'id', 'd0', 'shape', 'deadline',
            'lines', pg_catalog.jsonb_build_array('deadline ' || (definition ->> 'deadline'),
                                                  'then compensate'),
            'classes', '["deadline"]'::jsonb));
        edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'from', 'b0', 'to', 'd0', 'style', 'dashed'));
    END IF;
    RETURN pg_catalog.jsonb_build_object('direction', 'LR', 'nodes', nodes, 'edges', edges);
END
$graph$;

/*
 * The graph of a choreography document: a start node (title lines) to the
 * start event, participants (p0, ...: by name) and events (e0, ...: in the
 * order first met: start, each participant's on, emits, fails and
 * compensation, completed, the deadline's), on edges event -> participant,
 * emits participant -> event, fails in red, compensations dashed, the
 * completed events to an end node, and the deadline.
 */
CREATE FUNCTION saga.diagram_choreography_graph(definition jsonb, title text[])
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $graph$
DECLARE
    evs jsonb := '{}';           -- event type -> node id
    cls jsonb := '{}';           -- event type -> class
    order_ text[] := '{}';
    nodes jsonb := '[]';
    edges jsonb := '[]';
    part record;
    pid text;
    ev text;
    pi integer := 0;
    t text[];
BEGIN
    -- the events, each once, in the order first met
    SELECT pg_catalog.array_agg(x.ev ORDER BY x.o1, x.o2, x.o3) INTO order_
      FROM (SELECT DISTINCT ON (y.ev) y.ev, y.o1, y.o2, y.o3
              FROM (SELECT definition ->> 'start' AS ev, 0 AS o1, ''::text COLLATE "C" AS o2, 0::bigint AS o3
                    UNION ALL
                    SELECT l.ev, 1, p.key COLLATE "C", l.o + 1000 * w.o
                      FROM pg_catalog.jsonb_each(definition -> 'participants') AS p
                     CROSS JOIN LATERAL (VALUES (1, p.value -> 'on'), (2, p.value -> 'emits'),
                                                (3, p.value -> 'fails'),
                                                (4, p.value -> 'compensation' -> 'on'),
                                                (5, pg_catalog.jsonb_build_array(p.value -> 'compensation' -> 'emits')))
                                        AS w(o, arr)
                     CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(
                                   CASE WHEN pg_catalog.jsonb_typeof(w.arr) = 'array' THEN w.arr ELSE '[]' END)
                                   WITH ORDINALITY AS l(ev, o)
                    UNION ALL
                    SELECT l.ev, 2, '', l.o
                      FROM pg_catalog.jsonb_array_elements_text(COALESCE(definition -> 'completed', '[]'))
                           WITH ORDINALITY AS l(ev, o)
                    UNION ALL
                    SELECT definition -> 'deadline' ->> 'publish', 3, '', 0) y
             WHERE y.ev IS NOT NULL
             ORDER BY y.ev, y.o1, y.o2, y.o3) x;

    -- one class per event: start, terminal, failure, deadline, compensation, plain
    FOREACH ev IN ARRAY order_ LOOP
        evs := evs || pg_catalog.jsonb_build_object(ev, 'e' || pg_catalog.array_position(order_, ev) - 1);
        cls := cls || pg_catalog.jsonb_build_object(ev, CASE
            WHEN ev = definition ->> 'start' THEN 'start_event'
            WHEN EXISTS (SELECT FROM pg_catalog.jsonb_each(definition -> 'participants') AS p
                          WHERE p.value -> 'fails' ? ev) THEN 'failure'
            WHEN ev = definition -> 'deadline' ->> 'publish' THEN 'deadline'
            WHEN EXISTS (SELECT FROM pg_catalog.jsonb_each(definition -> 'participants') AS p
                          WHERE p.value -> 'compensation' ->> 'emits' = ev) THEN 'compensation'
            WHEN definition -> 'completed' ? ev THEN 'terminal'
            ELSE 'event' END);
    END LOOP;

    t := title;
    IF definition ? 'max_hops' THEN
        t := t || ('max hops ' || (definition ->> 'max_hops'));
    END IF;
    nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
        'id', 'b0', 'shape', 'start', 'lines', pg_catalog.to_jsonb(t), 'classes', '[]'::jsonb));
    edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
        'from', 'b0', 'to', evs ->> (definition ->> 'start')));

    FOR part IN SELECT p.key, p.value FROM pg_catalog.jsonb_each(definition -> 'participants') AS p
                 ORDER BY p.key COLLATE "C" LOOP
        pid := 'p' || pi;
        pi := pi + 1;
        nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'id', pid, 'shape', 'participant', 'lines', pg_catalog.jsonb_build_array(part.key),
            'classes', '["participant"]'::jsonb));
        FOR ev IN SELECT x FROM pg_catalog.jsonb_array_elements_text(COALESCE(part.value -> 'on', '[]'))
                                WITH ORDINALITY AS l(x, o) ORDER BY o LOOP
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', evs ->> ev, 'to', pid));
        END LOOP;
        FOR ev IN SELECT x FROM pg_catalog.jsonb_array_elements_text(COALESCE(part.value -> 'emits', '[]'))
                                WITH ORDINALITY AS l(x, o) ORDER BY o LOOP
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', pid, 'to', evs ->> ev, 'label', 'emits'));
        END LOOP;
        FOR ev IN SELECT x FROM pg_catalog.jsonb_array_elements_text(COALESCE(part.value -> 'fails', '[]'))
                                WITH ORDINALITY AS l(x, o) ORDER BY o LOOP
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', pid, 'to', evs ->> ev, 'label', 'fails', 'color', 'fail'));
        END LOOP;
        FOR ev IN SELECT x FROM pg_catalog.jsonb_array_elements_text(COALESCE(part.value -> 'compensation' -> 'on', '[]'))
                                WITH ORDINALITY AS l(x, o) ORDER BY o LOOP
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', evs ->> ev, 'to', pid, 'label', 'compensate', 'style', 'dashed'));
        END LOOP;
        ev := part.value -> 'compensation' ->> 'emits';
        IF ev IS NOT NULL THEN
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', pid, 'to', evs ->> ev, 'label', 'compensated', 'style', 'dashed'));
        END IF;
    END LOOP;

    FOREACH ev IN ARRAY order_ LOOP
        nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'id', evs ->> ev, 'shape', 'event', 'lines', pg_catalog.jsonb_build_array(ev),
            'classes', pg_catalog.jsonb_build_array(cls ->> ev)));
    END LOOP;
    nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
        'id', 'x0', 'shape', 'end', 'lines', '["completed"]'::jsonb, 'classes', '[]'::jsonb));
    FOR ev IN SELECT x FROM pg_catalog.jsonb_array_elements_text(COALESCE(definition -> 'completed', '[]'))
                            WITH ORDINALITY AS l(x, o) ORDER BY o LOOP
        edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'from', evs ->> ev, 'to', 'x0'));
    END LOOP;
    IF definition ? 'deadline' THEN
        nodes := nodes || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'id', 'd0', 'shape', 'deadline',
            'lines', pg_catalog.jsonb_build_array('deadline after ' || (definition -> 'deadline' ->> 'after'),
                     CASE WHEN definition -> 'deadline' ? 'publish' THEN 'then publish' ELSE 'then stuck' END),
            'classes', '["deadline"]'::jsonb));
        edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
            'from', 'b0', 'to', 'd0', 'style', 'dashed'));
        IF definition -> 'deadline' ? 'publish' THEN
            edges := edges || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'from', 'd0', 'to', evs ->> (definition -> 'deadline' ->> 'publish'), 'label', 'publish',
                'style', 'dashed'));
        END IF;
    END IF;
    RETURN pg_catalog.jsonb_build_object('direction', 'LR', 'nodes', nodes, 'edges', edges);
END
$graph$;

CREATE FUNCTION saga.diagram(name text, format text DEFAULT 'mermaid', version integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $diagram$
DECLARE
    doc jsonb;
    v integer;
    latest integer;
    kind text;
BEGIN
    IF diagram.name IS NULL OR diagram.format IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN diagram.name IS NULL THEN 'name' ELSE 'format' END
            USING ERRCODE = '22004';
    END IF;
    IF diagram.format NOT IN ('mermaid', 'dot') THEN
        RAISE EXCEPTION 'unknown diagram format "%"', pg_catalog.left(diagram.format, 64)
            USING ERRCODE = '22023', HINT = 'The formats are ''mermaid'' and ''dot''.';
    END IF;
    SELECT d.definition, d.version, 'saga definition' INTO doc, v, kind
      FROM saga.definitions d
     WHERE d.name = diagram.name AND (diagram.version IS NULL OR d.version = diagram.version)
     ORDER BY d.version DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT c.definition, c.version, 'choreography' INTO doc, v, kind
          FROM saga.choreographies c
         WHERE c.name = diagram.name AND (diagram.version IS NULL OR c.version = diagram.version)
         ORDER BY c.version DESC LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        SELECT x.kind, x.latest INTO kind, latest
          FROM (SELECT 'saga definition' AS kind, pg_catalog.max(d.version) AS latest
                  FROM saga.definitions d WHERE d.name = diagram.name
                UNION ALL
                SELECT 'choreography', pg_catalog.max(c.version)
                  FROM saga.choreographies c WHERE c.name = diagram.name) x
         WHERE x.latest IS NOT NULL;
        IF latest IS NULL THEN
            RAISE EXCEPTION 'saga definition or choreography "%" does not exist', pg_catalog.left(diagram.name, 64)
                USING ERRCODE = '42704';
        END IF;
        RAISE EXCEPTION 'version % of % "%" does not exist', diagram.version, kind, diagram.name
            USING ERRCODE = '42704',
                  DETAIL = pg_catalog.format('Its latest version is %s.', latest);
    END IF;
    IF kind = 'saga definition' THEN
        RETURN saga.diagram_render(saga.diagram_saga_graph(doc, ARRAY[diagram.name || ' v' || v]),
                                   diagram.format);
    END IF;
    RETURN saga.diagram_render(saga.diagram_choreography_graph(doc, ARRAY[diagram.name || ' v' || v]),
                               diagram.format);
END
$diagram$;

CREATE FUNCTION saga.diagram(saga_id bigint, format text DEFAULT 'mermaid')
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $diagram$
DECLARE
    s record;
    states jsonb;
    title text[];
BEGIN
    IF diagram.saga_id IS NULL OR diagram.format IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN diagram.saga_id IS NULL THEN 'saga_id' ELSE 'format' END
            USING ERRCODE = '22004';
    END IF;
    IF diagram.format NOT IN ('mermaid', 'dot') THEN
        RAISE EXCEPTION 'unknown diagram format "%"', pg_catalog.left(diagram.format, 64)
            USING ERRCODE = '22023', HINT = 'The formats are ''mermaid'' and ''dot''.';
    END IF;
    SELECT i.name, i.version, i.status, i.correlation_id, d.definition INTO s
      FROM saga.instances i
      JOIN saga.definitions d ON d.name = i.name AND d.version = i.version
     WHERE i.id = diagram.saga_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'saga % does not exist', diagram.saga_id USING ERRCODE = '42704';
    END IF;
    SELECT pg_catalog.jsonb_object_agg(r.step, pg_catalog.jsonb_build_object(
               'status', r.status, 'attempts', r.attempts, 'error', r.error))
      INTO states
      FROM saga.step_runs r WHERE r.saga_id = diagram.saga_id;
    title := ARRAY[s.name || ' v' || s.version, 'saga ' || s.status];
    IF s.correlation_id IS NOT NULL THEN
        title := title || ('correlation ' || s.correlation_id);
    END IF;
    RETURN saga.diagram_render(saga.diagram_saga_graph(s.definition, title, states), diagram.format);
END
$diagram$;

/*
 * A flow as a Mermaid sequence diagram: every event of a correlation id in
 * publish order (published_at, id), at most 1000 of them.  An event is drawn
 * from the participant of the flows' choreographies that emits its type
 * (emits, fails or compensation.emits; the one participant, if exactly one
 * does), from "deadline" for a choreography's deadline event nobody emits,
 * and otherwise from the role that published it (an actor).  It goes to
 * each topic that has its delivery: pending or leased in the outbox, a dead
 * letter, or done (a finished delivery leaves no row: the subscriptions of
 * its type older than the event stand for them when their number matches
 * the event's deliveries, else a note says how many were done).  A filter
 * that failed is a crossed arrow; an event delivered nowhere is a note.
 */
CREATE FUNCTION saga.flow_diagram(correlation_id text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $flow$
DECLARE
    max_events CONSTANT integer := 1000;
    max_arrows CONSTANT integer := 100;    -- per event
    cid text := flow_diagram.correlation_id;
    emitters jsonb := '{}';                -- event type -> participant, or null when several
    deadlines text[] := '{}';
    hop_limit integer;
    parts jsonb := '{}';                   -- key -> id
    decl text[] := '{}';
    body text[] := '{}';
    ev record;
    r record;
    f record;
    pub text;
    pkey text;
    tid text;
    label text;
    known integer;
    cands text[];
    arrows integer;
    nev integer := 0;
    total bigint;
    first_id text;
    last_id text;
BEGIN
    IF cid IS NULL THEN
        RAISE EXCEPTION 'correlation_id must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT pg_catalog.count(*) INTO total FROM saga.events e WHERE e.correlation_id = cid;
    IF total = 0 AND NOT EXISTS (SELECT FROM saga.flows fl WHERE fl.correlation_id = cid) THEN
        RAISE EXCEPTION 'no events or flows with correlation id "%"', pg_catalog.left(cid, 64)
            USING ERRCODE = '42704';
    END IF;

    -- who emits what, in the choreographies of the flows of this correlation id
    SELECT COALESCE(pg_catalog.jsonb_object_agg(y.ev, y.part), '{}') INTO emitters
      FROM (SELECT x.ev, CASE WHEN pg_catalog.count(DISTINCT x.part) = 1
                              THEN pg_catalog.to_jsonb(pg_catalog.min(x.part)) END AS part
              FROM (SELECT l.ev, p.key AS part
                      FROM saga.flows fl
                      JOIN saga.choreographies c ON c.name = fl.choreography AND c.version = fl.version
                     CROSS JOIN LATERAL pg_catalog.jsonb_each(c.definition -> 'participants') AS p
                     CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(
                                COALESCE(p.value -> 'emits', '[]')
                                || COALESCE(p.value -> 'fails', '[]')
                                || pg_catalog.jsonb_build_array(p.value -> 'compensation' -> 'emits'))
                                AS l(ev)
                     WHERE fl.correlation_id = cid AND l.ev IS NOT NULL) x
             GROUP BY x.ev) y;
    SELECT COALESCE(pg_catalog.array_agg(c.definition -> 'deadline' ->> 'publish'), '{}') INTO deadlines
      FROM saga.flows fl
      JOIN saga.choreographies c ON c.name = fl.choreography AND c.version = fl.version
     WHERE fl.correlation_id = cid AND c.definition -> 'deadline' ? 'publish';

    -- the hop limit: the flows' choreography's max_hops, else saga.max_hops
    SELECT pg_catalog.max((c.definition ->> 'max_hops')::integer) INTO hop_limit
      FROM saga.flows fl
      JOIN saga.choreographies c ON c.name = fl.choreography AND c.version = fl.version
     WHERE fl.correlation_id = cid;
    hop_limit := COALESCE(hop_limit, pg_catalog.current_setting('saga.max_hops', true)::integer, 32);

    FOR ev IN SELECT e.id, e.type, e.publisher, e.hops, e.deliveries, e.late, e.published_at
                FROM saga.events e WHERE e.correlation_id = cid
               ORDER BY e.published_at, e.id LIMIT max_events LOOP
        nev := nev + 1;
        -- the sender
        IF emitters ? ev.type AND pg_catalog.jsonb_typeof(emitters -> ev.type) = 'string' THEN
            pkey := 'topic:' || (emitters ->> ev.type);
            label := emitters ->> ev.type;
        ELSIF ev.type = ANY (deadlines) THEN
            pkey := 'deadline:';
            label := 'deadline';
        ELSE
            pkey := 'role:' || ev.publisher;
            label := ev.publisher;
        END IF;
        IF NOT parts ? pkey THEN
            parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
            decl := decl || ('    ' || CASE WHEN pkey LIKE 'role:%' THEN 'actor ' ELSE 'participant ' END
                             || (parts ->> pkey) || ' as ' || saga.diagram_escape(label, 'mermaid'));
        END IF;
        pub := parts ->> pkey;
        label := nev || '. ' || ev.type;

        -- the recipients: pending and leased deliveries, dead letters, failed filters
        known := 0;
        arrows := 0;
        FOR r IN SELECT x.topic, x.state, x.arrow
                   FROM (SELECT o.topic, CASE WHEN o.lease_owner IS NOT NULL THEN 'leased' ELSE 'pending' END
                                || CASE WHEN o.headers ->> 'replay' = 'true' THEN ', replay' ELSE '' END AS state,
                                '-)' AS arrow, o.headers ->> 'replay' = 'true' AS replay
                           FROM saga.outbox o WHERE o.event_id = ev.id AND o.kind = 'event'
                         UNION ALL
                         SELECT d.topic, 'dead letter'
                                || CASE WHEN d.headers ->> 'replay' = 'true' THEN ', replay' ELSE '' END,
                                '-x', d.headers ->> 'replay' = 'true'
                           FROM saga.dead_letters d WHERE d.event_id = ev.id
                         UNION ALL
                         SELECT s.topic, 'filter error', '-x', true
                           FROM saga.filter_errors fe JOIN saga.subscriptions s ON s.id = fe.subscription_id
                          WHERE fe.event_id = ev.id) x
                  ORDER BY x.topic COLLATE "C", x.state COLLATE "C" LOOP
            IF r.state NOT LIKE '%replay' AND r.state <> 'filter error' THEN
                known := known + 1;
            END IF;
            arrows := arrows + 1;
            CONTINUE WHEN arrows > max_arrows;
                        pkey := 'topic:' || r.topic;
            IF NOT parts ? pkey THEN
                parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
                decl := decl || ('    participant ' || (parts ->> pkey) || ' as ' || saga.diagram_escape(r.topic, 'mermaid'));
            END IF;
            body := body || ('    ' || pub || r.arrow || (parts ->> pkey) || ': '
                             || saga.diagram_escape(label || ' (' || CASE WHEN ev.late THEN 'late, ' ELSE '' END
                                                    || r.state || ')', 'mermaid'));
        END LOOP;

        -- the done deliveries: the subscriptions that stand for them, when they add up
        IF ev.deliveries > known THEN
            SELECT pg_catalog.array_agg(s.topic ORDER BY s.topic COLLATE "C") INTO cands
              FROM saga.subscriptions s
             WHERE s.event_type = ev.type AND s.created_at <= ev.published_at
               AND NOT EXISTS (SELECT FROM saga.outbox o WHERE o.event_id = ev.id AND o.subscription_id = s.id)
               AND NOT EXISTS (SELECT FROM saga.dead_letters d WHERE d.event_id = ev.id AND d.subscription_id = s.id)
               AND NOT EXISTS (SELECT FROM saga.filter_errors fe WHERE fe.event_id = ev.id AND fe.subscription_id = s.id);
            IF pg_catalog.cardinality(cands) = ev.deliveries - known THEN
                FOREACH tid IN ARRAY cands LOOP
                    arrows := arrows + 1;
                    CONTINUE WHEN arrows > max_arrows;
                    pkey := 'topic:' || tid;
                    IF NOT parts ? pkey THEN
                        parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
                        decl := decl || ('    participant ' || (parts ->> pkey) || ' as ' || saga.diagram_escape(tid, 'mermaid'));
                    END IF;
                    body := body || ('    ' || pub || '->>' || (parts ->> pkey) || ': '
                                     || saga.diagram_escape(label || CASE WHEN ev.late THEN ' (late)' ELSE '' END,
                                                            'mermaid'));
                END LOOP;
            ELSE
                body := body || ('    Note right of ' || pub || ': '
                                 || saga.diagram_escape(label || CASE WHEN ev.late THEN ' (late)' ELSE '' END
                                    || ': ' || (ev.deliveries - known)
                                    || ' deliveries done, to topics not recorded', 'mermaid'));
            END IF;
        END IF;
        IF arrows > max_arrows THEN
            body := body || ('    Note right of ' || pub || ': '
                             || saga.diagram_escape(label || ': ' || (arrows - max_arrows)
                                || ' more deliveries not drawn', 'mermaid'));
        END IF;
        IF ev.deliveries = 0 AND arrows = 0 THEN
            body := body || ('    Note right of ' || pub || ': '
                             || saga.diagram_escape(label || CASE WHEN ev.late THEN ' (late)' ELSE '' END
                                || CASE WHEN ev.hops > hop_limit
                                        THEN ': not delivered, past the hop limit (hops ' || ev.hops || ' > ' || hop_limit || ')'
                                        ELSE ': not delivered (hops ' || ev.hops || ')' END, 'mermaid'));
        END IF;
    END LOOP;

    IF pg_catalog.cardinality(decl) = 0 THEN
        decl := decl || ('    participant p0 as ' || saga.diagram_escape(cid, 'mermaid'));
    END IF;
    first_id := 'p0';
    last_id := 'p' || (pg_catalog.cardinality(decl) - 1);
    FOR f IN SELECT fl.choreography, fl.version, fl.status, fl.waiting_on
               FROM saga.flows fl WHERE fl.correlation_id = cid
              ORDER BY fl.choreography COLLATE "C", fl.id LOOP
        body := body || ('    Note over ' || first_id
                         || CASE WHEN last_id <> first_id THEN ',' || last_id ELSE '' END || ': '
                         || saga.diagram_escape('flow ' || f.choreography || ' v' || f.version || ': ' || f.status
                            || CASE WHEN pg_catalog.cardinality(f.waiting_on) > 0
                                    THEN ', waiting on ' || pg_catalog.array_to_string(f.waiting_on, ' ')
                                    ELSE '' END, 'mermaid'));
    END LOOP;
    IF total > max_events THEN
        body := body || ('    Note over ' || first_id
                         || CASE WHEN last_id <> first_id THEN ',' || last_id ELSE '' END || ': '
                         || saga.diagram_escape('the first ' || max_events || ' of ' || total
                            || ' events are drawn', 'mermaid'));
    END IF;
    RETURN pg_catalog.array_to_string(
        ARRAY['sequenceDiagram', '    title ' || saga.diagram_escape('flow ' || cid, 'mermaid')]
        || decl || body, E'\n') || E'\n';
END
$flow$;

/*
 * One saga's step runs and compensations as a Mermaid gantt, from its
 * history: a step from its first dispatch (or claim, or outcome for an SQL
 * step that ran at once) to its outcome, a compensation from its dispatch
 * to compensated or compensation_failed; one not finished ends at the
 * saga's latest history entry and is active.  Times are Unix milliseconds.
 */
CREATE FUNCTION saga.timeline(saga_id bigint)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $timeline$
DECLARE
    s record;
    r record;
    out text[];
    section text := '';
    n integer := 0;
BEGIN
    IF timeline.saga_id IS NULL THEN
        RAISE EXCEPTION 'saga_id must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT i.name, i.version, i.status, d.step_names INTO s
      FROM saga.instances i
      JOIN saga.definitions d ON d.name = i.name AND d.version = i.version
     WHERE i.id = timeline.saga_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'saga % does not exist', timeline.saga_id USING ERRCODE = '42704';
    END IF;
    out := ARRAY['gantt',
                 '    title ' || saga.diagram_escape(s.name || ' v' || s.version || ' ' || s.status, 'gantt'),
                 '    dateFormat x',
                 '    axisFormat %H:%M:%S.%L',
                 '    todayMarker off'];
    FOR r IN
        WITH h AS (
            SELECT h.step, h.event, h.at, h.id,
                   h.event IN ('compensation_dispatched', 'compensated', 'compensation_failed',
                               'compensation_retry_scheduled') AS comp
              FROM saga.history h
             WHERE h.saga_id = timeline.saga_id AND h.step IS NOT NULL),
        spans AS (
            SELECT h.step, h.comp,
                   pg_catalog.min(h.at) FILTER (WHERE h.event IN ('dispatched', 'claimed', 'compensation_dispatched',
                                                                   'succeeded', 'failed', 'compensated',
                                                                   'compensation_failed')) AS started,
                   (pg_catalog.array_agg(h.at ORDER BY h.id DESC) FILTER (WHERE h.event IN
                        ('succeeded', 'failed', 'compensated', 'compensation_failed', 'withdrawn')))[1] AS ended,
                   (pg_catalog.array_agg(h.event ORDER BY h.id DESC) FILTER (WHERE h.event IN
                        ('succeeded', 'failed', 'compensated', 'compensation_failed', 'withdrawn')))[1] AS outcome
              FROM h GROUP BY h.step, h.comp)
        SELECT sp.step, sp.comp, sp.outcome,
               pg_catalog.floor(pg_catalog.date_part('epoch', sp.started) * 1000)::bigint AS t0,
               pg_catalog.floor(pg_catalog.date_part('epoch', COALESCE(sp.ended,
                   (SELECT pg_catalog.max(h2.at) FROM saga.history h2 WHERE h2.saga_id = timeline.saga_id)))
                   * 1000)::bigint AS t1
          FROM spans sp
         WHERE sp.started IS NOT NULL
         ORDER BY sp.comp, sp.started, pg_catalog.array_position(s.step_names, sp.step)
    LOOP
        IF section <> (CASE WHEN r.comp THEN 'compensations' ELSE 'steps' END) THEN
            section := CASE WHEN r.comp THEN 'compensations' ELSE 'steps' END;
            out := out || ('    section ' || section);
        END IF;
        out := out || ('    ' || saga.diagram_escape(r.step || ' ' || COALESCE(r.outcome, 'running'), 'gantt')
                       || ' :' || CASE r.outcome WHEN 'succeeded' THEN 'done, ' WHEN 'compensated' THEN 'done, '
                                                 WHEN 'failed' THEN 'crit, ' WHEN 'compensation_failed' THEN 'crit, '
                                                 WHEN 'withdrawn' THEN '' ELSE 'active, ' END
                       || 't' || n || ', ' || r.t0 || ', ' || r.t1);
        n := n + 1;
    END LOOP;
    RETURN pg_catalog.array_to_string(out, E'\n') || E'\n';
END
$timeline$;

REVOKE ALL ON FUNCTION saga.diagram_escape(text, text), saga.diagram_render(jsonb, text),
    saga.diagram_saga_graph(jsonb, text[], jsonb), saga.diagram_choreography_graph(jsonb, text[]),
    saga.diagram(text, text, integer), saga.diagram(bigint, text), saga.flow_diagram(text),
    saga.timeline(bigint)
    FROM PUBLIC;
-- the diagrams are SECURITY INVOKER: their callers need the helpers too
GRANT EXECUTE ON FUNCTION saga.diagram_escape(text, text), saga.diagram_render(jsonb, text),
    saga.diagram_saga_graph(jsonb, text[], jsonb), saga.diagram_choreography_graph(jsonb, text[]),
    saga.diagram(text, text, integer), saga.diagram(bigint, text), saga.flow_diagram(text),
    saga.timeline(bigint)
    TO saga_reader, saga_admin, saga_worker;

COMMENT ON FUNCTION saga.diagram(text, text, integer) IS
'saga.diagram(name, format, version) -> text: draw the latest (or the given) version of the saga definition or choreography of that name, as a Mermaid flowchart (format ''mermaid'', the default: the text starts with "flowchart LR") or Graphviz DOT (''dot'': "digraph"). A saga definition: its steps (topic steps as boxes, SQL steps as subroutines, await steps as hexagons), their "after" edges, compensations as dashed edges back to the steps they follow, the pivot, the events it publishes or awaits, and its deadline. A choreography: participants and events, on, emits, fails (red) and compensation (dashed) edges, the start event, the completed events, and the deadline. Deterministic. Errors: 22004 null name or format, 22023 unknown format, 42704 no such name or version. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.diagram(bigint, text) IS
'saga.diagram(saga_id, format) -> text: draw one saga as saga.diagram(name) draws its definition version, with each step''s status (pending, ready, running, succeeded, failed, compensating, compensated, skipped: a style class each), attempt and error, and the saga''s status and correlation id. Errors: 22004 null argument, 22023 unknown format, 42704 no such saga. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.flow_diagram(text) IS
'saga.flow_diagram(correlation_id) -> text: a Mermaid sequenceDiagram of the events of a correlation id in publish order (at most 1000; a last note counts the rest), each from the participant of its flows'' choreography that emits its type (else "deadline" for a deadline event, else the publishing role, as an actor) to the topics that have its delivery: done (solid), pending or leased (open arrow), dead letter or filter error (crossed); late events marked, undelivered ones (0 deliveries, e.g. past the hop limit) as a note, and a note with each flow''s status. Errors: 22004 null correlation_id, 42704 no events or flows with that correlation id. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.timeline(bigint) IS
'saga.timeline(saga_id) -> text: a Mermaid gantt of one saga''s step runs and compensations from saga.history, each from its dispatch to its outcome (done, crit for a failure, active while unfinished, up to the latest history entry), times as Unix milliseconds (dateFormat x). Errors: 22004 null saga_id, 42704 no such saga. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.diagram_escape(text, text) IS
'internal to the diagrams: a string made safe inside a quoted Mermaid (''mermaid'', ''gantt'') or DOT (''dot'') label';
COMMENT ON FUNCTION saga.diagram_render(jsonb, text) IS
'internal to the diagrams: a graph {nodes, edges} as Mermaid flowchart or DOT text';
COMMENT ON FUNCTION saga.diagram_saga_graph(jsonb, text[], jsonb) IS
'internal to the diagrams: the graph of a saga definition document, with step states for one saga';
COMMENT ON FUNCTION saga.diagram_choreography_graph(jsonb, text[]) IS
'internal to the diagrams: the graph of a choreography document';
