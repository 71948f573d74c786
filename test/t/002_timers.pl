# 002_timers.pl: time-based work that the worker does with no client
# calling anything: a step timeout, leases that lapse until the attempts run
# out, a saga deadline, and the NOTIFY that tells a LISTENer when a delayed
# retry becomes visible.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = saga_node('timers');

ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname = 'postgres'",
		'1'),
	'the saga worker runs');

# the last history event of a step: "event actor"
sub last_event
{
	my ($saga, $step) = @_;
	return sql($node,
		"SELECT event || ' ' || actor FROM saga.history WHERE saga_id = $saga AND step = '$step' "
		  . "ORDER BY id DESC LIMIT 1");
}

# the outbox rows of a saga: "kind:step:topic" ...
sub tasks
{
	my ($saga) = @_;
	return sql($node,
		"SELECT coalesce(string_agg(kind || ':' || step || ':' || topic, ' ' ORDER BY id), '') "
		  . "FROM saga.outbox WHERE saga_id = $saga");
}

# --- a step timeout ------------------------------------------------------------

sql(
	$node, q{
SELECT saga.define('to', '{"steps": [
    {"name": "a", "topic": "to_a", "compensate": {"topic": "to_a_undo"}},
    {"name": "b", "topic": "to_b", "timeout": "1 second"}]}');
});
my $s = sql($node, "SELECT saga.start('to')");
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{\"a\": 1}', lease)) FROM saga.claim('to_a', 'tap')"
	),
	'1',
	'timeout: complete a');
my ($timeout_at, $b_task) = split /\|/,
  sql($node,
	"SELECT timeout_at, id FROM saga.outbox WHERE saga_id = $s AND step = 'b'");
ok($timeout_at, "timeout: b is dispatched with a timeout ($timeout_at)");

ok( poll_until(
		$node, "SELECT status FROM saga.instances WHERE id = $s",
		'compensating'),
	'timeout: the saga turns compensating with no client action');
is( sql($node,
		"SELECT status || ' ' || (error = '{\"reason\": \"timeout\"}') FROM saga.step_runs "
		  . "WHERE saga_id = $s AND step = 'b'"),
	'failed true',
	'timeout: b failed with {"reason": "timeout"}');
is(last_event($s, 'b'), 'failed saga worker', 'timeout: the worker failed b');
is( sql($node,
		"SELECT at >= '$timeout_at' FROM saga.history WHERE saga_id = $s AND step = 'b' AND event = 'failed'"
	),
	't',
	'timeout: not before the timeout');
is(tasks($s), 'compensate:a:to_a_undo',
	'timeout: b is gone and the compensation of a is enqueued');
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('to_a_undo', 'tap')"
	),
	'1',
	'timeout: complete the compensation');
is(sql($node, "SELECT status FROM saga.instances WHERE id = $s"),
	'compensated', 'timeout: the saga ends compensated');

# --- leases that lapse until the attempts run out ------------------------------

sql(
	$node, q{
SELECT saga.define('ls', '{"steps": [
    {"name": "a", "topic": "ls_a", "compensate": {"topic": "ls_a_undo"}},
    {"name": "b", "topic": "ls_b", "retry": {"max_attempts": 2}}]}');
});
$s = sql($node, "SELECT saga.start('ls')");
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('ls_a', 'tap')"
	),
	'1',
	'lease: complete a');
is( sql($node,
		"SELECT attempt || ' ' || lease FROM saga.claim('ls_b', 'tap', 1, '200 milliseconds')"),
	'1 1',
	'lease: claim b for 200 ms (attempt 1, lease 1)');
ok( poll_until(
		$node,
		"SELECT lease_owner IS NULL AND attempt = 2 FROM saga.outbox WHERE saga_id = $s AND step = 'b'"
	),
	'lease: the worker counts the lapse: attempt 2, lease cleared');
is( sql($node,
		"SELECT s.status || ' ' || r.status || ' ' || r.attempts FROM saga.instances s "
		  . "JOIN saga.step_runs r ON r.saga_id = s.id WHERE s.id = $s AND r.step = 'b'"),
	'running ready 2',
	'lease: with an attempt left the saga runs on and b is ready again');
is( sql($node,
		"SELECT attempt || ' ' || lease FROM saga.claim('ls_b', 'tap', 1, '200 milliseconds')"),
	'2 2',
	'lease: claim b again (attempt 2, lease 2), then nobody reports');
ok( poll_until(
		$node, "SELECT status FROM saga.instances WHERE id = $s",
		'compensating'),
	'lease: the saga turns compensating with no client action');
is( sql($node,
		"SELECT status || ' ' || (error = '{\"reason\": \"attempts exhausted: lease expired\", \"in_doubt\": true}') "
		  . "FROM saga.step_runs WHERE saga_id = $s AND step = 'b'"),
	'compensated true',
	'lease: b failed for good, in doubt (its last delivery may have acted): compensated (it has nothing to undo)');
is( sql($node,
		"SELECT string_agg(event || ' ' || actor, ', ' ORDER BY id) FROM saga.history "
		  . "WHERE saga_id = $s AND step = 'b' AND event IN ('failed', 'compensated')"),
	'failed saga worker, compensated saga worker',
	'lease: the worker failed b, and compensated it');
is(tasks($s), 'compensate:a:ls_a_undo',
	'lease: b is gone and the compensation of a is enqueued');

# --- a withdrawn task whose lease lapses ----------------------------------------

# a and b run in parallel; b fails for good while a is leased, so a is
# withdrawn but stays (a report may still come).  Nobody reports: when the
# lease lapses the worker settles a as compensated in doubt.
sql(
	$node, q{
SELECT saga.define('wd', '{"steps": [
    {"name": "a", "topic": "wd_a", "after": [], "compensate": {"topic": "wd_a_undo"}},
    {"name": "b", "topic": "wd_b", "after": []}]}');
});
$s = sql($node, "SELECT saga.start('wd')");
is(sql($node, "SELECT count(*) FROM saga.claim('wd_a', 'tap', 1, '500 milliseconds')"),
	'1', 'withdrawn: claim a for 500 ms');
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.fail(id, '{\"reason\": \"no\"}', false, lease)) FROM saga.claim('wd_b', 'tap')"
	),
	'1',
	'withdrawn: b fails for good');
is(tasks($s), 'action:a:wd_a', 'withdrawn: the leased a stays, awaiting its report');
ok( poll_until(
		$node, "SELECT count(*) FROM saga.outbox WHERE saga_id = $s AND kind = 'compensate'",
		'1'),
	'withdrawn: once the lease lapses a compensation is enqueued with no client action');
is(tasks($s), 'compensate:a:wd_a_undo', 'withdrawn: for a, and a\'s action is gone');
is( sql($node,
		"SELECT actor || ': ' || (detail ->> 'outcome') FROM saga.history "
		  . "WHERE saga_id = $s AND step = 'a' AND event = 'withdrawn' ORDER BY id DESC LIMIT 1"),
	'saga worker: lease lapsed without a report: compensated in doubt',
	'withdrawn: the worker settled a as compensated in doubt');

# --- a saga deadline -----------------------------------------------------------

sql(
	$node, q{
SELECT saga.define('dl', '{"deadline": "1 second", "steps": [
    {"name": "a", "topic": "dl_a", "compensate": {"topic": "dl_a_undo"}},
    {"name": "b", "topic": "dl_b"}]}');
});
$s = sql($node, "SELECT saga.start('dl')");
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('dl_a', 'tap')"
	),
	'1',
	'deadline: complete a');
ok( poll_until(
		$node, "SELECT status FROM saga.instances WHERE id = $s",
		'compensating'),
	'deadline: the saga turns compensating with no client action');
is( sql($node,
		"SELECT event || ' ' || actor || ' ' || (at >= s.started_at + interval '1 second') "
		  . "FROM saga.history h JOIN saga.instances s ON s.id = h.saga_id "
		  . "WHERE h.saga_id = $s AND h.event = 'deadline_passed'"),
	'deadline_passed saga worker true',
	'deadline: the worker records deadline_passed, not before the deadline');
is(tasks($s), 'compensate:a:dl_a_undo',
	'deadline: b is withdrawn and the compensation of a is enqueued');

# --- LISTEN and a delayed retry ------------------------------------------------

sql(
	$node, q{
SELECT saga.define('nt', '{"steps": [
    {"name": "a", "topic": "nt_a",
     "retry": {"max_attempts": 3, "initial_delay": "2 seconds", "backoff": 1, "jitter": false}}]}');
});
$s = sql($node, "SELECT saga.start('nt')");
# background_psql came to PostgreSQL 15 with 15.4
die 'PostgreSQL::Test::Cluster has no background_psql: PostgreSQL 15.4 or later needed'
  unless $node->can('background_psql');
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN saga_nt_a');

# the task is leased, so nothing about it is due; drain whatever the listener
# got so far (the dispatch at start came before LISTEN)
my ($task, $lease) = split /\|/,
  sql($node, "SELECT id, lease FROM saga.claim('nt_a', 'tap', 1, '1 hour')");
$listener->query_safe('SELECT 1');

is( sql($node,
		"SELECT saga.fail($task, '{\"reason\": \"busy\"}', true, $lease)"),
	't',
	'notify: fail the task retryably (visible again in 2 s)');
my $visible = sql($node,
	"SELECT extract(epoch FROM visible_at) FROM saga.outbox WHERE id = $task");
my $worker = worker_pid($node);
my $notified = qr/Asynchronous notification "saga_nt_a" received from server process with PID (\d+)/;

my $out = $listener->query_safe('SELECT 1');
unlike($out, $notified, 'notify: no notification right after the fail');

# poll the listener: psql prints notifications after a command
my ($got, $from);
my $deadline = $visible + 30;
while (time() < $deadline)
{
	$out = $listener->query_safe('SELECT 1');
	my $now = time();
	if ($out =~ $notified)
	{
		($got, $from) = ($now, $1);
		last;
	}
	usleep(50_000);
}
ok(defined $got, 'notify: the listener is woken once the retry is due');
ok(defined $got && $got >= $visible,
	'notify: not before the task is visible ('
	  . (defined $got ? sprintf('%.3f s after', $got - $visible) : 'never') . ')');
is($from, $worker, 'notify: the saga worker sent it');
is( sql($node, "SELECT attempt || ' ' || lease FROM saga.claim('nt_a', 'tap')"),
	'2 2',
	'notify: the task can be claimed again, attempt 2');

# new work: the backend that starts the saga leaves the NOTIFY to the worker,
# so client commits do not queue on the notification lock
$listener->query_safe('SELECT 1');
sql($node, "SELECT saga.start('nt')");
($got, $from) = (undef, undef);
$deadline = time() + 30;
while (time() < $deadline)
{
	$out = $listener->query_safe('SELECT 1');
	if ($out =~ $notified)
	{
		($got, $from) = (time(), $1);
		last;
	}
	usleep(20_000);
}
ok(defined $got, 'notify: a new task wakes the listener');
is($from, $worker, 'notify: the worker sent it on behalf of the committing backend');

# saga.notify = off: no notification at all
sql($node, "ALTER SYSTEM SET saga.notify = off");
sql($node, "SELECT pg_reload_conf()");
my $quiet = $node->background_psql('postgres');
$quiet->query_safe('SET saga.notify = off');
$quiet->query_safe("SELECT saga.start('nt')");
$quiet->quit;
$out = $listener->query_safe('SELECT pg_sleep(0.5)');
unlike($out, $notified, 'notify: with saga.notify off nobody is woken');
sql($node, "ALTER SYSTEM RESET saga.notify");
sql($node, "SELECT pg_reload_conf()");
$listener->quit;

# --- an SQL compensation that the worker runs calls saga.tick() ----------------
# The nested tick's work is "saga tick"; the worker stays "saga worker" after
# it (and keeps giving back the session locks its guests take, below).

sql(
	$node, q{
CREATE SCHEMA tk;
CREATE FUNCTION tk.undo(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM saga.tick();
    RETURN '{}';
END
$$;
SELECT saga.define('tk', '{"steps": [
    {"name": "a", "topic": "tk_a", "compensate": {"sql": "tk.undo"}},
    {"name": "b", "topic": "tk_b", "timeout": "1 second"}]}');
});
my $tk = sql($node, "SELECT saga.start('tk')");
sql($node, "SELECT count(saga.complete(id, '{}', lease)) FROM saga.claim('tk_a', 'tap')");
ok(poll_until($node, "SELECT status FROM saga.instances WHERE id = $tk", 'compensated'),
	'tick in a guest: the worker ran the compensation that calls saga.tick()');
is( sql($node,
		"SELECT string_agg(DISTINCT actor, ',') FROM saga.history WHERE saga_id = $tk AND event IN ('failed', 'compensated')"
	),
	'saga worker',
	'tick in a guest: the worker is still the actor of its work');
is( sql($node, "SELECT count(*) FROM saga.history WHERE saga_id = $tk AND event = 'work_failed'"),
	'0', 'tick in a guest: the nested tick leaves the saga being compensated alone');

# --- an SQL compensation that the worker runs takes a session lock ------------
# The sandbox cannot stop pg_advisory_lock; the worker gives such locks back
# after the unit, or it would hold them until it exits.

sql(
	$node, q{
CREATE SCHEMA lk;
CREATE FUNCTION lk.undo(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_lock(4343);
    RETURN '{}';
END
$$;
SELECT saga.define('lk', '{"steps": [
    {"name": "a", "topic": "lk_a", "compensate": {"sql": "lk.undo"}},
    {"name": "b", "topic": "lk_b", "timeout": "1 second"}]}');
});
my $lk = sql($node, "SELECT saga.start('lk')");
sql($node, "SELECT count(saga.complete(id, '{}', lease)) FROM saga.claim('lk_a', 'tap')");
ok(poll_until($node, "SELECT status FROM saga.instances WHERE id = $lk", 'compensated'),
	'advisory lock: b timed out and the worker ran the SQL compensation of a');
is(last_event($lk, 'a'), 'compensated saga worker', 'advisory lock: the worker compensated a');
is( sql($node,
		"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343 AND granted"),
	'0',
	'advisory lock: the session lock the compensation took is not held by the worker');

# --- one saga whose time-based work raises does not stall the others -----------
# A corrupt row (its step state no longer matches its definition) makes the
# engine raise for that saga only: the worker records an incident on it,
# tries it again a minute later, and serves the other saga in the same round.

sql(
	$node, q{
SELECT saga.define('iso', '{"steps": [
    {"name": "a", "topic": "iso_a", "compensate": {"topic": "iso_undo"}},
    {"name": "b", "topic": "iso_b", "timeout": "1 second"}]}');
});
my ($bad, $good) = map { sql($node, "SELECT saga.start('iso')") } 1 .. 2;
sql($node, "SELECT count(saga.complete(id, '{}', lease)) FROM saga.claim('iso_a', 'tap', 10)");
# both b tasks time out in one round; the first saga's row is corrupt
sql($node, "UPDATE saga.sagas SET step_status = '{3}' WHERE id = $bad");
ok(poll_until($node, "SELECT status FROM saga.instances WHERE id = $good", 'compensating'),
	'poison: the healthy saga times out and compensates');
is( sql($node,
		"SELECT error ->> 'sqlstate' FROM saga.incidents WHERE saga_id = $bad"),
	'XX000',
	'poison: the corrupt saga is an incident, with the error');
is( sql($node,
		"SELECT count(*) FROM saga.history WHERE saga_id = $bad AND event = 'work_failed' AND actor = 'saga worker'"),
	'1',
	'poison: its history records the failed work, once (not a spin)');
is( sql($node,
		"SELECT timeout_at > now() + interval '30 seconds' FROM saga.outbox WHERE saga_id = $bad AND step = 'b'"),
	't',
	'poison: its timeout is tried again a minute later');
ok(wait_log($node, qr/LOG:  saga $bad: time-based work failed, retrying in 60 s: .*\n.*CONTEXT:  saga $bad, step #1, task \d+ \(action\)/),
	'poison: the log names the saga, step and task');

$node->stop;
done_testing();
