# test/t/SagaTest.pm: helpers shared by the TAP tests in test/t/.
#
# saga_node() brings up a cluster with the library preloaded and the extension
# created in the database "postgres", the one saga.databases names.
#
# saga.max_sleep is raised to an hour: the worker then only acts when it is
# woken (by a backend that commits timed work, by SIGHUP) or when the due time
# it computed arrives.  A missed wake-up makes a test time out instead of
# being hidden by the default 60 s safety sleep.

package SagaTest;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(saga_node poll_until wait_log worker_pid sql);

# seconds any single wait may take before the test gives up
our $WAIT = 60;

sub saga_node
{
	my ($name, $extra_conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'saga'\n"
		  . "saga.databases = 'postgres'\n"
		  . "saga.max_sleep = '1h'\n"
		  . ($extra_conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION saga');
	return $node;
}

# poll_query_until in database postgres with a deadline of $secs (default
# $WAIT) instead of the 180 s default
sub poll_until
{
	my ($node, $query, $expected, $secs) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $secs // $WAIT;
	return $node->poll_query_until('postgres', $query, $expected);
}

# true once the server log, from byte $offset on, matches $re
sub wait_log
{
	my ($node, $re, $offset, $secs) = @_;
	my $deadline = time() + ($secs // $WAIT);

	while (1)
	{
		my $log = slurp_file($node->logfile, $offset // 0);
		return 1 if $log =~ $re;
		if (time() > $deadline)
		{
			diag "server log never matched $re";
			return 0;
		}
		usleep(100_000);
	}
}

# pid of the saga worker of a database, '' if none runs
sub worker_pid
{
	my ($node, $db) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity "
		  . "WHERE backend_type = 'saga worker' AND datname = '"
		  . ($db // 'postgres') . "'");
}

# safe_psql in database postgres
sub sql
{
	my ($node, $query) = @_;
	return $node->safe_psql('postgres', $query);
}

1;
