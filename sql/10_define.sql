--
-- 10_define: saga.define validates a definition document, stores it, and
-- versions it.  Every invalid document is refused with an SQLSTATE, the JSON
-- path in DETAIL, and nothing stored.
--
-- functions for the "sql" keys
CREATE SCHEMA d_fn;
CREATE FUNCTION d_fn.ok(jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $1';
CREATE FUNCTION d_fn.wrong_arg(text) RETURNS jsonb LANGUAGE sql AS 'SELECT ''{}''::jsonb';
CREATE FUNCTION d_fn.wrong_ret(jsonb) RETURNS text LANGUAGE sql AS 'SELECT ''x''';
CREATE SCHEMA shop;
CREATE FUNCTION shop.release_stock(jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT ''{}''::jsonb';

--
-- Valid definitions.
--
SELECT saga.define('d_chain', '{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t"}]}');
SELECT name, version, step_names, owner = current_user AS owned_by_me,
       created_at <= now() AS created
  FROM saga.definitions WHERE name = 'd_chain';

-- the example of the design contract (README, "Define a saga"), with a deadline
SELECT saga.define('d_full', $${
  "steps": [
    {"name": "charge_payment", "topic": "payments",
     "compensate": {"topic": "payments"},
     "timeout": "30 seconds",
     "retry": {"max_attempts": 5, "initial_delay": "1 second", "backoff": 2.0,
               "max_delay": "1 minute", "jitter": true}},
    {"name": "reserve_inventory", "topic": "inventory",
     "compensate": {"sql": "shop.release_stock"}},
    {"name": "notify_customer", "topic": "notifications", "after": ["reserve_inventory"],
     "pivot": false}
  ],
  "deadline": "1 hour"
}$$);
SELECT step_names FROM saga.definitions WHERE name = 'd_full';

-- fan-out and join; "after" may name a step that comes later in the list
SELECT saga.define('d_graph', $${"steps": [
  {"name": "join", "topic": "d_t", "after": ["left", "right"]},
  {"name": "left", "topic": "d_t", "after": []},
  {"name": "right", "topic": "d_t", "after": []},
  {"name": "sql_step", "sql": "d_fn.ok", "after": ["join"], "async": false,
   "compensate": {"sql": "d_fn.ok"}},
  {"name": "last", "topic": "d_t", "pivot": true, "retry": {"max_attempts": 1}}
]}$$);

-- the longest names: a 63-character saga and step name, a 48-character topic
SELECT saga.define('d' || repeat('x', 62),
       jsonb_build_object('steps', jsonb_build_array(
           jsonb_build_object('name', 's' || repeat('x', 62), 'topic', 't' || repeat('x', 47)))));
SELECT length(name) AS name_length, length(step_names[1]) AS step_length
  FROM saga.definitions WHERE name LIKE 'dxxx%';

-- retry keys one at a time; intervals in any input syntax
SELECT saga.define('d_retry', $${"steps": [
  {"name": "a", "topic": "d_t", "retry": {"max_attempts": 1}},
  {"name": "b", "topic": "d_t", "retry": {"initial_delay": "00:00:01.5"}},
  {"name": "c", "topic": "d_t", "retry": {"backoff": 1}},
  {"name": "d", "topic": "d_t", "retry": {"max_delay": "P1D"}},
  {"name": "e", "topic": "d_t", "retry": {"jitter": false}, "timeout": "1 day"}
]}$$);

--
-- Versions.
--
-- the identical document: the latest version, nothing stored
SELECT saga.define('d_chain', '{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t"}]}');
-- the same document written differently (key order, white space) is identical
SELECT saga.define('d_chain', '{"steps":[{"topic":"d_t","name":"a"},{"topic":"d_t","name":"b"}]}');
SELECT count(*) AS versions FROM saga.definitions WHERE name = 'd_chain';
-- a changed document stores version 2
SELECT saga.define('d_chain', '{"steps": [{"name": "a", "topic": "d_t"}, {"name": "c", "topic": "d_t"}]}');
SELECT saga.define('d_chain', '{"steps": [{"name": "a", "topic": "d_t"}, {"name": "c", "topic": "d_t"}]}');
-- going back to the first document is a change from the latest: version 3
SELECT saga.define('d_chain', '{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t"}]}');
SELECT version, step_names FROM saga.definitions WHERE name = 'd_chain' ORDER BY version;

-- a NULL argument is an error (22004), as for every entry point
SELECT saga_test.err($$SELECT saga.define(NULL, '{"steps": [{"name": "a", "topic": "d_t"}]}')$$) AS null_name;
SELECT saga_test.err($$SELECT saga.define('d_null', NULL)$$) AS null_definition;

--
-- Invalid definitions.
--
SELECT count(*) AS definitions_before FROM saga.definitions;

-- the document is not an object, or has the wrong JSON types
SELECT saga_test.define_err('[]');
SELECT saga_test.define_err('"steps"');
SELECT saga_test.define_err('null');
SELECT saga_test.define_err('{}');
SELECT saga_test.define_err('{"steps": {}}');
SELECT saga_test.define_err('{"steps": null}');
SELECT saga_test.define_err('{"steps": ["a"]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}, 7]}');
SELECT saga_test.define_err('{"steps": [{"name": 7, "topic": "d_t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": 7}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "sql": ["d_fn.ok"]}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "pivot": "yes"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "async": "no"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "after": null}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}], "deadline": 3600}');

-- empty step list
SELECT saga_test.define_err('{"steps": []}');

-- unknown keys: top level, step, retry, compensate
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}], "timeout": "1 s"}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}], "Steps": []}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t", "retries": 3}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"delay": "1 s"}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "compensate": {"queue": "d_t"}}]}');

-- missing step name
SELECT saga_test.define_err('{"steps": [{"topic": "d_t"}]}');

-- bad step names
SELECT saga_test.define_err('{"steps": [{"name": "A", "topic": "d_t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "1a", "topic": "d_t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a-b", "topic": "d_t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "", "topic": "d_t"}]}');
SELECT saga_test.define_err(jsonb_build_object('steps', jsonb_build_array(
           jsonb_build_object('name', 's' || repeat('x', 63), 'topic', 'd_t')))::text);

-- bad topic names (also of a compensation)
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "D_t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d-t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": ""}]}');
SELECT saga_test.define_err(jsonb_build_object('steps', jsonb_build_array(
           jsonb_build_object('name', 'a', 'topic', 't' || repeat('x', 48))))::text);
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "compensate": {"topic": "Undo"}}]}');

-- bad saga names
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}]}', 'Bad');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}]}', '1abc');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}]}', 'a b');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}]}', '');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}]}', 'd' || repeat('x', 63));

-- a step needs exactly one of topic and sql
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "sql": "d_fn.ok"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "after": ["a"]}]}');

-- duplicate step names
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t"}, {"name": "a", "topic": "d_t"}]}');

-- after: wrong types, unknown names
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t", "after": "a"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t", "after": [1]}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}, {"name": "b", "topic": "d_t", "after": ["a", "z"]}]}');

-- cycles: a -> b -> a, a step after itself, a longer ring
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "after": ["b"]}, {"name": "b", "topic": "d_t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "after": ["a"]}]}');
SELECT saga_test.define_err('{"steps": [{"name": "x", "topic": "d_t", "after": []}, {"name": "a", "topic": "d_t", "after": ["c"]}, {"name": "b", "topic": "d_t"}, {"name": "c", "topic": "d_t"}]}');

-- bad intervals
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "timeout": "soon"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "timeout": "0 seconds"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "timeout": "-5 seconds"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "timeout": 30}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}], "deadline": "tomorrow-ish"}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t"}], "deadline": "-1 hour"}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"initial_delay": "0 s"}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"initial_delay": "later"}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"max_delay": "x"}}]}');

-- bad retry values
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": 3}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"max_attempts": 0}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"max_attempts": -1}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"max_attempts": 2.5}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"max_attempts": "3"}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"max_attempts": 10000000000}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"backoff": 0.5}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"backoff": "2"}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"jitter": "yes"}}]}');
-- initial_delay above the default max_delay (5 minutes) raises the cap: accepted
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"initial_delay": "1 hour"}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "retry": {"initial_delay": "2 s", "max_delay": "1 s"}}]}');

-- bad compensate
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "compensate": "d_t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "compensate": {}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "compensate": {"topic": "d_t", "sql": "d_fn.ok"}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "d_t", "compensate": {"sql": "d_fn.missing"}}]}');

-- the sql function must exist as schema.fn(jsonb) returns jsonb
SELECT saga_test.define_err('{"steps": [{"name": "a", "sql": "d_fn.missing"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "sql": "no_schema.ok"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "sql": "d_fn.wrong_arg"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "sql": "d_fn.wrong_ret"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "sql": "ok"}]}');

-- async sql steps are not implemented yet
SELECT saga_test.define_err('{"steps": [{"name": "a", "sql": "d_fn.ok", "async": true}]}');

-- an error in a new version leaves the stored versions alone
SELECT saga_test.define_err('{"steps": []}', 'd_chain');
SELECT max(version) AS d_chain_version FROM saga.definitions WHERE name = 'd_chain';

SELECT count(*) AS definitions_after FROM saga.definitions;
SELECT name, max(version) AS version FROM saga.definitions GROUP BY name ORDER BY name COLLATE "C";
