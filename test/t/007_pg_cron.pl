# 007_pg_cron.pl: without saga in shared_preload_libraries, the time-based
# work is done by saga.tick() scheduled with the pg_cron that Debian ships
# (postgresql-15-cron, pg_cron 1.4: per-minute cron syntax, no seconds).
#
# A node preloads pg_cron only.  A step timeout, a lease and a flow deadline
# are made due and checked not to be acted on (no saga worker runs); then the
# job "* * * * *" runs saga.tick() as a role that may call saga.tick() and nothing else, and its first run
# must do all three.  pg_cron 1.4 starts a job at a minute boundary, never
# sooner, so the test waits for one boundary (0 to 60 s: everything is due
# before the job exists, and the job exists 2 s before the boundary, so the
# first run finds it all); it polls and never sleeps.  The whole test takes
# 5 to 65 s.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;
use Time::HiRes qw(time);

# the package scripts/test.sh installs (and copies into a private installation)
my $pkglibdir = `pg_config --pkglibdir`;
chomp $pkglibdir;
ok(-e "$pkglibdir/pg_cron.so", "pg_cron is installed ($pkglibdir/pg_cron.so)")
  or die 'pg_cron is missing: install postgresql-15-cron (scripts/test.sh does)';

my $node = PostgreSQL::Test::Cluster->new('pg_cron');
$node->init;
# pg_cron's jobs connect with libpq to cron.host: the node's socket directory
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'pg_cron'\n"
	  . "cron.database_name = 'postgres'\n"
	  . "cron.host = '"
	  . $node->host . "'\n");
$node->start;
sql($node, 'CREATE EXTENSION pg_cron');
sql($node, 'CREATE EXTENSION saga');
sql($node, 'CREATE ROLE saga_ticker LOGIN; GRANT USAGE ON SCHEMA saga TO saga_ticker; GRANT EXECUTE ON FUNCTION saga.tick() TO saga_ticker');

# Debian 12 ships 1.4; the per-minute form below works from 1.4 on (which
# brought cron.schedule_in_database)
my $cron_version = sql($node, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'");
diag("pg_cron $cron_version");
like($cron_version, qr/^1\.(?:[4-9]|\d\d)/, "pg_cron $cron_version, 1.4 or later");
is(sql($node, 'SELECT served || \' \' || preloaded FROM saga.worker_status()'),
	'false false', 'saga is not preloaded and no worker serves the database');

# --- due work: a step timeout, a lapsed lease, a flow deadline ----------------

sql(
	$node, q{
SELECT saga.define('cr_to', '{"steps": [
    {"name": "a", "topic": "cr_a", "compensate": {"topic": "cr_a_undo"}},
    {"name": "b", "topic": "cr_b", "timeout": "1 second"}]}');
SELECT saga.define('cr_ls', '{"steps": [
    {"name": "l", "topic": "cr_l", "retry": {"max_attempts": 2}}]}');
SELECT saga.define_choreography('cr_dl', '{
    "start": "CrPlaced",
    "participants": {"cr_pay": {"on": ["CrPlaced"], "emits": ["CrCharged"]}},
    "completed": ["CrCharged"],
    "deadline": {"after": "1 second", "publish": "CrTimedOut"}}');
});
my $to = sql($node, "SELECT saga.start('cr_to')");
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('cr_a', 'tap')"),
	'1',
	'timeout: a completes, b is dispatched with a timeout of 1 s');
my $ls = sql($node, "SELECT saga.start('cr_ls')");
is(sql($node, "SELECT attempt FROM saga.claim('cr_l', 'tap', 1, '200 milliseconds')"),
	'1', 'lease: l is claimed for 200 ms, then nobody reports');
sql($node, "SELECT saga.publish('CrPlaced', '{}', 'cr-1')");
is(sql($node, "SELECT status FROM saga.flows WHERE correlation_id = 'cr-1'"),
	'running', 'deadline: flow cr-1 runs, due in 1 s');

ok( poll_until(
		$node, qq{
SELECT count(*) = 3 AND bool_and(due < now()) FROM (
    SELECT timeout_at AS due FROM saga.outbox WHERE saga_id = $to AND step = 'b'
    -- a leased task's visible_at is when its lease lapses
    UNION ALL SELECT visible_at FROM saga.outbox WHERE saga_id = $ls AND step = 'l' AND lease_owner IS NOT NULL
    UNION ALL SELECT deadline_at FROM saga.flows WHERE correlation_id = 'cr-1') d
 WHERE due IS NOT NULL}, 't'),
	'the timeout, the lease and the deadline are all due');
is( sql($node, qq{
SELECT (SELECT status FROM saga.instances WHERE id = $to) || ' '
       || (SELECT attempt || ' ' || (lease_owner IS NOT NULL) FROM saga.outbox WHERE saga_id = $ls)
       || ' ' || (SELECT status FROM saga.flows WHERE correlation_id = 'cr-1')}),
	'running 1 true running',
	'due, and nothing acted on: no saga worker runs');

# --- pg_cron runs saga.tick() every minute ------------------------------------

# a job that exists in the last seconds of a minute might be seen by pg_cron
# only after the boundary: schedule it with at least 2 s to go, so that the
# first boundary runs it
ok( poll_until(
		$node, "SELECT extract(second FROM clock_timestamp()) < 58", 't'),
	'at least 2 s before the next minute boundary');
my $t0 = time();
my $job = sql($node,
	"SELECT cron.schedule_in_database('saga-tick', '* * * * *', 'SELECT saga.tick()', 'postgres', 'saga_ticker')"
);
ok( poll_until(
		$node,
		"SELECT count(*) > 0 FROM cron.job_run_details WHERE jobid = $job AND status IN ('succeeded', 'failed')",
		't', 130),
	'pg_cron ran the job at the next minute boundary');
diag(sprintf('the first run ended %.1f s after the job was scheduled', time() - $t0));
# no run after the first one is needed below: stop the job
sql($node, "SELECT cron.unschedule($job)");

is( sql($node,
		"SELECT string_agg(status || ' ' || username || ' ' || database || ' ' || command, ', ') "
		  . "FROM cron.job_run_details WHERE jobid = $job AND status <> 'running'"),
	'succeeded saga_ticker postgres SELECT saga.tick()',
	'job_run_details: the run succeeded, as saga_ticker in postgres');

is( sql($node,
		"SELECT s.status || ' ' || r.status || ' ' || (r.error = '{\"reason\": \"timeout\"}') "
		  . "FROM saga.instances s JOIN saga.step_runs r ON r.saga_id = s.id WHERE s.id = $to AND r.step = 'b'"
	),
	'compensating failed true',
	'timeout: b failed with {"reason": "timeout"} and the saga compensates');
is( sql($node,
		"SELECT string_agg(step || ':' || event || ':' || actor, ' ' ORDER BY id) FROM saga.history "
		  . "WHERE saga_id = $to AND event = 'failed'"),
	'b:failed:saga tick',
	'timeout: saga.tick() failed b');
is( sql($node,
		"SELECT count(*) FILTER (WHERE saga.complete(id, '{}', lease)) FROM saga.claim('cr_a_undo', 'tap')"),
	'1',
	'timeout: the compensation of a was enqueued; it completes');
is(sql($node, "SELECT status FROM saga.instances WHERE id = $to"),
	'compensated', 'timeout: the saga ends compensated');

is( sql($node,
		"SELECT o.attempt || ' ' || (o.lease_owner IS NULL) || ' ' || r.status || ' ' || r.attempts "
		  . "FROM saga.outbox o JOIN saga.step_runs r ON r.saga_id = o.saga_id AND r.step = o.step "
		  . "WHERE o.saga_id = $ls"),
	'2 true ready 2',
	'lease: saga.tick() counted the lapse: attempt 2, lease cleared, l ready again');

is( sql($node,
		"SELECT count(*) || ' ' || min(hops) FROM saga.events WHERE correlation_id = 'cr-1' AND type = 'CrTimedOut'"
	),
	'1 1',
	'deadline: saga.tick() published CrTimedOut once');

is(sql($node, 'SELECT served::text FROM saga.worker_status()'),
	'false', 'still no saga worker serves the database');
is(worker_pid($node), '', 'no saga worker in pg_stat_activity');

$node->stop;
done_testing();
