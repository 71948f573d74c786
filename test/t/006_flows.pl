# 006_flows.pl: the time-based work of choreographies, done by the worker
# with no client calling anything: a flow's deadline publishes the declared
# event (or turns the flow stuck), exactly once, also when the deadline
# passes while the server is down; and retention purges finished flows and
# old events while keeping what a pending delivery, a dead letter or an
# unfinished flow still needs, without the worker spinning on what it keeps.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = saga_node('flows');

ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname = 'postgres'",
		'1'),
	'the saga worker runs');

# the events of a correlation id: "type<-cause type" ..., in publish order
sub story
{
	my ($corr) = @_;
	return sql($node, qq{
SELECT string_agg(e.type || coalesce('<-' || c.type, ''), ' ' ORDER BY e.id)
  FROM saga.events e LEFT JOIN saga.events c ON c.id = e.causation_id
 WHERE e.correlation_id = '$corr'});
}

# "status waiting_on" of a flow
sub flow
{
	my ($chor, $corr) = @_;
	return sql($node,
		"SELECT status || ' ' || waiting_on::text FROM saga.flows "
		  . "WHERE choreography = '$chor' AND correlation_id = '$corr'");
}

# one delivery of a topic, claimed: publish $answer (caused by the delivered
# event) and complete it; returns "<delivered type> <answer id>"
sub act
{
	my ($topic, $answer, $payload) = @_;
	$payload //= '{}';
	return sql($node, qq{
WITH t AS (SELECT * FROM saga.claim('$topic', 'tap'))
SELECT (t.headers ->> 'event_type') || ' '
       || saga.publish('$answer', '$payload', causation_id => (t.headers ->> 'event_id')::bigint)
       || substr(saga.complete(t.id, '{}', t.lease)::text, 1, 0)
  FROM t});
}

# transactions committed in the database over $secs seconds: a worker with
# nothing due sleeps; a spinning one commits thousands
sub commits_over
{
	my ($secs) = @_;
	my $q = "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'";
	my $before = sql($node, $q);
	usleep($secs * 1_000_000);
	# the worker's counts go out at most once a second, and before it sleeps
	usleep(1_100_000);
	return sql($node, $q) - $before;
}

# --- a deadline that publishes its event ----------------------------------------

sql(
	$node, q{
SELECT saga.define_choreography('dl', '{
    "start": "DlPlaced",
    "participants": {
        "dl_pay":  {"on": ["DlPlaced"], "emits": ["DlCharged"], "fails": ["DlDeclined"],
                    "compensation": {"on": ["DlTimedOut"], "emits": "DlRefunded"}},
        "dl_ship": {"on": ["DlCharged"], "emits": ["DlShipped"],
                    "compensation": {"on": ["DlTimedOut"], "emits": "DlUnshipped"}}},
    "completed": ["DlShipped"],
    "deadline": {"after": "2 seconds", "publish": "DlTimedOut"}}');
SELECT saga.define_choreography('st', '{
    "start": "StPlaced",
    "participants": {"st_a": {"on": ["StPlaced"], "emits": ["StDone"]}},
    "completed": ["StDone"],
    "deadline": {"after": "1 second"}}');
});

# two flows that leave running before their deadline: it must not fire for them
sql(
	$node, q{
SELECT saga.publish('DlShipped', '{}', causation_id =>
         saga.publish('DlCharged', '{}', causation_id => saga.publish('DlPlaced', '{}', 'dl-2')))});
sql($node,
	"SELECT saga.publish('DlDeclined', '{}', causation_id => saga.publish('DlPlaced', '{}', 'dl-3'))");
# their deliveries are consumed
is( sql($node, q{
SELECT string_agg(topic || ':' || (headers ->> 'correlation_id') || ':' || saga.complete(id, '{}', lease),
                  ' ' ORDER BY topic, headers ->> 'correlation_id')
  FROM (SELECT * FROM saga.claim('dl_pay', 'tap', 10) UNION ALL SELECT * FROM saga.claim('dl_ship', 'tap', 10)) t}),
	'dl_pay:dl-2:true dl_pay:dl-3:true dl_ship:dl-2:true',
	'deadline: dl_pay and dl_ship take the deliveries of dl-2 and dl-3');

sql($node, "SELECT saga.publish('DlPlaced', '{\"order\": 1}', 'dl-1')");
sql($node, "SELECT saga.publish('StPlaced', '{}', 'st-1')");
my ($got, $charged) = split / /, act('dl_pay', 'DlCharged', '{"paid": 99.5}');
is($got, 'DlPlaced', 'deadline: dl_pay gets DlPlaced and answers DlCharged');

is( sql($node,
		"SELECT status || ' ' || waiting_on::text || ' ' || (last_event_id = $charged) || ' ' "
		  . "|| (deadline_at = started_at + interval '2 seconds') FROM saga.flows WHERE correlation_id = 'dl-1'"
	),
	'running {dl_ship} true true',
	'deadline: dl-1 runs, waits on dl_ship, its last event is DlCharged, due 2 s after its start');
is(flow('dl', 'dl-2'), 'completed {}', 'deadline: dl-2 completed before its deadline');
is(flow('dl', 'dl-3'), 'compensated {}',
	'deadline: dl-3 failed before its deadline (nothing to undo: compensated)');
is( sql($node,
		"SELECT count(*) FROM saga.flows WHERE correlation_id IN ('dl-2', 'dl-3') AND deadline_at IS NOT NULL"
	),
	'0',
	'deadline: the finished flows have no deadline left');

ok( poll_until(
		$node,
		"SELECT count(*) FROM saga.events WHERE correlation_id = 'dl-1' AND type = 'DlTimedOut'", '1'),
	'deadline: the worker publishes DlTimedOut with no client action');
my $timed_out = sql($node,
	"SELECT id FROM saga.events WHERE correlation_id = 'dl-1' AND type = 'DlTimedOut'");
is( sql($node, qq{
SELECT (e.causation_id = $charged) || ' ' || e.payload::text || ' ' || e.hops || ' ' || e.deliveries || ' '
       || (e.published_at >= f.started_at + interval '2 seconds') || ' '
       || (split_part(e.traceparent, '-', 2) = split_part(c.traceparent, '-', 2)) || ' '
       || (e.traceparent <> c.traceparent) || ' ' || e.late
  FROM saga.events e JOIN saga.events c ON c.id = $charged
  JOIN saga.flows f ON f.choreography = 'dl' AND f.correlation_id = 'dl-1'
 WHERE e.id = $timed_out}),
	'true {"deadline": "2 seconds", "waiting_on": ["dl_ship"]} 2 2 true true true false',
	'deadline: DlTimedOut is caused by the flow\'s last event (hops 2, same trace, new span), '
	  . 'payload {"deadline", "waiting_on"}, not before the deadline, 2 deliveries');
is(story('dl-1'), 'DlPlaced DlCharged<-DlPlaced DlTimedOut<-DlCharged',
	'deadline: the story of dl-1');
is( sql($node,
		"SELECT status || ' ' || waiting_on::text || ' ' || (last_event_id = $timed_out) || ' ' "
		  . "|| (deadline_at IS NULL) || ' ' || (finished_at IS NULL) FROM saga.flows WHERE correlation_id = 'dl-1'"
	),
	'compensating {dl_pay} true true true',
	'deadline: dl-1 turns compensating and waits on dl_pay, the participant that acted');
is( sql($node, qq{
SELECT string_agg(topic || ':' || (headers ->> 'event_type') || ':' || (headers ->> 'correlation_id')
                  || ':' || (headers ->> 'causation_id' = '$charged'), ' ' ORDER BY topic)
  FROM saga.outbox WHERE event_id = $timed_out AND kind = 'event'}),
	'dl_pay:DlTimedOut:dl-1:true dl_ship:DlTimedOut:dl-1:true',
	'deadline: DlTimedOut is in the outbox for both participants that compensate on it');
is( sql($node,
		"SELECT count(*) FROM saga.events WHERE correlation_id IN ('dl-2', 'dl-3') AND type = 'DlTimedOut'"
	),
	'0',
	'deadline: nothing published for the flows that finished before their deadline');

is((split / /, act('dl_pay', 'DlRefunded'))[0], 'DlTimedOut',
	'deadline: dl_pay gets DlTimedOut and answers DlRefunded');
is(flow('dl', 'dl-1'), 'compensated {}', 'deadline: then dl-1 is compensated');
is((split / /, act('dl_ship', 'DlShipped'))[0], 'DlCharged',
	'deadline: dl_ship acts on DlCharged only now');
is( sql($node,
		"SELECT late FROM saga.events WHERE correlation_id = 'dl-1' AND type = 'DlShipped'"),
	't', 'deadline: its DlShipped is late');
is(flow('dl', 'dl-1'), 'compensated {}', 'deadline: and does not reopen dl-1');

# --- a deadline with nothing to publish: stuck -------------------------------------

ok(poll_until($node, "SELECT status FROM saga.flows WHERE correlation_id = 'st-1'", 'stuck'),
	'stuck: the flow without a deadline event turns stuck with no client action');
my $st_flow = sql($node, "SELECT id FROM saga.flows WHERE correlation_id = 'st-1'");
is( sql($node,
		"SELECT waiting_on::text || ' ' || (finished_at >= started_at + interval '1 second') || ' ' "
		  . "|| (deadline_at IS NULL) FROM saga.flows WHERE id = $st_flow"),
	'{} true true',
	'stuck: it is finished, not before its deadline, and waits on nobody');
is( sql($node, qq{
SELECT kind || ' ' || correlation_id || ' ' || flow_id || ' ' || name || ' ' || status || ' '
       || (saga_id IS NULL) || ' ' || (detail ->> 'reason') || ' ' || (detail ->> 'deadline') || ' '
       || (detail -> 'waiting_on')::text
  FROM saga.incidents WHERE flow_id = $st_flow}),
	"stuck_flow st-1 $st_flow st stuck true deadline passed 1 second [\"st_a\"]",
	'stuck: saga.incidents lists it, kind stuck_flow, with its correlation id and why');
is(story('st-1'), 'StPlaced', 'stuck: no event is published for it');
act('st_a', 'StDone');
is(sql($node, "SELECT late FROM saga.events WHERE correlation_id = 'st-1' AND type = 'StDone'"),
	't', 'stuck: an answer after that is late');
is(flow('st', 'st-1'), 'stuck {}', 'stuck: and the flow stays stuck');

# --- a deadline that passes while the server is down ------------------------------

sql(
	$node, q{
SELECT saga.define_choreography('rs', '{
    "start": "RsPlaced",
    "participants": {
        "rs_a": {"on": ["RsPlaced"], "emits": ["RsPaid"],
                 "compensation": {"on": ["RsTimedOut"], "emits": "RsRefunded"}},
        "rs_b": {"on": ["RsPaid"], "emits": ["RsDone"]}},
    "completed": ["RsDone"],
    "deadline": {"after": "3 seconds", "publish": "RsTimedOut"}}');
});

sub deadline_across_restart
{
	my ($mode, $race_tick) = @_;
	my $corr = "rs-$mode" . ($race_tick ? '-tick' : '');
	my $what = "restart ($mode" . ($race_tick ? ', saga.tick() racing the worker' : '') . ')';

	sql($node, "SELECT saga.publish('RsPlaced', '{}', '$corr')");
	my ($got, $paid) = split / /, act('rs_a', 'RsPaid');
	is($got, 'RsPlaced', "$what: rs_a gets RsPlaced and answers RsPaid");
	my $due = sql($node,
		"SELECT extract(epoch FROM deadline_at) FROM saga.flows WHERE correlation_id = '$corr'");
	$node->stop($mode);
	my $wait = $due + 0.5 - time();
	usleep($wait * 1_000_000) if $wait > 0;
	my $down = time();
	$node->start;

	if ($race_tick)
	{
		# the worker's first round and saga.tick() go for the same flow
		sql($node, "SELECT saga.tick()") for 1 .. 5;
	}
	ok( poll_until(
			$node,
			"SELECT count(*) > 0 FROM saga.events WHERE correlation_id = '$corr' AND type = 'RsTimedOut'",
			't'),
		"$what: the deadline that passed while the server was down fires after the start");
	# more rounds: the worker's, and saga.tick()'s
	usleep(1_000_000);
	is( sql($node, "SELECT (saga.tick() ->> 'flow_deadlines')::int + (saga.tick() ->> 'flow_deadlines')::int"),
		'0', "$what: saga.tick() finds no flow deadline due");
	usleep(500_000);
	is( sql($node,
			"SELECT count(*) || ' ' || bool_and(causation_id = $paid) || ' ' "
			  . "|| bool_and(published_at >= to_timestamp($down)) "
			  . "FROM saga.events WHERE correlation_id = '$corr' AND type = 'RsTimedOut'"),
		'1 true true',
		"$what: RsTimedOut is published exactly once, after the start, caused by RsPaid");
	is(flow('rs', $corr), 'compensating {rs_a}',
		"$what: the flow is compensating, waiting on rs_a");
	is( sql($node,
			"SELECT count(*) FROM saga.outbox o JOIN saga.events e ON e.id = o.event_id "
			  . "WHERE e.correlation_id = '$corr' AND e.type = 'RsTimedOut'"),
		'1', "$what: one delivery of it, to rs_a");
	is((split / /, act('rs_a', 'RsRefunded'))[0], 'RsTimedOut', "$what: rs_a gets it and refunds");
	is(flow('rs', $corr), 'compensated {}', "$what: the flow is compensated");
}

deadline_across_restart('fast', 0);
deadline_across_restart('immediate', 0);
deadline_across_restart('immediate', 1);

# --- the worker is idle when nothing is due ----------------------------------------

my $idle = commits_over(2);
cmp_ok($idle, '<', 100,
	"idle: with nothing due the worker sleeps ($idle commits in the database over ~3 s)");

# --- retention --------------------------------------------------------------------

sql(
	$node, q{
SELECT saga.define_choreography('rt', '{
    "start": "RtPlaced",
    "participants": {"rt_a": {"on": ["RtPlaced"], "emits": ["RtDone"]}},
    "completed": ["RtDone"]}');
-- not part of the choreography: an audit trail, and a consumer that gives up
SELECT saga.subscribe('RtDone', 'rt_audit', '{"filter": "$.audit == true"}');
SELECT saga.subscribe('RtDone', 'rt_dlq', '{"filter": "$.dead == true"}');
});
# rt-gone: finished, every delivery done
sql($node, "SELECT saga.publish('RtPlaced', '{}', 'rt-gone')");
act('rt_a', 'RtDone');
# rt-pending: finished, its RtDone still to be delivered to rt_audit
sql($node, "SELECT saga.publish('RtPlaced', '{}', 'rt-pending')");
act('rt_a', 'RtDone', '{"audit": true}');
# rt-dead: finished, its RtDone a dead letter of rt_dlq
sql($node, "SELECT saga.publish('RtPlaced', '{}', 'rt-dead')");
act('rt_a', 'RtDone', '{"dead": true}');
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.fail(id, '{\"reason\": \"no\"}', false, lease)) FROM saga.claim('rt_dlq', 'tap')"
	),
	'1',
	'retention: rt_dlq gives up on its delivery');
is( sql($node,
		"SELECT count(*) FROM saga.dead_letters d JOIN saga.events e ON e.id = d.event_id WHERE e.correlation_id = 'rt-dead'"
	),
	'1', 'retention: it is a dead letter');
# rt-open: running, its participant consumed RtPlaced and has not answered;
# an event of its correlation outside the graph, with no subscriber
sql($node, "SELECT saga.publish('RtPlaced', '{}', 'rt-open')");
sql($node, "SELECT count(saga.complete(id, '{}', lease)) FROM saga.claim('rt_a', 'tap')");
sql($node, "SELECT saga.publish('RtNote', '{}', 'rt-open')");
# rt-lone: an event of no flow, with no subscriber
sql($node, "SELECT saga.publish('RtNote', '{}', 'rt-lone')");

is( sql($node,
		"SELECT string_agg(correlation_id || ' ' || status, ', ' ORDER BY id) FROM saga.flows WHERE choreography = 'rt'"
	),
	'rt-gone completed, rt-pending completed, rt-dead completed, rt-open running',
	'retention: three finished flows and a running one');
is( sql($node,
		"SELECT count(*) FROM saga.outbox WHERE event_id IN (SELECT id FROM saga.events WHERE correlation_id LIKE 'rt-%')"
	),
	'1',
	'retention: one delivery pending (rt-pending\'s RtDone to rt_audit)');

# all of it older than the retention about to be set
usleep(1_200_000);
sql($node, "ALTER SYSTEM SET saga.retention = 1");
sql($node, "SELECT pg_reload_conf()");
ok( poll_until(
		$node,
		"SELECT count(*) FROM saga.flows WHERE choreography = 'rt' AND status = 'completed'", '0'),
	'retention: after a reload with saga.retention = 1 s the worker purges the finished flows');
ok( poll_until(
		$node,
		"SELECT count(*) FROM saga.events WHERE correlation_id IN ('rt-gone', 'rt-lone')", '0'),
	'retention: and the events of rt-gone, and the lone event');
is( sql($node,
		"SELECT string_agg(correlation_id || ':' || type, ' ' ORDER BY id) FROM saga.events WHERE correlation_id LIKE 'rt-%'"
	),
	'rt-pending:RtDone rt-dead:RtDone rt-open:RtPlaced rt-open:RtNote',
	'retention: what stays: the event with a pending delivery, the dead letter\'s, the running flow\'s');
is(flow('rt', 'rt-open'), 'running {rt_a}', 'retention: the running flow stays');
is( sql($node,
		"SELECT (SELECT count(*) FROM saga.flows WHERE status IN ('completed', 'compensated', 'stuck')) || ' ' "
		  . "|| (SELECT count(*) FROM saga.flows WHERE correlation_id IN ('dl-1', 'st-1', 'dl-2'))"),
	'0 0',
	'retention: every finished flow of the earlier sections is purged too');
is( sql($node,
		"SELECT count(*) FROM saga.events e WHERE NOT EXISTS (SELECT FROM saga.outbox o WHERE o.event_id = e.id) "
		  . "AND NOT EXISTS (SELECT FROM saga.dead_letters d WHERE d.event_id = e.id) "
		  . "AND NOT EXISTS (SELECT FROM saga.flows f WHERE f.correlation_id = e.correlation_id AND f.finished_at IS NULL)"
	),
	'0',
	'retention: no event is left that nothing needs');
is( sql($node,
		"SELECT count(*) FROM saga.outbox o WHERE o.event_id IS NOT NULL "
		  . "AND NOT EXISTS (SELECT FROM saga.events e WHERE e.id = o.event_id)"),
	'0', 'retention: every pending delivery still has its event');

# what a round finds now: nothing more to purge
usleep(1_100_000);
is( sql($node,
		"SELECT (t ->> 'purged_events') || ' ' || (t ->> 'purged_flows') FROM saga.tick() t"),
	'0 0', 'retention: saga.tick() finds nothing more to purge');

# the worker must not spin on events retention keeps for a reason
$idle = commits_over(2);
cmp_ok($idle, '<', 100,
	"retention: with only kept events past the retention the worker sleeps ($idle commits over ~3 s)")
  or diag 'the oldest event, which the worker\'s next due time is computed from: ' . sql($node, q{
SELECT 'id ' || e.id || ' ' || e.type || ' (' || e.correlation_id || '), published ' || (now() - e.published_at)
       || ' ago, kept for: '
       || concat_ws(', ',
            CASE WHEN EXISTS (SELECT FROM saga.outbox o WHERE o.event_id = e.id) THEN 'a pending delivery' END,
            CASE WHEN EXISTS (SELECT FROM saga.dead_letters d WHERE d.event_id = e.id) THEN 'a dead letter' END,
            CASE WHEN EXISTS (SELECT FROM saga.flows f WHERE f.correlation_id = e.correlation_id
                                                        AND f.finished_at IS NULL) THEN 'an unfinished flow' END)
  FROM saga.events e ORDER BY e.id LIMIT 1});

# once the reasons go, the events go
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('rt_audit', 'tap')"),
	'1', 'retention: rt_audit takes its delivery');
my $dead = sql($node,
	"SELECT d.id FROM saga.dead_letters d JOIN saga.events e ON e.id = d.event_id WHERE e.correlation_id = 'rt-dead'");
sql($node, "SELECT saga.redeliver($dead)");
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('rt_dlq', 'tap')"),
	'1', 'retention: the dead letter is redelivered and taken');
sql($node,
	"SELECT saga.publish('RtDone', '{}', causation_id => (SELECT id FROM saga.events WHERE correlation_id = 'rt-open' AND type = 'RtPlaced'))"
);
is(flow('rt', 'rt-open'), 'completed {}', 'retention: rt-open completes');
usleep(1_100_000);
sql($node, "SELECT saga.tick()");
is( sql($node,
		"SELECT (SELECT count(*) FROM saga.events WHERE correlation_id LIKE 'rt-%') || ' ' "
		  . "|| (SELECT count(*) FROM saga.flows WHERE choreography = 'rt')"),
	'0 0', 'retention: then a round purges what was kept: no rt event or flow is left');
# an event younger than the retention stays
is( (split /\n/,
		sql($node,
			"SELECT saga.publish('RtNote', '{}', 'rt-fresh'); SELECT saga.tick(); "
			  . "SELECT count(*) FROM saga.events WHERE correlation_id = 'rt-fresh'"))[-1],
	'1',
	'retention: an event younger than the retention stays');

# nothing left to keep: every pending delivery is taken, and the young event
# goes when its retention has passed, by the worker's own due time
is( sql($node, q{
SELECT count(saga.complete(c.id, '{}', c.lease))
  FROM (SELECT DISTINCT topic FROM saga.outbox WHERE kind = 'event') t,
       LATERAL saga.claim(t.topic, 'tap', 100) c}) > 0,
	1, 'retention: every pending delivery is taken');
ok(poll_until($node, "SELECT count(*) FROM saga.events", '0'),
	'retention: the worker purges every event once its retention passed');
is(sql($node, "SELECT count(*) FROM saga.flows"), '0', 'retention: and every flow');
$idle = commits_over(2);
cmp_ok($idle, '<', 100,
	"retention: with nothing left the worker sleeps again ($idle commits over ~3 s)");

$node->stop;
done_testing();
