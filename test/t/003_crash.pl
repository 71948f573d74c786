# 003_crash.pl: a server crash with thousands of sagas in flight loses
# nothing and repeats nothing.
#
# Four pgbench clients run a transactional poll: lock one visible task (FOR
# UPDATE SKIP LOCKED), record its effect in table effects and report it, all
# in one transaction.  Every 10th saga fails at step s3 for good and
# compensates; in every 7th, s2 fails once retryably.  s2 and s3 run in
# parallel after s1, so a failing s3 withdraws s2 while a poller may hold it.
# Mid-flight the server stops with `immediate` (no shutdown checkpoint, open
# transactions lost), restarts, and the pollers drain what is left.  Then:
# every saga is terminal, the outbox is empty, each effect happened exactly
# once, and a compensated saga undid exactly the steps whose effects exist,
# s1 last.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;
use Time::HiRes qw(time);

my $SAGAS = 3000;

my $node = saga_node('crash', "log_statement = none\nmax_connections = 20\n");

sql(
	$node, q{
SELECT saga.define('crash', '{"steps": [
    {"name": "s1", "topic": "c1", "compensate": {"topic": "c1_undo"}},
    {"name": "s2", "topic": "c2", "after": ["s1"], "compensate": {"topic": "c2_undo"},
     "retry": {"max_attempts": 3, "initial_delay": "10 milliseconds", "jitter": false}},
    {"name": "s3", "topic": "c3", "after": ["s1"], "compensate": {"topic": "c3_undo"}}]}');

-- no unique constraint: a duplicate must be counted, not stall a poller
CREATE TABLE effects (
    id       bigserial PRIMARY KEY,
    saga_id  bigint NOT NULL,
    step     text NOT NULL,
    kind     text NOT NULL
);

-- one task per transaction, actions before compensations (so that sagas are
-- caught compensating by the crash), topics otherwise in random order;
-- returns 1 if it found one
CREATE FUNCTION poll() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t text;
    r record;
BEGIN
    FOREACH t IN ARRAY (SELECT array_agg(x ORDER BY x LIKE '%_undo', random())
                          FROM unnest(ARRAY['c1', 'c2', 'c3', 'c1_undo', 'c2_undo', 'c3_undo']) x)
    LOOP
        SELECT id, saga_id, step, kind, attempt, payload INTO r
          FROM saga.outbox
         WHERE topic = t AND visible_at <= clock_timestamp()
         ORDER BY visible_at, id
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF r.kind = 'action' AND r.step = 's3' AND (r.payload -> 'input' ->> 'fail')::boolean THEN
            PERFORM saga.fail(r.id, '{"reason": "declined"}', false);
        ELSIF r.kind = 'action' AND r.step = 's2' AND r.attempt = 1
              AND (r.payload -> 'input' ->> 'flaky')::boolean THEN
            PERFORM saga.fail(r.id, '{"reason": "flaky"}', true);
        ELSE
            INSERT INTO effects (saga_id, step, kind) VALUES (r.saga_id, r.step, r.kind);
            PERFORM saga.complete(r.id, jsonb_build_object('step', r.step, 'kind', r.kind));
        END IF;
        RETURN 1;
    END LOOP;
    RETURN 0;
END
$$;
});

is( sql($node,
		"SELECT count(saga.start('crash', jsonb_build_object('i', g, 'fail', g % 10 = 0, 'flaky', g % 7 = 0))) "
		  . "FROM generate_series(1, $SAGAS) g"),
	$SAGAS,
	"start $SAGAS sagas");

my $script = $node->basedir . '/poll.sql';
append_to_file($script, "SELECT poll();\n");

# four pollers until killed (or until the server goes away), at most $rate
# tasks per second if given
sub pollers
{
	my ($rate) = @_;
	my ($out, $err) = ('', '');
	my @limit = defined $rate ? ('-R', $rate) : ();
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', '4', '-j', '2', '-T', '600', @limit,
			'-f', $script, '-h', $node->host, '-p', $node->port, 'postgres'
		],
		'>', \$out, '2>', \$err);
	return ($h, \$out, \$err);
}

# Paced before the crash: unpaced (fsync is off in test clusters) they drain
# everything within a second, and the moment to crash, a third of the work
# done with sagas compensating, could fall between two polls of its query.
# At 2,000 tasks/s that moment lasts seconds.
my ($h, $out, $err) = pollers(2000);
# crash once a third of the work is done and some saga is compensating
ok( poll_until(
		$node,
		"SELECT (SELECT count(*) FROM effects) >= $SAGAS "
		  . "AND EXISTS (SELECT FROM saga.sagas WHERE status = 'compensating')",
		't'),
	'the pollers are under way');
my $before = sql($node,
	"SELECT count(*) FILTER (WHERE status = 'running') || ' running, ' "
	  . "|| count(*) FILTER (WHERE status = 'compensating') || ' compensating, ' "
	  . "|| (SELECT count(*) FROM effects) || ' effects' FROM saga.sagas");
$node->stop('immediate');
$h->kill_kill;
note "at the crash: $before";
like($before, qr/^[1-9]\d* running/, 'sagas were in flight at the crash');

my $t0 = time();
$node->start;
my $t_up = time() - $t0;
my $log_at = -s $node->logfile;
($h, $out, $err) = pollers();
my $drained = poll_until(
	$node,
	"SELECT NOT EXISTS (SELECT FROM saga.sagas WHERE status NOT IN ('completed', 'compensated')) "
	  . "AND NOT EXISTS (SELECT FROM saga.outbox)",
	't', 120);
my $took = time() - $t0;
my $log_end = -s $node->logfile;
$h->kill_kill;
ok($drained, 'after the restart the pollers drain every saga');
note sprintf('convergence: %.1f s after the restart began (the restart took %.1f s)', $took, $t_up);
diag "pgbench said:\n$$out$$err" unless $drained;

is( sql($node,
		"SELECT count(*) FILTER (WHERE status = 'completed') || ' ' || count(*) FILTER (WHERE status = 'compensated') "
		  . "FROM saga.sagas"),
	($SAGAS - $SAGAS / 10) . ' ' . ($SAGAS / 10),
	'every saga is terminal: completed, or compensated when s3 declines');
is( sql($node,
		"SELECT count(*) FROM saga.sagas WHERE (input ->> 'fail')::boolean <> (status = 'compensated')"),
	'0',
	'exactly the sagas whose s3 declines are compensated');
is(sql($node, "SELECT count(*) FROM saga.outbox"), '0', 'the outbox is empty');
is( sql($node,
		"SELECT count(*) FROM (SELECT FROM effects GROUP BY saga_id, step, kind HAVING count(*) > 1) d"),
	'0',
	'no effect happened twice');
is( sql($node,
		"SELECT count(*) FROM saga.sagas s WHERE s.status = 'completed' AND "
		  . "(SELECT string_agg(e.step || ':' || e.kind, ' ' ORDER BY e.step, e.kind) FROM effects e "
		  . "WHERE e.saga_id = s.id) IS DISTINCT FROM 's1:action s2:action s3:action'"),
	'0',
	'a completed saga has the effect of each step, and no compensation');
is( sql($node,
		"SELECT count(*) FROM saga.step_runs r JOIN saga.sagas s ON s.id = r.saga_id "
		  . "WHERE s.status = 'completed' AND r.status <> 'succeeded'"),
	'0',
	'a completed saga has every step succeeded');

# compensated: s3 declined, so it has no effect; s1 always ran and is undone;
# s2 either ran and is undone, or had no effect
is( sql($node, q{
SELECT count(*) FROM saga.sagas s
 WHERE s.status = 'compensated'
   AND (SELECT string_agg(e.step || ':' || e.kind, ' ' ORDER BY e.step, e.kind) FROM effects e
         WHERE e.saga_id = s.id)
       NOT IN ('s1:action s1:compensate', 's1:action s1:compensate s2:action s2:compensate')}),
	'0',
	'a compensated saga undid exactly the steps that had an effect');
# s2 ran and is undone; or it never ran (skipped); or its flaky first attempt
# was in flight when s3 failed and reported its failure late (failed, nothing
# to undo)
my $step_mismatch = q{
SELECT s.id FROM saga.sagas s
  JOIN saga.step_runs r ON r.saga_id = s.id
 WHERE s.status = 'compensated'
   AND NOT CASE r.step
         WHEN 's1' THEN r.status = 'compensated'
         WHEN 's3' THEN r.status = 'failed'
         ELSE CASE WHEN EXISTS (SELECT FROM effects e WHERE e.saga_id = s.id AND e.step = 's2')
                   THEN r.status = 'compensated'
                   ELSE r.status = 'skipped'
                        OR (r.status = 'failed' AND r.error = '{"reason": "flaky"}')
              END
       END};
is(sql($node, "SELECT count(*) FROM ($step_mismatch) m"),
	'0',
	'the step states of compensated sagas match the effects')
  or diag sql($node, qq{
SELECT 'saga ' || s || E':\n  steps: '
       || (SELECT string_agg(step || ' ' || status, ', ' ORDER BY step_index) FROM saga.step_runs WHERE saga_id = s)
       || E'\n  effects: ' || coalesce((SELECT string_agg(step || ':' || kind, ' ' ORDER BY id) FROM effects WHERE saga_id = s), '')
       || E'\n  history: ' || (SELECT string_agg(to_char(at, 'HH24:MI:SS.US') || ' ' || event || coalesce(' ' || step, '')
                                                  || ' ' || actor || coalesce(' ' || detail::text, ''), E'\n    ' ORDER BY id)
                                FROM saga.history WHERE saga_id = s)
  FROM (SELECT DISTINCT id AS s FROM ($step_mismatch) m LIMIT 5) x});
is( sql($node, q{
SELECT count(*) FROM effects c1
  JOIN effects c2 ON c2.saga_id = c1.saga_id AND c2.step = 's2' AND c2.kind = 'compensate'
 WHERE c1.step = 's1' AND c1.kind = 'compensate' AND c1.id < c2.id}),
	'0',
	's1 is undone after s2');
note 'compensated sagas whose s2 was compensated / skipped / failed late; withdrawals: ' . sql($node, q{
SELECT count(*) FILTER (WHERE r.status = 'compensated') || ' / ' || count(*) FILTER (WHERE r.status = 'skipped')
       || ' / ' || count(*) FILTER (WHERE r.status = 'failed')
       || '; ' || (SELECT count(*) FROM saga.history WHERE event = 'withdrawn')
  FROM saga.step_runs r JOIN saga.sagas s ON s.id = r.saga_id
 WHERE s.status = 'compensated' AND r.step = 's2'});
my $flaky = sql($node,
	"SELECT count(*) FROM saga.history h JOIN saga.sagas s ON s.id = h.saga_id "
	  . "WHERE h.event = 'retry_scheduled' AND h.step = 's2' AND (s.input ->> 'flaky')::boolean");
cmp_ok($flaky, '>', 0, "flaky s2 steps were retried ($flaky)");

# nothing in the server log since the restart that a poller or the worker
# should not have met
my $log = substr(slurp_file($node->logfile, $log_at), 0, $log_end - $log_at);
my @bad = grep { /\b(ERROR|PANIC|FATAL):|TRAP:|terminated by signal/ } split /\n/, $log;
is(scalar(@bad), 0, 'no error in the server log after the restart')
  or diag join("\n", @bad[ 0 .. ($#bad < 20 ? $#bad : 19) ]);

$node->stop;
done_testing();
