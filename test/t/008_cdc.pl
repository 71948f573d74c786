# 008_cdc.pl: change data capture.  With saga.cdc on and wal_level =
# logical, every dispatch of a task is one transactional logical decoding
# message with the prefix "saga": a first attempt, a retry, a compensation,
# a release, each event delivery; a rolled-back dispatch gives none, and
# neither do a claim, a completion or saga.cdc off.  Read through
# test_decoding, and through pgoutput with an empty publication (what
# Debezium uses), which outlives DROP EXTENSION and CREATE EXTENSION.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use JSON::PP;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;

my $node = saga_node('cdc', "wal_level = logical\nmax_replication_slots = 4\nsaga.cdc = on\n");

sql($node, q{SELECT pg_create_logical_replication_slot('saga_td', 'test_decoding')});

# the messages decoded since the last call, as hashes
sub messages
{
	my $out = sql($node,
		q{SELECT data FROM pg_logical_slot_get_changes('saga_td', NULL, NULL,
		  'skip-empty-xacts', '1', 'include-xids', '0')});
	my @m;
	for my $line (split /\n/, $out)
	{
		next unless $line =~ /^message: transactional: (\d) prefix: saga, sz: \d+ content:(.*)$/;
		push @m, { transactional => $1, %{ decode_json($2) } };
	}
	return @m;
}

sql($node, q{
SELECT saga.define('cdc', '{"steps": [
  {"name": "a", "topic": "cdc_a", "compensate": {"topic": "cdc_a"}},
  {"name": "b", "topic": "cdc_b", "retry": {"max_attempts": 3, "initial_delay": "1 hour"}}]}');
});
messages();    # nothing yet; start from here

my $saga = sql($node, q{SELECT saga.start('cdc', '{"order": 1}', correlation_id => 'cdc-1')});
my @m = messages();
is(scalar @m, 1, 'a start dispatches its first step: one message');
my %first = %{ $m[0] };
is($first{transactional}, 1, 'the message is transactional');
is(join(',', map { "$_=" . ($first{$_} // 'null') } qw(aggregate_type aggregate_id type step attempt)),
	'aggregate_type=cdc_a,aggregate_id=cdc-1,type=action,step=a,attempt=1',
	'topic, correlation id, kind, step and attempt');
is($first{task_id}, $saga << 10, 'the task id');
is($first{saga_id}, $saga, 'the saga id');
is(decode_json($first{payload})->{input}{order}, 1, 'the payload, as a JSON string');
is($first{traceparent}, $first{headers}{traceparent}, 'the traceparent, also among the headers');
is_deeply([ sort keys %first ],
	[ sort qw(transactional id aggregate_type aggregate_id type task_id saga_id step event_id attempt visible_at payload payload_omitted headers traceparent) ],
	'every key, always');
ok(exists $first{event_id} && !defined $first{event_id}, 'event_id is null for a saga task');
like($first{id}, qr/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'the id is a random UUID');
ok(!$first{payload_omitted}, 'the payload is there');

sql($node, q{BEGIN; SELECT saga.start('cdc', '{}', correlation_id => 'cdc-rollback'); ROLLBACK;});
is(scalar(messages()), 0, 'a rolled-back start: no message');

sql($node, "SELECT saga.complete($saga << 10, '{\"paid\": true}')");
@m = messages();
is(join(',', map { "$_->{type}:$_->{step}:$_->{attempt}" } @m), 'action:b:1',
	'completing a dispatches b: one message, none for the completion');

sql($node, "SELECT saga.fail(($saga << 10) | 2, '{\"try\": 1}', retryable => true)");
@m = messages();
is(join(',', map { "$_->{type}:$_->{step}:$_->{attempt}" } @m), 'action:b:2',
	'a retryable failure: the retry is a dispatch of attempt 2');
is(sql($node, "SELECT '$m[0]{visible_at}'::timestamptz > now() + interval '25 minutes'"),
	't', 'the retry is not to be worked on before its backoff (visible_at; 1 hour, jittered to at least half)');

# time passes for the retry (triggers off: this is not a dispatch of the engine's)
sql($node, "SET session_replication_role = replica; UPDATE saga.outbox SET visible_at = now() WHERE id = ($saga << 10) | 2");
is(scalar(messages()), 0, 'moving visible_at by hand with triggers off: no message');

sql($node, "SELECT saga.fail(($saga << 10) | 2, '{\"try\": 2}', retryable => false)");
@m = messages();
is(join(',', map { "$_->{type}:$_->{step}:$_->{aggregate_type}" } @m), 'compensate:a:cdc_a',
	'b fails for good: the compensation of a is dispatched');

my ($task, $lease) = split /\|/, sql($node, q{SELECT id || '|' || lease FROM saga.claim('cdc_a', 'w1', 1, '1 hour')});
is(scalar(messages()), 0, 'a claim is not a dispatch');
sql($node, "SELECT saga.heartbeat($task, $lease)");
is(scalar(messages()), 0, 'nor is a heartbeat');
sql($node, "SELECT saga.release($task, $lease)");
@m = messages();
is(join(',', map { "$_->{type}:$_->{step}:$_->{task_id}" } @m), "compensate:a:$task",
	'a release gives the task back: one dispatch');
sql($node, "SELECT saga.complete($task, '{}')");
is(scalar(messages()), 0, 'the task ends: no message');
is(sql($node, "SELECT status FROM saga.instances WHERE id = $saga"), 'compensated', 'the saga compensated');

sql($node, q{SELECT saga.subscribe('CdcPlaced', 'cdc_x'); SELECT saga.subscribe('CdcPlaced', 'cdc_y')});
my $event = sql($node, q{SELECT saga.publish('CdcPlaced', '{"n": 7}', correlation_id => 'cdc-e')});
@m = sort { $a->{aggregate_type} cmp $b->{aggregate_type} } messages();
is(join(',', map { "$_->{type}:$_->{aggregate_type}:$_->{aggregate_id}:$_->{event_id}" } @m),
	"event:cdc_x:cdc-e:$event,event:cdc_y:cdc-e:$event", 'an event: one message per delivery');
is(decode_json($m[0]{payload})->{n}, 7, 'a delivery\'s payload is the event\'s');

my %ids;
$ids{ $_->{id} }++ for @m, \%first;
is(scalar(grep { $_ > 1 } values %ids), 0, 'every message has an id of its own');

# a payload that would make the message pass 512 kB (backslashes escape to two
# bytes, then four): left out, the task's row still has it
my $big = sql($node, q{SELECT saga.start('cdc', jsonb_build_object('blob', repeat(chr(92), 200000)), correlation_id => 'cdc-big')});
@m = messages();
is(join(',', map { ($_->{payload} // 'null') . ':' . ($_->{payload_omitted} ? 'omitted' : 'kept') } @m),
	'null:omitted', 'a payload past 512 kB is left out of the message, and it says so');
is(sql($node, "SELECT length(payload ->> 'input') > 0 FROM saga.outbox WHERE id = $big << 10"), 't',
	'the payload is in the outbox');

sql($node, q{ALTER SYSTEM SET saga.cdc = off; SELECT pg_reload_conf()});
poll_until($node, q{SELECT current_setting('saga.cdc')}, 'off');
sql($node, q{SELECT saga.start('cdc', '{}', correlation_id => 'cdc-off')});
is(scalar(messages()), 0, 'saga.cdc off: no message');

# pgoutput, as Debezium reads it: an empty publication is enough for
# messages, and it is the user's, so DROP EXTENSION leaves it alone
sql($node, q{ALTER SYSTEM SET saga.cdc = on; SELECT pg_reload_conf()});
poll_until($node, q{SELECT current_setting('saga.cdc')}, 'on');
sql($node, q{CREATE PUBLICATION saga_dbz; SELECT pg_create_logical_replication_slot('saga_po', 'pgoutput')});
my $po = q{SELECT count(*) FROM pg_logical_slot_get_binary_changes('saga_po', NULL, NULL,
  'proto_version', '1', 'publication_names', 'saga_dbz', 'messages', 'true')
  WHERE substr(data, 1, 1) = 'M'::bytea};
sql($node, q{SELECT saga.start('cdc', '{}', correlation_id => 'cdc-po')});
is(sql($node, $po), '1', 'pgoutput with an empty publication: the message');

sql($node, q{DROP EXTENSION saga CASCADE; CREATE EXTENSION saga});
sql($node, q{SELECT saga.define('cdc2', '{"steps": [{"name": "a", "topic": "cdc_a"}]}');
             SELECT saga.start('cdc2', '{}', correlation_id => 'cdc-again')});
is(sql($node, $po), '1', 'after DROP EXTENSION and CREATE EXTENSION the publication still carries them');
messages();

$node->stop;
done_testing();
