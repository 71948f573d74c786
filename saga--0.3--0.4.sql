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
 * "classes"}], "edges": [{"from", "to", "label", "style", "color"}],
 * "edges_left_out": n}.  shape: step, sql, await, event, participant,
 * start, end, deadline; style: solid, dashed (compensations), thick (events
 * of a saga); color: fail.  Lines and labels are raw text, escaped here.
 * At most max_edges (500) edges are drawn, the first in the graph's order;
 * when some are not (edges_left_out, from the graph builders, plus those
 * past the cap here), a last node o0 says how many.  One pass over the
 * nodes and edges (set-based, no per-element concatenation): linear.
 */
CREATE FUNCTION saga.diagram_render(graph jsonb, format text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $render$
DECLARE
    max_edges CONSTANT integer := 500;     -- as in diagram_saga_graph, diagram_choreography_graph
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
    nedges bigint := COALESCE(pg_catalog.jsonb_array_length(graph -> 'edges'), 0);
    left_out bigint;
    note text;
    body text;
BEGIN
    left_out := COALESCE((graph ->> 'edges_left_out')::bigint, 0) + GREATEST(nedges - max_edges, 0);
    IF left_out > 0 THEN
        note := left_out || ' more edges not drawn: a diagram draws at most ' || max_edges
                || ' edges, the first ' || max_edges || ' of ' || (LEAST(nedges, max_edges) + left_out);
    END IF;
    IF format = 'mermaid' THEN
        SELECT pg_catalog.string_agg(x.line, E'\n' ORDER BY x.g, x.o, x.o2) INTO body
          FROM (SELECT 0 AS g, 0::bigint AS o, 0::bigint AS o2,
                       'flowchart ' || COALESCE(graph ->> 'direction', 'LR') AS line
                UNION ALL
                SELECT 1, n.o, 0, '    ' || (n.x ->> 'id') || (mermaid_shape -> (n.x ->> 'shape') ->> 0)
                       || (SELECT pg_catalog.string_agg(saga.diagram_escape(t.l, 'mermaid'), '<br>' ORDER BY t.lo)
                             FROM pg_catalog.jsonb_array_elements_text(n.x -> 'lines') WITH ORDINALITY AS t(l, lo))
                       || (mermaid_shape -> (n.x ->> 'shape') ->> 1)
                  FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') WITH ORDINALITY AS n(x, o)
                UNION ALL
                SELECT 2, e.o, 0, '    ' || (e.x ->> 'from')
                       || CASE e.x ->> 'style' WHEN 'dashed' THEN ' -.->' WHEN 'thick' THEN ' ==>' ELSE ' -->' END
                       || CASE WHEN e.x ? 'label'
                               THEN '|"' || saga.diagram_escape(e.x ->> 'label', 'mermaid') || '"|' ELSE '' END
                       || ' ' || (e.x ->> 'to')
                  FROM pg_catalog.jsonb_array_elements(graph -> 'edges') WITH ORDINALITY AS e(x, o)
                 WHERE e.o <= max_edges
                UNION ALL
                SELECT 3, pg_catalog.row_number() OVER (ORDER BY c.c), 0,
                       '    classDef ' || c.c || ' ' || (styles -> c.c ->> 0)
                  FROM (SELECT DISTINCT k.c
                          FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') AS n(x),
                               pg_catalog.jsonb_array_elements_text(n.x -> 'classes') AS k(c)) c
                UNION ALL
                SELECT 4, n.o, k.co, '    class ' || (n.x ->> 'id') || ' ' || k.c
                  FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') WITH ORDINALITY AS n(x, o),
                       pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                UNION ALL
                SELECT 5, 0, 0, '    linkStyle ' || pg_catalog.string_agg((e.o - 1)::text, ',' ORDER BY e.o)
                       || ' stroke:#c62828,color:#c62828'
                  FROM pg_catalog.jsonb_array_elements(graph -> 'edges') WITH ORDINALITY AS e(x, o)
                 WHERE e.o <= max_edges AND e.x ->> 'color' = 'fail'
                UNION ALL
                SELECT 6, 0, 0, '    o0["' || saga.diagram_escape(note, 'mermaid') || '"]'
                 WHERE note IS NOT NULL) x;
    ELSE
        SELECT pg_catalog.string_agg(x.line, E'\n' ORDER BY x.g, x.o) INTO body
          FROM (SELECT 0 AS g, h.o, h.line
                  FROM (VALUES (1::bigint, 'digraph saga {'), (2, '    rankdir=LR;'),
                               (3, '    node [fontname="Helvetica", fontsize=11];'),
                               (4, '    edge [fontname="Helvetica", fontsize=9];')) AS h(o, line)
                UNION ALL
                SELECT 1, n.o, '    "' || n.id || '" [label="' || n.label || '", '
                       || n.shape_attrs
                       || CASE WHEN n.fill IS NOT NULL
                               THEN CASE WHEN n.shape <> 'event' THEN ', style=filled' ELSE '' END
                                    || ', fillcolor="' || n.fill || '"'
                               ELSE '' END
                       || CASE WHEN n.colour IS NOT NULL THEN ', color="' || n.colour || '"' ELSE '' END
                       || CASE WHEN n.pen IS NOT NULL THEN ', penwidth=' || n.pen ELSE '' END
                       || '];'
                  FROM (SELECT n.o, n.x ->> 'id' AS id, n.x ->> 'shape' AS shape,
                               dot_shape ->> (n.x ->> 'shape') AS shape_attrs,
                               (SELECT pg_catalog.string_agg(saga.diagram_escape(t.l, 'dot'), '\n' ORDER BY t.lo)
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'lines')
                                       WITH ORDINALITY AS t(l, lo)) AS label,
                               -- the first class that says so wins (a state before pivot)
                               (SELECT styles -> k.c ->> 1
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                                 WHERE styles -> k.c ->> 1 IS NOT NULL ORDER BY k.co LIMIT 1) AS fill,
                               (SELECT styles -> k.c ->> 2
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                                 WHERE styles -> k.c ->> 2 IS NOT NULL ORDER BY k.co LIMIT 1) AS colour,
                               (SELECT styles -> k.c ->> 3
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                                 WHERE styles -> k.c ->> 3 IS NOT NULL ORDER BY k.co LIMIT 1) AS pen
                          FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') WITH ORDINALITY AS n(x, o)) n
                UNION ALL
                SELECT 2, e.o, '    "' || (e.x ->> 'from') || '" -> "' || (e.x ->> 'to') || '"'
                       || CASE WHEN e.attrs <> '' THEN ' [' || e.attrs || ']' ELSE '' END || ';'
                  FROM (SELECT e.o, e.x, pg_catalog.concat_ws(', ',
                               CASE WHEN e.x ? 'label'
                                    THEN 'label="' || saga.diagram_escape(e.x ->> 'label', 'dot') || '"' END,
                               CASE e.x ->> 'style' WHEN 'dashed' THEN 'style=dashed' WHEN 'thick' THEN 'penwidth=2' END,
                               CASE WHEN e.x ->> 'color' = 'fail' THEN 'color="#c62828", fontcolor="#c62828"' END) AS attrs
                          FROM pg_catalog.jsonb_array_elements(graph -> 'edges') WITH ORDINALITY AS e(x, o)
                         WHERE e.o <= max_edges) e
                UNION ALL
                SELECT 3, 0, '    "o0" [label="' || saga.diagram_escape(note, 'dot') || '", shape=note];'
                 WHERE note IS NOT NULL
                UNION ALL
                SELECT 4, 0, '}') x;
    END IF;
    RETURN body || E'\n';
END
$render$;

/*
 * The graph of a saga definition document: a start node (title lines),
 * one node per step in document order (s0, s1, ...: topic, SQL and await
 * steps by shape), its "after" edges (the previous step by default),
 * compensations as dashed edges back to the steps it waited for (to the
 * start node from a first step), an end node after the last steps, the
 * events it publishes or awaits (e0, ...; the compensated and cancelled
 * ends that publish reached from the start node) and its deadline.  states, for
 * one saga, maps a step name to {"status", "attempts", "error"}.  Edges in
 * that order, at most max_edges (500) of them: "edges_left_out" counts
 * the rest (512 steps, each after all the previous ones, have 130,816
 * "after" edges and as many compensations).  Set-based: linear in the
 * size of the document; the edges past the cap are counted, not built.
 */
CREATE FUNCTION saga.diagram_saga_graph(definition jsonb, title text[], states jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $graph$
DECLARE
    max_edges CONSTANT integer := 500;     -- as in diagram_render
    steps jsonb := definition -> 'steps';
    -- each step once: {"i", "name", "preds" (its "after", or the previous step), "comp" (label)}
    plan jsonb;
    idx jsonb;                   -- step name -> index
    referenced jsonb;            -- step names some step is after
    evs jsonb;                   -- event type -> node id
    events jsonb;
    terminals jsonb;
    nodes jsonb;
    edges jsonb;
    total bigint;
BEGIN
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'i', t.o - 1, 'name', t.st ->> 'name',
               'preds', CASE WHEN t.st ? 'after' THEN t.st -> 'after'
                             WHEN t.o > 1 THEN pg_catalog.jsonb_build_array(t.prev)
                             ELSE '[]' END,
               'comp', CASE WHEN t.st -> 'compensate' IS NOT NULL
                            THEN 'compensate: ' || CASE WHEN t.st -> 'compensate' ? 'sql'
                                                        THEN 'sql ' || (t.st -> 'compensate' ->> 'sql')
                                                        ELSE 'topic ' || (t.st -> 'compensate' ->> 'topic') END
                       END) ORDER BY t.o),
           pg_catalog.jsonb_object_agg(t.st ->> 'name', t.o - 1 ORDER BY t.o)
      INTO plan, idx
      FROM (SELECT t.st, t.o, pg_catalog.lag(t.st ->> 'name') OVER (ORDER BY t.o) AS prev
              FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o)) t;

    SELECT COALESCE(pg_catalog.jsonb_object_agg(r.p, true), '{}') INTO referenced
      FROM (SELECT DISTINCT p.x AS p
              FROM pg_catalog.jsonb_array_elements(plan) AS s(x),
                   pg_catalog.jsonb_array_elements_text(s.x -> 'preds') AS p(x)) r;

    -- events, each once, in the order first met: awaited and published by steps, then at the end
    SELECT COALESCE(pg_catalog.jsonb_object_agg(y.ev, 'e' || (y.rk - 1)), '{}'),
           COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', 'e' || (y.rk - 1), 'shape', 'event', 'lines', pg_catalog.jsonb_build_array(y.ev),
               'classes', '["event"]'::jsonb) ORDER BY y.rk), '[]')
      INTO evs, events
      FROM (SELECT z.ev, pg_catalog.row_number() OVER (ORDER BY pg_catalog.min(z.ord)) AS rk
              FROM (SELECT t.st ->> k.k AS ev, (t.o * 2 + k.n)::bigint AS ord
                      FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o),
                           (VALUES (0, 'await'), (1, 'publish')) AS k(n, k)
                     WHERE pg_catalog.jsonb_typeof(t.st -> k.k) = 'string'
                    UNION ALL
                    SELECT definition -> 'publish' ->> p.k, 10000 + p.n
                      FROM (VALUES (1, 'completed'), (2, 'compensated'), (3, 'cancelled')) AS p(n, k)
                     WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object'
                       AND definition -> 'publish' ? p.k) z
             GROUP BY z.ev) y;

    -- the terminals that publish: compensated (x1) and cancelled (x2) get their own node
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', p.node, 'shape', 'end', 'lines', pg_catalog.jsonb_build_array(p.k),
               'classes', '["compensation"]'::jsonb) ORDER BY p.n), '[]')
      INTO terminals
      FROM (VALUES (2, 'compensated', 'x1'), (3, 'cancelled', 'x2')) AS p(n, k, node)
     WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object' AND definition -> 'publish' ? p.k;

    -- the nodes: start, steps, end(s), events, deadline
    SELECT pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'id', 'b0', 'shape', 'start', 'lines', pg_catalog.to_jsonb(title), 'classes', '[]'::jsonb))
           || pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', 's' || (t.o - 1),
               'shape', CASE WHEN t.st ? 'sql' THEN 'sql' WHEN t.st ? 'await' THEN 'await' ELSE 'step' END,
               'lines', pg_catalog.to_jsonb(pg_catalog.array_remove(ARRAY[
                   t.st ->> 'name',
                   CASE WHEN t.st ? 'sql' THEN 'sql: ' || (t.st ->> 'sql')
                                               || CASE WHEN (t.st ->> 'async')::boolean THEN ' (async)' ELSE '' END
                        WHEN t.st ? 'await' THEN 'await: ' || (t.st ->> 'await')
                        ELSE 'topic: ' || (t.st ->> 'topic') END,
                   CASE WHEN t.st ? 'timeout' THEN 'timeout ' || (t.st ->> 'timeout') END,
                   CASE WHEN t.st -> 'retry' ? 'max_attempts'
                        THEN 'attempts ' || (t.st -> 'retry' ->> 'max_attempts') END,
                   CASE WHEN states ? (t.st ->> 'name')
                        THEN (states -> (t.st ->> 'name') ->> 'status')
                             || CASE WHEN COALESCE((states -> (t.st ->> 'name') ->> 'attempts')::integer, 0) > 0
                                     THEN ', attempt ' || (states -> (t.st ->> 'name') ->> 'attempts') ELSE '' END END,
                   CASE WHEN states ? (t.st ->> 'name') AND states -> (t.st ->> 'name') ->> 'error' IS NOT NULL
                        THEN 'error: ' || pg_catalog.left(states -> (t.st ->> 'name') ->> 'error', 60)
                             || CASE WHEN pg_catalog.length(states -> (t.st ->> 'name') ->> 'error') > 60
                                     THEN '...' ELSE '' END END,
                   CASE WHEN (t.st ->> 'pivot')::boolean THEN 'pivot' END], NULL)),
               'classes', pg_catalog.to_jsonb(pg_catalog.array_remove(ARRAY[
                   CASE WHEN states ? (t.st ->> 'name') THEN states -> (t.st ->> 'name') ->> 'status' END,
                   CASE WHEN (t.st ->> 'pivot')::boolean THEN 'pivot' END], NULL))) ORDER BY t.o)
           || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'id', 'x0', 'shape', 'end', 'lines', '["completed"]'::jsonb, 'classes', '[]'::jsonb))
           || terminals || events
           || CASE WHEN definition ? 'deadline' THEN pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                  'id', 'd0', 'shape', 'deadline',
                  'lines', pg_catalog.jsonb_build_array('deadline ' || (definition ->> 'deadline'),
                                                        'then compensate'),
                  'classes', '["deadline"]'::jsonb)) ELSE '[]' END
      INTO nodes
      FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o);

    -- how many edges there are: forward, to the end, compensations, events, deadline
    SELECT pg_catalog.sum(GREATEST(pg_catalog.jsonb_array_length(s.x -> 'preds'), 1))
           + pg_catalog.count(*) FILTER (WHERE NOT referenced ? (s.x ->> 'name'))
           + COALESCE(pg_catalog.sum(GREATEST(pg_catalog.jsonb_array_length(s.x -> 'preds'), 1))
                          FILTER (WHERE s.x ? 'comp' AND s.x ->> 'comp' IS NOT NULL), 0)
      INTO total
      FROM pg_catalog.jsonb_array_elements(plan) AS s(x);

    -- the first max_edges of them, in that order; a part's rows are ordered by (i, o)
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'from', CASE WHEN e.src_step IS NOT NULL THEN 's' || (idx ->> e.src_step) ELSE e.src END,
               'to', CASE WHEN e.dst_step IS NOT NULL THEN 's' || (idx ->> e.dst_step) ELSE e.dst END,
               'label', e.label, 'style', e.style)) ORDER BY e.part, e.i, e.o), '[]')
      INTO edges
      FROM (SELECT * FROM (
                -- forward: from the start node, or from each step it is after
                SELECT 1 AS part, (s.x ->> 'i')::integer AS i, 0::bigint AS o,
                       'b0' AS src, NULL::text AS src_step, 's' || (s.x ->> 'i') AS dst, NULL::text AS dst_step,
                       NULL::text AS label, NULL::text AS style
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x)
                 WHERE pg_catalog.jsonb_array_length(s.x -> 'preds') = 0
                UNION ALL
                SELECT 1, (s.x ->> 'i')::integer, p.o, NULL, p.x, 's' || (s.x ->> 'i'), NULL, NULL, NULL
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x),
                       pg_catalog.jsonb_array_elements_text(s.x -> 'preds') WITH ORDINALITY AS p(x, o)
                UNION ALL
                -- to the end node, from the steps no step is after
                SELECT 2, (s.x ->> 'i')::integer, 0, 's' || (s.x ->> 'i'), NULL, 'x0', NULL, NULL, NULL
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x)
                 WHERE NOT referenced ? (s.x ->> 'name')
                UNION ALL
                -- compensations: back to the start node, or to each step it is after
                SELECT 3, (s.x ->> 'i')::integer, 0, 's' || (s.x ->> 'i'), NULL, 'b0', NULL, s.x ->> 'comp', 'dashed'
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x)
                 WHERE s.x ->> 'comp' IS NOT NULL AND pg_catalog.jsonb_array_length(s.x -> 'preds') = 0
                UNION ALL
                SELECT 3, (s.x ->> 'i')::integer, p.o, 's' || (s.x ->> 'i'), NULL, NULL, p.x, s.x ->> 'comp', 'dashed'
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x),
                       pg_catalog.jsonb_array_elements_text(s.x -> 'preds') WITH ORDINALITY AS p(x, o)
                 WHERE s.x ->> 'comp' IS NOT NULL
                ORDER BY 1, 2, 3 LIMIT max_edges) f
            UNION ALL
            -- events: awaited and published by steps, then published at the end
            SELECT 4, (t.o - 1)::integer, k.n,
                   CASE k.k WHEN 'await' THEN evs ->> (t.st ->> k.k) ELSE 's' || (t.o - 1) END, NULL,
                   CASE k.k WHEN 'await' THEN 's' || (t.o - 1) ELSE evs ->> (t.st ->> k.k) END, NULL,
                   CASE k.k WHEN 'await' THEN 'awaited' ELSE 'publish' END, 'thick'
              FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o),
                   (VALUES (0, 'await'), (1, 'publish')) AS k(n, k)
             WHERE pg_catalog.jsonb_typeof(t.st -> k.k) = 'string'
            UNION ALL
            -- the compensated and cancelled ends: reached from the start node, where the
            -- compensations lead back to (dashed), then what they publish
            SELECT 5, 0, p.n * 2, 'b0', NULL, p.node, NULL, p.via, 'dashed'
              FROM (VALUES (2, 'compensated', 'x1', 'on failure'), (3, 'cancelled', 'x2', 'on cancel')) AS p(n, k, node, via)
             WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object' AND definition -> 'publish' ? p.k
            UNION ALL
            SELECT 5, 0, p.n * 2 + 1, p.node, NULL, evs ->> (definition -> 'publish' ->> p.k), NULL, 'publish', 'thick'
              FROM (VALUES (1, 'completed', 'x0'), (2, 'compensated', 'x1'), (3, 'cancelled', 'x2')) AS p(n, k, node)
             WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object' AND definition -> 'publish' ? p.k
            UNION ALL
            SELECT 6, 0, 0, 'b0', NULL, 'd0', NULL, NULL, 'dashed'
             WHERE definition ? 'deadline'
            ORDER BY 1, 2, 3 LIMIT max_edges) e;

    total := total + (SELECT pg_catalog.count(*)
                        FROM pg_catalog.jsonb_array_elements(steps) AS t(st),
                             (VALUES ('await'), ('publish')) AS k(k)
                       WHERE pg_catalog.jsonb_typeof(t.st -> k.k) = 'string')
                   + (SELECT pg_catalog.count(*) + pg_catalog.count(*) FILTER (WHERE p.k <> 'completed')
                        FROM (VALUES ('completed'), ('compensated'), ('cancelled')) AS p(k)
                       WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object'
                         AND definition -> 'publish' ? p.k)
                   + CASE WHEN definition ? 'deadline' THEN 1 ELSE 0 END;
    RETURN pg_catalog.jsonb_build_object('direction', 'LR', 'nodes', nodes, 'edges', edges)
           || CASE WHEN total > pg_catalog.jsonb_array_length(edges)
                   THEN pg_catalog.jsonb_build_object('edges_left_out', total - pg_catalog.jsonb_array_length(edges))
                   ELSE '{}' END;
END
$graph$;

/*
 * The graph of a choreography document: a start node (title lines) to the
 * start event, participants (p0, ...: by name) and events (e0, ...: in the
 * order first met: start, each participant's on, emits, fails and
 * compensation, completed, the deadline's), on edges event -> participant,
 * emits participant -> event, fails in red, compensations dashed, the
 * completed events to an end node, and the deadline.  Edges in that order,
 * at most max_edges (500) of them: "edges_left_out" counts the rest.
 * Set-based: linear in the size of the document.
 */
CREATE FUNCTION saga.diagram_choreography_graph(definition jsonb, title text[])
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $graph$
DECLARE
    max_edges CONSTANT integer := 500;     -- as in diagram_render
    order_ text[];               -- the events, each once, in the order first met
    evs jsonb;                   -- event type -> node id
    nodes jsonb;
    edges jsonb;
    total bigint;
    t text[] := title;
BEGIN
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
    SELECT COALESCE(pg_catalog.jsonb_object_agg(u.ev, 'e' || (u.n - 1)), '{}') INTO evs
      FROM pg_catalog.unnest(order_) WITH ORDINALITY AS u(ev, n);

    IF definition ? 'max_hops' THEN
        t := t || ('max hops ' || (definition ->> 'max_hops'));
    END IF;

    -- the nodes: start, participants by name, events (one class each: start, terminal,
    -- failure, deadline, compensation, plain), end, deadline
    WITH fails AS (SELECT DISTINCT f.ev
                     FROM pg_catalog.jsonb_each(definition -> 'participants') AS p,
                          pg_catalog.jsonb_array_elements_text(
                              CASE WHEN pg_catalog.jsonb_typeof(p.value -> 'fails') = 'array'
                                   THEN p.value -> 'fails' ELSE '[]' END) AS f(ev)),
         comps AS (SELECT DISTINCT p.value -> 'compensation' ->> 'emits' AS ev
                     FROM pg_catalog.jsonb_each(definition -> 'participants') AS p)
    SELECT pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'id', 'b0', 'shape', 'start', 'lines', pg_catalog.to_jsonb(t), 'classes', '[]'::jsonb))
           || COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                            'id', 'p' || (q.n - 1), 'shape', 'participant',
                            'lines', pg_catalog.jsonb_build_array(q.key),
                            'classes', '["participant"]'::jsonb) ORDER BY q.n)
                          FROM (SELECT p.key, pg_catalog.row_number() OVER (ORDER BY p.key COLLATE "C") AS n
                                  FROM pg_catalog.jsonb_each(definition -> 'participants') AS p) q), '[]')
           || COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                            'id', 'e' || (u.n - 1), 'shape', 'event', 'lines', pg_catalog.jsonb_build_array(u.ev),
                            'classes', pg_catalog.jsonb_build_array(CASE
                                WHEN u.ev = definition ->> 'start' THEN 'start_event'
                                WHEN EXISTS (SELECT FROM fails f WHERE f.ev = u.ev) THEN 'failure'
                                WHEN u.ev = definition -> 'deadline' ->> 'publish' THEN 'deadline'
                                WHEN EXISTS (SELECT FROM comps c WHERE c.ev = u.ev) THEN 'compensation'
                                WHEN definition -> 'completed' ? u.ev THEN 'terminal'
                                ELSE 'event' END)) ORDER BY u.n)
                          FROM pg_catalog.unnest(order_) WITH ORDINALITY AS u(ev, n)), '[]')
           || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                  'id', 'x0', 'shape', 'end', 'lines', '["completed"]'::jsonb, 'classes', '[]'::jsonb))
           || CASE WHEN definition ? 'deadline' THEN pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                  'id', 'd0', 'shape', 'deadline',
                  'lines', pg_catalog.jsonb_build_array('deadline after ' || (definition -> 'deadline' ->> 'after'),
                           CASE WHEN definition -> 'deadline' ? 'publish'
                                THEN 'then publish ' || (definition -> 'deadline' ->> 'publish') ELSE 'then stuck' END),
                  'classes', '["deadline"]'::jsonb)) ELSE '[]' END
      INTO nodes;

    -- the edges, in order: start, each participant's on, emits, fails, compensation on and
    -- emits, completed, deadline; the first max_edges built, all counted
    WITH e AS (
        SELECT 0 AS part, 0::bigint AS n, 0 AS k, 0::bigint AS o,
               'b0' AS src, evs ->> (definition ->> 'start') AS dst, NULL::text AS label,
               NULL::text AS style, NULL::text AS color
        UNION ALL
        SELECT 1, q.n, w.k, l.o,
               CASE WHEN w.k IN (1, 4) THEN evs ->> l.ev ELSE 'p' || (q.n - 1) END,
               CASE WHEN w.k IN (1, 4) THEN 'p' || (q.n - 1) ELSE evs ->> l.ev END,
               CASE w.k WHEN 2 THEN 'emits' WHEN 3 THEN 'fails' WHEN 4 THEN 'compensate' WHEN 5 THEN 'compensated' END,
               CASE WHEN w.k IN (4, 5) THEN 'dashed' END,
               CASE WHEN w.k = 3 THEN 'fail' END
          FROM (SELECT p.key, p.value, pg_catalog.row_number() OVER (ORDER BY p.key COLLATE "C") AS n
                  FROM pg_catalog.jsonb_each(definition -> 'participants') AS p) q
         CROSS JOIN LATERAL (VALUES (1, COALESCE(q.value -> 'on', '[]')),
                                    (2, COALESCE(q.value -> 'emits', '[]')),
                                    (3, COALESCE(q.value -> 'fails', '[]')),
                                    (4, COALESCE(q.value -> 'compensation' -> 'on', '[]')),
                                    (5, CASE WHEN q.value -> 'compensation' ->> 'emits' IS NOT NULL
                                             THEN pg_catalog.jsonb_build_array(q.value -> 'compensation' ->> 'emits')
                                             ELSE '[]' END)) AS w(k, arr)
         CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(w.arr) WITH ORDINALITY AS l(ev, o)
        UNION ALL
        SELECT 2, 0, 0, l.o, evs ->> l.ev, 'x0', NULL, NULL, NULL
          FROM pg_catalog.jsonb_array_elements_text(COALESCE(definition -> 'completed', '[]'))
               WITH ORDINALITY AS l(ev, o)
        UNION ALL
        SELECT 3, 0, 0, 0, 'b0', 'd0', NULL, 'dashed', NULL
         WHERE definition ? 'deadline'
        UNION ALL
        SELECT 3, 0, 0, 1, 'd0', evs ->> (definition -> 'deadline' ->> 'publish'), 'publish', 'dashed', NULL
         WHERE definition ? 'deadline' AND definition -> 'deadline' ? 'publish')
    SELECT (SELECT pg_catalog.count(*) FROM e),
           (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'from', f.src, 'to', f.dst, 'label', f.label, 'style', f.style, 'color', f.color))
                       ORDER BY f.part, f.n, f.k, f.o), '[]')
              FROM (SELECT * FROM e ORDER BY e.part, e.n, e.k, e.o LIMIT max_edges) f)
      INTO total, edges;
    RETURN pg_catalog.jsonb_build_object('direction', 'LR', 'nodes', nodes, 'edges', edges)
           || CASE WHEN total > pg_catalog.jsonb_array_length(edges)
                   THEN pg_catalog.jsonb_build_object('edges_left_out', total - pg_catalog.jsonb_array_length(edges))
                   ELSE '{}' END;
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
 * that failed is a crossed arrow.  An event that started a saga (start_saga:
 * saga.instances.event_id) or ended await steps (history "succeeded" with
 * {"event_id"}) goes to a participant "saga <definition>", labelled "starts
 * saga N" or "ends <step> of saga N".  An event nothing received is a note,
 * with its hops only past the hop limit.
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
    b record;
    bridged jsonb := '{}';                 -- event id -> what it did to sagas: started, ended a step
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

    -- what the events did to the sagas of this correlation id: the sagas an event started
    -- (start_saga: saga.instances.event_id) and the await steps it ended (history "succeeded"
    -- with detail {"event_id"}); both sagas carry the event's correlation id
    SELECT COALESCE(pg_catalog.jsonb_object_agg(y.ev, y.arr), '{}') INTO bridged
      FROM (SELECT x.ev, pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'name', x.name, 'what', x.what, 'start', x.k = 0) ORDER BY x.k, x.sid, x.hid) AS arr
              FROM (SELECT i.event_id::text AS ev, 0 AS k, i.id AS sid, 0::bigint AS hid, i.name,
                           'starts saga ' || i.id AS what
                      FROM saga.instances i
                     WHERE i.correlation_id = cid AND i.event_id IS NOT NULL
                    UNION ALL
                    SELECT h.detail ->> 'event_id', 1, i.id, h.id, i.name,
                           'ends ' || h.step || ' of saga ' || i.id
                      FROM saga.instances i
                      JOIN saga.history h ON h.saga_id = i.id
                     WHERE i.correlation_id = cid AND h.event = 'succeeded' AND h.detail ? 'event_id') x
             GROUP BY x.ev) y;

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
        FOR r IN SELECT x.topic, x.state, x.arrow, x.saga
                   FROM (SELECT o.topic, NULL::text AS saga, CASE WHEN o.lease_owner IS NOT NULL THEN 'leased' ELSE 'pending' END
                                || CASE WHEN o.headers ->> 'replay' = 'true' THEN ', replay' ELSE '' END AS state,
                                '-)' AS arrow, o.headers ->> 'replay' = 'true' AS replay
                           FROM saga.outbox o WHERE o.event_id = ev.id AND o.kind = 'event'
                         UNION ALL
                         SELECT d.topic, NULL, 'dead letter'
                                || CASE WHEN d.headers ->> 'replay' = 'true' THEN ', replay' ELSE '' END,
                                '-x', d.headers ->> 'replay' = 'true'
                           FROM saga.dead_letters d WHERE d.event_id = ev.id
                         UNION ALL
                         SELECT s.topic, s.options ->> 'start_saga', 'filter error', '-x', true
                           FROM saga.filter_errors fe JOIN saga.subscriptions s ON s.id = fe.subscription_id
                          WHERE fe.event_id = ev.id) x
                  ORDER BY x.topic COLLATE "C", x.state COLLATE "C" LOOP
            IF r.state NOT LIKE '%replay' AND r.state <> 'filter error' THEN
                known := known + 1;
            END IF;
            arrows := arrows + 1;
            CONTINUE WHEN arrows > max_arrows;
            pkey := CASE WHEN r.saga IS NOT NULL THEN 'saga:' || r.saga ELSE 'topic:' || r.topic END;
            IF NOT parts ? pkey THEN
                parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
                decl := decl || ('    participant ' || (parts ->> pkey) || ' as '
                                 || saga.diagram_escape(CASE WHEN r.saga IS NOT NULL THEN 'saga ' || r.saga
                                                             ELSE r.topic END, 'mermaid'));
            END IF;
            body := body || ('    ' || pub || r.arrow || (parts ->> pkey) || ': '
                             || saga.diagram_escape(label || ' (' || CASE WHEN ev.late THEN 'late, ' ELSE '' END
                                                    || r.state || ')', 'mermaid'));
        END LOOP;

        -- the sagas it started (each counts as a delivery) and the await steps it ended
        FOR b IN SELECT x.value ->> 'name' AS name, x.value ->> 'what' AS what, (x.value ->> 'start')::boolean AS start
                   FROM pg_catalog.jsonb_array_elements(COALESCE(bridged -> (ev.id::text), '[]'))
                        WITH ORDINALITY AS x(value, o)
                  ORDER BY x.o LOOP
            IF b.start THEN
                known := known + 1;
            END IF;
            arrows := arrows + 1;
            CONTINUE WHEN arrows > max_arrows;
            pkey := 'saga:' || b.name;
            IF NOT parts ? pkey THEN
                parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
                decl := decl || ('    participant ' || (parts ->> pkey) || ' as '
                                 || saga.diagram_escape('saga ' || b.name, 'mermaid'));
            END IF;
            body := body || ('    ' || pub || '->>' || (parts ->> pkey) || ': '
                             || saga.diagram_escape(label || ' (' || CASE WHEN ev.late THEN 'late, ' ELSE '' END
                                                    || b.what || ')', 'mermaid'));
        END LOOP;

        -- the done deliveries: the subscriptions that stand for them (start_saga ones are
        -- the sagas above), when they add up
        IF ev.deliveries > known THEN
            SELECT pg_catalog.array_agg(s.topic ORDER BY s.topic COLLATE "C") INTO cands
              FROM saga.subscriptions s
             WHERE s.event_type = ev.type AND s.created_at <= ev.published_at
               AND NOT s.options ? 'start_saga'
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
                                        ELSE ': not delivered' END, 'mermaid'));
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
'saga.diagram(name, format, version) -> text: draw the latest (or the given) version of the saga definition or choreography of that name, as a Mermaid flowchart (format ''mermaid'', the default: the text starts with "flowchart LR") or Graphviz DOT (''dot'': "digraph"). A saga definition: its steps (topic steps as boxes, SQL steps as subroutines, await steps as hexagons), their "after" edges, compensations as dashed edges back to the steps they follow, the pivot, the events it publishes or awaits (a compensated or cancelled end that publishes is reached by a dashed edge from the start node, "on failure" or "on cancel"), and its deadline. A choreography: participants and events, on, emits, fails (red) and compensation (dashed) edges, the start event, the completed events, and the deadline. Deterministic. At most 500 edges are drawn (Mermaid''s own default maxEdges), the first in that order; past that a last node (o0) says how many were left out (nodes are all drawn, bounded by the definition limits), so the text is bounded and the time linear in the document. Errors: 22004 null name or format, 22023 unknown format, 42704 no such name or version. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.diagram(bigint, text) IS
'saga.diagram(saga_id, format) -> text: draw one saga as saga.diagram(name) draws its definition version, with each step''s status (pending, ready, running, succeeded, failed, compensating, compensated, skipped: a style class each), attempt and error, and the saga''s status and correlation id; at most 500 edges, as saga.diagram(name). Errors: 22004 null argument, 22023 unknown format, 42704 no such saga. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.flow_diagram(text) IS
'saga.flow_diagram(correlation_id) -> text: a Mermaid sequenceDiagram of the events of a correlation id in publish order (at most 1000; a last note counts the rest), each from the participant of its flows'' choreography that emits its type (else "deadline" for a deadline event, else the publishing role, as an actor) to the topics that have its delivery: done (solid), pending or leased (open arrow), dead letter or filter error (crossed); an event that started a saga (start_saga) or ended await steps as an arrow to a participant "saga <definition>" ("starts saga N", "ends <step> of saga N"); late events marked, events nothing received as a note (with the hops when past the hop limit), and a note with each flow''s status. Errors: 22004 null correlation_id, 42704 no events or flows with that correlation id. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.timeline(bigint) IS
'saga.timeline(saga_id) -> text: a Mermaid gantt of one saga''s step runs and compensations from saga.history, each from its dispatch to its outcome (done, crit for a failure, active while unfinished, up to the latest history entry), times as Unix milliseconds (dateFormat x). Errors: 22004 null saga_id, 42704 no such saga. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.diagram_escape(text, text) IS
'internal to the diagrams: a string made safe inside a quoted Mermaid (''mermaid'', ''gantt'') or DOT (''dot'') label';
COMMENT ON FUNCTION saga.diagram_render(jsonb, text) IS
'internal to the diagrams: a graph {nodes, edges, edges_left_out} as Mermaid flowchart or DOT text, at most 500 edges, then a node o0 counting those left out';
COMMENT ON FUNCTION saga.diagram_saga_graph(jsonb, text[], jsonb) IS
'internal to the diagrams: the graph of a saga definition document, with step states for one saga; the first 500 edges, edges_left_out counts the rest';
COMMENT ON FUNCTION saga.diagram_choreography_graph(jsonb, text[]) IS
'internal to the diagrams: the graph of a choreography document; the first 500 edges, edges_left_out counts the rest';

/*
 * Change data capture: with saga.cdc on (and wal_level = logical) every
 * dispatch of a task (written to the outbox, or given back by a retry, a
 * release, a lapse or saga.retry) is written as a transactional logical
 * decoding message with the prefix 'saga' (src/cdc.c), for Debezium and any
 * other consumer of logical decoding.  The WHEN clause keeps the trigger
 * from being called at all while saga.cdc is off; a backend that has not
 * loaded the library yet calls it once, which loads it.
 */
CREATE FUNCTION saga.outbox_dispatch() RETURNS trigger
    LANGUAGE C SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'saga_outbox_dispatch';
COMMENT ON FUNCTION saga.outbox_dispatch() IS
'trigger of saga.outbox: with saga.cdc on and wal_level = logical, writes one transactional logical decoding message (prefix ''saga'') per dispatch of a task, a JSON object {id (a random UUID), aggregate_type (the topic), aggregate_id (the correlation id), type (action, compensate, event), task_id, saga_id, step, event_id, attempt, visible_at (ISO 8601, UTC), payload (a JSON string; null when the message would pass 512 kB), payload_omitted, headers, traceparent}; see README, "Change data capture". Not callable otherwise (39P01).';
REVOKE ALL ON FUNCTION saga.outbox_dispatch() FROM PUBLIC;

CREATE TRIGGER outbox_dispatch
    AFTER INSERT OR UPDATE OF visible_at, lease_owner, attempt ON saga.outbox
    FOR EACH ROW
    WHEN (pg_catalog.current_setting('saga.cdc', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION saga.outbox_dispatch();
