# 005_restore.pl: a dump restored into a cluster where the role that defined
# a saga does not exist.  Every definition and saga comes back (0.1 kept the
# definer as regrole, whose input fails for a missing role and took every
# definition with it); only the orphaned definition refuses to run its SQL
# step, with 42704, and the others work as before.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;

my $src = saga_node('source');
sql(
	$src, q{
CREATE ROLE regress_owner IN ROLE saga_admin;
CREATE SCHEMA app AUTHORIZATION regress_owner;
GRANT USAGE ON SCHEMA app TO PUBLIC;
SET ROLE regress_owner;
CREATE FUNCTION app.step(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"ok": true}'::jsonb $$;
SELECT saga.define('orphan', '{"steps": [{"name": "a", "sql": "app.step"}]}');
RESET ROLE;
CREATE FUNCTION app.kept_step(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"kept": true}'::jsonb $$;
SELECT saga.define('kept', '{"steps": [{"name": "a", "sql": "app.kept_step"}, {"name": "b", "topic": "t"}]}');
SELECT saga.start('kept', '{"n": 1}');
SELECT saga.start('orphan', '{"n": 2}');
});
is( sql($src,
		"SELECT string_agg(name || ':' || owner, ' ' ORDER BY name) FROM saga.definitions"),
	'kept:' . sql($src, 'SELECT current_user') . ' orphan:regress_owner',
	'source: two definitions, one by regress_owner');

my $dump = "${PostgreSQL::Test::Utils::tmp_check}/saga_restore.dump";
$src->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $src->connstr('postgres') ],
	'pg_dump of the source database');

# the target cluster has no role regress_owner
my $dst = saga_node('target');
$dst->safe_psql('postgres', 'CREATE DATABASE restored');
# pg_restore reports what needs the missing role (owners, grants) and goes on
my ($stdout, $stderr);
IPC::Run::run([ 'pg_restore', '-d', $dst->connstr('restored'), $dump ],
	'>', \$stdout, '2>', \$stderr);
like($stderr, qr/role "regress_owner" does not exist/,
	'pg_restore complains about the missing role');

is( $dst->safe_psql('restored',
		"SELECT string_agg(name || ':' || owner, ' ' ORDER BY name) FROM saga.definitions"),
	'kept:' . sql($src, 'SELECT current_user') . ' orphan:regress_owner',
	'target: both definitions were restored');
is( $dst->safe_psql('restored',
		"SELECT string_agg(name || ':' || status, ' ' ORDER BY id) FROM saga.instances"),
	'kept:running orphan:completed',
	'target: the sagas were restored');

# the kept definition works; the orphaned one refuses to run its SQL step
my $kept = $dst->safe_psql('restored', "SELECT saga.start('kept', '{\"n\": 3}')");
is( $dst->safe_psql('restored',
		"SELECT string_agg(step || '=' || status, ' ' ORDER BY step_index) FROM saga.step_runs WHERE saga_id = $kept"
	),
	'a=succeeded b=ready',
	'target: a saga of the kept definition runs');
my $orphan = $dst->safe_psql('restored', "SELECT saga.start('orphan', '{\"n\": 4}')");
is( $dst->safe_psql('restored',
		"SELECT status || ' ' || (error ->> 'sqlstate') || ' ' || (error ->> 'message') "
		  . "FROM saga.step_runs WHERE saga_id = $orphan"),
	'failed 42704 role "regress_owner" that defined saga "orphan" version 1 does not exist',
	'target: the orphaned definition fails its step, clearly');
is($dst->safe_psql('restored', "SELECT status FROM saga.instances WHERE id = $orphan"),
	'compensated', 'target: and its saga compensates');

# the role, created again, is the definer again (as pg_dump maps owners: by name)
$dst->safe_psql('restored',
	'CREATE ROLE regress_owner IN ROLE saga_admin; ALTER SCHEMA app OWNER TO regress_owner; '
	  . 'ALTER FUNCTION app.step(jsonb) OWNER TO regress_owner');
$orphan = $dst->safe_psql('restored', "SELECT saga.start('orphan', '{\"n\": 5}')");
is( $dst->safe_psql('restored',
		"SELECT status || ' ' || result::text FROM saga.step_runs WHERE saga_id = $orphan"),
	'succeeded {"ok": true}',
	'target: with the role back, the step runs as it');

$src->stop;
$dst->stop;
done_testing();
