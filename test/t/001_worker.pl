# 001_worker.pl: the launcher and the per-database worker start with the
# cluster, come back after pg_terminate_backend, and follow SIGHUP (retention,
# the list of databases).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;

# finished sagas are kept until the test changes saga.retention by reload
my $node = saga_node('worker', "saga.retention = -1\n");

# --- the processes -----------------------------------------------------------

ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga launcher'",
		'1'),
	'one saga launcher runs');
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname = 'postgres'",
		'1'),
	'one saga worker runs in database postgres');
is( sql($node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname IS DISTINCT FROM 'postgres'"
	),
	'0',
	'no saga worker in databases saga.databases does not name');
ok( poll_until(
		$node,
		"SELECT served::text || ' ' || (worker_pid = (SELECT pid FROM pg_stat_activity "
		  . "WHERE backend_type = 'saga worker' AND datname = 'postgres'))::text FROM saga.worker_status()",
		'true true'),
	'saga.worker_status(): served, by the worker that runs');
ok( wait_log(
		$node,
		qr/LOG:  saga worker started\n[^\n]*CONTEXT:  saga worker for database "postgres"/
	),
	'the worker logs with CONTEXT saga worker for database "postgres"');
ok(wait_log($node, qr/LOG:  saga launcher started\n[^\n]*CONTEXT:  saga launcher\n/),
	'the launcher logs with CONTEXT saga launcher');

# --- sagas that the retention test looks at later ----------------------------

sql(
	$node, q{
SELECT saga.define('one', '{"steps": [{"name": "a", "topic": "w_one"}]}');
SELECT saga.define('fl', '{"steps": [
    {"name": "a", "topic": "w_fl_a", "compensate": {"topic": "w_fl_undo"}},
    {"name": "b", "topic": "w_fl_b"}]}');
});
my $done = sql($node, "SELECT saga.start('one', '{\"n\": 1}')");
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('w_one', 'tap')"
	),
	'1',
	'finish a one-step saga');
my $running = sql($node, "SELECT saga.start('one', '{\"n\": 2}')");

# a saga whose compensation fails for good ends 'failed', which is never purged
my $failed = sql($node, "SELECT saga.start('fl')");
sql(
	$node, q{
SELECT saga.complete(id, '{}', lease) FROM saga.claim('w_fl_a', 'tap');
SELECT saga.fail(id, '{"reason": "no"}', false, lease) FROM saga.claim('w_fl_b', 'tap');
SELECT saga.fail(id, '{"reason": "undo broke"}', false, lease) FROM saga.claim('w_fl_undo', 'tap');
});
is( sql($node,
		"SELECT string_agg(id || ':' || status, ',' ORDER BY id) FROM saga.instances"),
	"$done:completed,$running:running,$failed:failed",
	'one completed, one running and one failed saga');

# --- pg_terminate_backend ------------------------------------------------------

my $pid = worker_pid($node);
like($pid, qr/^\d+$/, 'the worker has a pid');
is(sql($node, "SELECT pg_terminate_backend($pid)"), 't', 'terminate the worker');
ok( poll_until(
		$node,
		"SELECT count(*) FILTER (WHERE pid <> $pid) || '/' || count(*) FROM pg_stat_activity "
		  . "WHERE backend_type = 'saga worker' AND datname = 'postgres'",
		'1/1'),
	'a new worker with another pid replaces the terminated one');
my $pid2 = worker_pid($node);

# the launcher comes back too, and leaves the running worker alone (checked
# again at the end, once time has passed)
my $lpid = sql($node,
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'saga launcher'");
is(sql($node, "SELECT pg_terminate_backend($lpid)"), 't', 'terminate the launcher');
ok( poll_until(
		$node,
		"SELECT count(*) FILTER (WHERE pid <> $lpid) || '/' || count(*) FROM pg_stat_activity "
		  . "WHERE backend_type = 'saga launcher'",
		'1/1'),
	'a new launcher replaces the terminated one');
ok( poll_until(
		$node,
		"SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'saga worker'",
		$pid2),
	'the worker that ran before the launcher restarted is the only one');

# --- SIGHUP: saga.retention ----------------------------------------------------

# the restarted worker has run rounds with saga.retention = -1 by now
is( sql($node,
		"SELECT count(*) > 0 FROM saga.history WHERE saga_id = $done AND EXISTS "
		  . "(SELECT FROM saga.sagas WHERE id = $done AND status = 'completed')"),
	't',
	'with saga.retention = -1 the finished saga and its history are kept');
sql($node, "ALTER SYSTEM SET saga.retention = 1");
sql($node, "SELECT pg_reload_conf()");
ok( poll_until(
		$node, "SELECT count(*) FROM saga.sagas WHERE id = $done", '0'),
	'after a reload with saga.retention = 1 s the finished saga is purged');
is(sql($node, "SELECT count(*) FROM saga.history WHERE saga_id = $done"),
	'0', 'its history is purged with it');
# the worker reports its statistics as it goes (not when it exits), so
# autovacuum sees the rows it deleted
my $worker_before = worker_pid($node);
ok( poll_until(
		$node,
		"SELECT n_tup_del > 0 FROM pg_stat_user_tables WHERE relid = 'saga.sagas'::regclass",
		't'),
	'the purge shows in pg_stat_user_tables.n_tup_del');
is(worker_pid($node), $worker_before, 'while the same worker runs');
is( sql($node,
		"SELECT string_agg(id || ':' || status, ',' ORDER BY id) FROM saga.instances"),
	"$running:running,$failed:failed",
	'the running and the failed saga are kept');
is( sql($node,
		"SELECT count(DISTINCT saga_id) FROM saga.history WHERE saga_id IN ($running, $failed)"),
	'2',
	'with their history');
is( sql($node,
		"SELECT actor FROM saga.history WHERE saga_id = $failed ORDER BY id DESC LIMIT 1"),
	'postgres',
	'history written by a session names its role');

# --- SIGHUP: saga.databases ----------------------------------------------------

sql($node, "CREATE DATABASE other");
my $log_at = -s $node->logfile;
sql($node, "ALTER SYSTEM SET saga.databases = 'postgres, other'");
sql($node, "SELECT pg_reload_conf()");
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname = 'other'",
		'1'),
	'a reload that lists another database starts a worker there');
ok( wait_log(
		$node,
		qr/LOG:  saga worker started\n[^\n]*CONTEXT:  saga worker for database "other"/,
		$log_at),
	'its log lines name the database');
is(worker_pid($node), $pid2, 'the worker of postgres is left alone');

sql($node, "ALTER SYSTEM SET saga.databases = 'postgres'");
sql($node, "SELECT pg_reload_conf()");
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname = 'other'",
		'0'),
	'a reload that no longer lists it stops that worker');
ok( wait_log(
		$node,
		qr/LOG:  saga worker exiting: database no longer in saga.databases\n[^\n]*CONTEXT:  saga worker for database "other"/,
		$log_at),
	'which says why');
is(worker_pid($node), $pid2, 'the worker of postgres still runs');

# A worker started while one runs for its database exits at once.  Each
# restart above may cause one such start (the postmaster's restart of the
# terminated worker racing the launcher's, the new launcher not yet knowing
# the running worker); a launcher that keeps trying would log many.
my @dup = slurp_file($node->logfile) =~ /saga worker already running/g;
cmp_ok(scalar(@dup), '<=', 2,
	'no launch loop: at most two duplicate worker starts in the whole run');
my @started = slurp_file($node->logfile) =~ /LOG:  saga worker started/g;
is(scalar(@started), 3, 'three worker starts: postgres, its replacement, other');

$node->stop;
done_testing();
