# 004_trojan.pl: the engine never runs an object somebody planted, and user
# code never changes the session that called the engine.
#
# Setup: mallory (unprivileged) owns a schema named after the bootstrap
# superuser (the worker's "$user") and may create in public; eve (a
# non-superuser saga_admin) owns schema eve.  In all three schemas we plant
# operators for every pair of common types and functions and aggregates the
# engine could call unqualified, each of which first advances
# public.canary_seq (a sequence survives rollback) and logs a WARNING
# "saga-canary".  ALTER DATABASE / ALTER ROLE then put those schemas before
# pg_catalog in every session's search_path, the worker's included (the
# server is restarted for the worker to pick that up).
#
# eve defines sagas whose SQL steps and compensations try to poison whoever
# runs them: set_config('search_path') and set_config('work_mem'), session
# wide or local, one compensation failing every time.  Every entry point is
# then called by the superuser, eve and wally (a saga_worker), each with a
# poisoned search_path of its own, and after each call (succeeded or failed)
# the session is checked against the state before the call: search_path,
# work_mem and current_user, then every other setting, prepared statements,
# cursors, LISTEN channels, temporary relations and advisory locks; calls
# made in a transaction block are checked inside it too.  The worker handles
# a step timeout, lapsed leases, a deadline, a failing compensation and
# retention.
#
# At the end: the canary sequence was never advanced and the log holds no
# canary; user code ran as its definer and found no setting of a previous
# guest.  The canaries carry application_name (set per call, "tj <role>:
# <call>") or the backend type, so a failure says which context ran what,
# and which engine statement called it.
#
# A TODO section records state that is known to outlive the sandbox
# (advisory locks, SET CONSTRAINTS, cursors, lastval()).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Utils;
use SagaTest;
use Test::More;

my $node = saga_node('trojan',
	"saga.retention = -1\n" . "saga.compensation_incident_after = 2\n");

# The test's own sessions must not run planted objects either: they pin
# search_path from the command line, which wins over ALTER DATABASE/ROLE.
# Caller sessions (sub session) drop this and set a poisoned path.
$ENV{PGOPTIONS} = '-c search_path=pg_catalog,pg_temp';

my $su = sql($node, 'SELECT current_user');
my $su_ident = sql($node, 'SELECT quote_ident(current_user)');
my $su_lit = sql($node, 'SELECT quote_literal(current_user)');

# what every caller session sets before calling the engine
my $POISON = q{"$user", public, eve, pg_catalog};

# what ALTER DATABASE/ROLE give everybody else (the worker)
my $DBPATH = "$su_ident, public, eve, pg_catalog";

# what a poisoning guest sets: its own schema and mallory's before pg_catalog
my $GUEST_PATH = q{"$user", eve, public, pg_catalog};

# wait limit for the worker; shortened once a wait fails (a broken engine
# should not make the test crawl)
my $wait = 30;

sub wait_for
{
	my ($query, $expected, $what) = @_;
	my $ok = poll_until($node, $query, $expected, $wait);
	ok($ok, $what)
	  or do
	{
		diag "gave up after $wait s: $query\n  wanted: $expected\n  got:    "
		  . sql($node, $query);
		$wait = 5;
	};
	return $ok;
}

# ------------------------------------------------------------------------
# roles, schemas, the canary
# ------------------------------------------------------------------------

sql(
	$node, qq{
CREATE ROLE mallory LOGIN;
GRANT CREATE ON SCHEMA public TO mallory;
CREATE SCHEMA $su_ident AUTHORIZATION mallory;
GRANT USAGE ON SCHEMA $su_ident TO PUBLIC;

CREATE ROLE eve LOGIN IN ROLE saga_admin;
CREATE SCHEMA eve AUTHORIZATION eve;
GRANT USAGE ON SCHEMA eve TO PUBLIC;

CREATE ROLE wally LOGIN IN ROLE saga_worker;

-- the superuser's own SQL steps
CREATE SCHEMA tjsu;

CREATE SEQUENCE public.canary_seq;
GRANT USAGE ON SEQUENCE public.canary_seq TO PUBLIC;

-- every run of a guest (SQL step or compensation): who, and what it found
CREATE TABLE public.tj_ran (
    fn   text NOT NULL,
    who  text NOT NULL,
    sp   text NOT NULL,
    wm   text NOT NULL,
    at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
GRANT INSERT, SELECT ON public.tj_ran TO PUBLIC;
});

# The planting helpers.  The canary text is assembled at run time so that the
# statements logged by log_statement = all never contain it.
sql(
	$node, q{
CREATE FUNCTION public.tj_canary_body(objname text, tail text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $f$
SELECT format($b$
DECLARE
    ctx text;
BEGIN
    PERFORM pg_catalog.nextval('public.canary_seq'::pg_catalog.regclass);
    ctx := pg_catalog.current_setting('application_name');
    IF ctx OPERATOR(pg_catalog.=) '' THEN
        SELECT a.backend_type INTO ctx FROM pg_catalog.pg_stat_activity a
         WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid();
    END IF;
    RAISE WARNING '%s: %% ran %% [%%]', current_user, %L, ctx;
    %s
END
$b$, 'saga' || '-canary', objname, tail)
$f$;

CREATE FUNCTION public.tj_plant(sch text) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $p$
DECLARE
    types text[] := ARRAY['bigint', 'integer', 'smallint', 'text', 'jsonb', 'timestamptz',
                          'interval', 'boolean', 'double precision', 'numeric'];
    ops text[] := ARRAY['=', '<>', '<', '<=', '>', '>=', '+', '-', '*', '/', '||',
                        '%', '<<', '>>', '&', '|', '->', '->>', '@>', '?'];
    words text[] := ARRAY['eq', 'ne', 'lt', 'le', 'gt', 'ge', 'pl', 'mi', 'mul', 'div', 'cat',
                          'mod', 'shl', 'shr', 'and', 'or', 'arrow', 'arrowtext', 'contains', 'exists'];
    -- name | argument types | result type | f(unction) v(oid) s(et)
    funcs text[] := ARRAY[
        'now||timestamptz|f', 'clock_timestamp||timestamptz|f',
        'statement_timestamp||timestamptz|f', 'transaction_timestamp||timestamptz|f',
        'random||double precision|f', 'pg_backend_pid||integer|f', 'txid_current||bigint|f',
        'gen_random_uuid||uuid|f',
        'jsonb_build_object|text,bigint|jsonb|f', 'jsonb_build_object|text,integer|jsonb|f',
        'jsonb_build_object|text,text|jsonb|f', 'jsonb_build_object|text,jsonb|jsonb|f',
        'jsonb_build_object|text,text,text,text|jsonb|f',
        'jsonb_build_object|text,jsonb,text,jsonb|jsonb|f',
        'to_hex|bigint|text|f', 'to_hex|integer|text|f',
        'lpad|text,integer,text|text|f', 'substr|text,integer,integer|text|f',
        'substr|text,integer|text|f', 'cardinality|anyarray|integer|f',
        'hashtext|text|integer|f', 'pg_advisory_xact_lock|integer,integer||v',
        'pg_advisory_xact_lock|bigint||v', 'pg_try_advisory_xact_lock|bigint|boolean|f',
        'nextval|regclass|bigint|f', 'currval|regclass|bigint|f',
        'unnest|bigint[]|bigint|s', 'unnest|text[]|text|s', 'unnest|integer[]|integer|s',
        'unnest|smallint[]|smallint|s', 'unnest|interval[]|interval|s',
        'unnest|jsonb[]|jsonb|s', 'unnest|anyarray|anyelement|s',
        'array_position|anyarray,anyelement|integer|f',
        'array_length|anyarray,integer|integer|f',
        'array_append|anyarray,anyelement|anyarray|f',
        'jsonb_concat|jsonb,jsonb|jsonb|f', 'jsonb_set|jsonb,text[],jsonb|jsonb|f',
        'jsonb_typeof|jsonb|text|f', 'jsonb_object_field|jsonb,text|jsonb|f',
        'jsonb_object_field_text|jsonb,text|text|f', 'jsonb_array_length|jsonb|integer|f',
        'to_jsonb|anyelement|jsonb|f',
        'textcat|text,text|text|f', 'texteq|text,text|boolean|f', 'length|text|integer|f',
        'lower|text|text|f', 'upper|text|text|f', 'format|text|text|f',
        'int8mul|bigint,bigint|bigint|f', 'int8pl|bigint,bigint|bigint|f',
        'int8mi|bigint,bigint|bigint|f', 'int8eq|bigint,bigint|boolean|f',
        'int8lt|bigint,bigint|boolean|f', 'int8le|bigint,bigint|boolean|f',
        'int4pl|integer,integer|integer|f', 'int4mi|integer,integer|integer|f',
        'int4eq|integer,integer|boolean|f', 'int8|integer|bigint|f', 'int4|bigint|integer|f',
        'timestamptz_le|timestamptz,timestamptz|boolean|f',
        'timestamptz_lt|timestamptz,timestamptz|boolean|f',
        'timestamptz_pl_interval|timestamptz,interval|timestamptz|f',
        'interval_mul|interval,double precision|interval|f',
        'set_config|text,text,boolean|text|f', 'current_setting|text|text|f',
        'pg_notify|text,text||v'];
    -- aggregate name | argument | state function | state type | initcond
    aggs text[] := ARRAY[
        'count|*|int8inc|bigint|0', 'count|"any"|int8inc_any|bigint|0',
        'count|bigint|int8inc_any|bigint|0', 'count|text|int8inc_any|bigint|0',
        'min|timestamptz|timestamptz_smaller|timestamptz|', 'max|timestamptz|timestamptz_larger|timestamptz|',
        'min|bigint|int8smaller|bigint|', 'max|bigint|int8larger|bigint|',
        'min|integer|int4smaller|integer|', 'max|integer|int4larger|integer|',
        'min|interval|interval_smaller|interval|', 'max|interval|interval_larger|interval|',
        'sum|integer|int4_sum|bigint|'];
    l text;
    r text;
    op text;
    res text;
    tail text;
    fn text;
    spec text[];
    args text;
    call text;
    n integer := 0;
BEGIN
    FOREACH l IN ARRAY types LOOP
        FOREACH r IN ARRAY types LOOP
            FOR i IN 1 .. array_length(ops, 1) LOOP
                op := ops[i];
                -- return what pg_catalog would, so the engine goes on working
                -- and every context that reaches a planted object is seen
                BEGIN
                    EXECUTE format('SELECT pg_catalog.pg_typeof(NULL::%s %s NULL::%s)::text', l, op, r)
                       INTO res;
                    tail := format('RETURN $1 OPERATOR(pg_catalog.%s) $2;', op);
                EXCEPTION WHEN OTHERS THEN
                    res := CASE WHEN op = ANY (ARRAY['=', '<>', '<', '<=', '>', '>=', '@>', '?'])
                                THEN 'boolean' ELSE l END;
                    tail := 'RETURN NULL;';
                END;
                fn := format('tj_%s_%s_%s', words[i], replace(l, ' ', '_'), replace(r, ' ', '_'));
                BEGIN
                    EXECUTE format('CREATE FUNCTION %I.%I(%s, %s) RETURNS %s LANGUAGE plpgsql '
                                   'SET search_path = pg_catalog, pg_temp AS %L',
                                   sch, fn, l, r, res,
                                   public.tj_canary_body(format('%s.%s(%s,%s)', sch, op, l, r), tail));
                    EXECUTE format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.%I)',
                                   sch, op, l, r, sch, fn);
                    n := n + 1;
                EXCEPTION WHEN OTHERS THEN
                    NULL;       -- a combination CREATE OPERATOR refuses
                END;
            END LOOP;
        END LOOP;
    END LOOP;

    FOREACH fn IN ARRAY funcs LOOP
        spec := string_to_array(fn, '|');
        args := (SELECT string_agg('$' || g, ', ')
                   FROM generate_series(1, coalesce(array_length(string_to_array(spec[2], ','), 1), 0)) g);
        call := format('pg_catalog.%I(%s)', spec[1], coalesce(args, ''));
        tail := CASE spec[4]
                WHEN 'f' THEN format('RETURN %s;', call)
                WHEN 'v' THEN format('PERFORM %s;', call)
                ELSE format('RETURN QUERY SELECT * FROM %s;', call) END;
        BEGIN
            EXECUTE format('CREATE FUNCTION %I.%I(%s) RETURNS %s%s LANGUAGE plpgsql '
                           'SET search_path = pg_catalog, pg_temp AS %L',
                           sch, spec[1], spec[2],
                           CASE WHEN spec[4] = 's' THEN 'SETOF ' ELSE '' END,
                           CASE WHEN spec[4] = 'v' THEN 'void' ELSE spec[3] END,
                           public.tj_canary_body(format('%s.%s(%s)', sch, spec[1], spec[2]), tail));
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'not planted: %.%(%): %', sch, spec[1], spec[2], SQLERRM;
        END;
    END LOOP;

    FOREACH fn IN ARRAY aggs LOOP
        spec := string_to_array(fn, '|');
        BEGIN
            EXECUTE format('CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql '
                           'SET search_path = pg_catalog, pg_temp AS %L',
                           sch, format('tj_final_%s_%s', spec[1], md5(spec[2])), spec[4], spec[4],
                           public.tj_canary_body(format('%s.%s(%s)', sch, spec[1], spec[2]), 'RETURN $1;'));
            EXECUTE format('CREATE AGGREGATE %I.%I(%s) (SFUNC = pg_catalog.%I, STYPE = %s, '
                           'FINALFUNC = %I.%I%s)',
                           sch, spec[1], spec[2], spec[3], spec[4],
                           sch, format('tj_final_%s_%s', spec[1], md5(spec[2])),
                           CASE WHEN spec[5] <> '' THEN format(', INITCOND = %L', spec[5]) ELSE '' END);
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'not planted: aggregate %.%(%): %', sch, spec[1], spec[2], SQLERRM;
        END;
    END LOOP;
    RETURN n;
END
$p$;
});

my %planted;
for my $p ([ 'mallory', $su ], [ 'mallory', 'public' ], [ 'eve', 'eve' ])
{
	my ($role, $schema) = @$p;
	$planted{$schema} = $node->safe_psql(
		'postgres',
		'SELECT public.tj_plant(' . sql($node, "SELECT quote_literal('$schema')") . ')',
		extra_params => [ '-U', $role ]);
	cmp_ok($planted{$schema}, '>', 1000, "$role planted $planted{$schema} objects in schema $schema");
}
sql($node, 'DROP FUNCTION public.tj_plant(text); DROP FUNCTION public.tj_canary_body(text, text)');

# The guests: SQL steps and compensations that try to poison whoever runs
# them, and record who they ran as and what they found.
sub guests
{
	my ($schema) = @_;
	my $sql = '';
	for my $g (
		[ 'step_poison', 'false', '' ],
		[ 'step_poison_local', 'true', '' ],
		[ 'comp_poison', 'false', '' ],
		[ 'comp_poison_local', 'true', '' ],
		[ 'comp_broken', 'false', q{RAISE EXCEPTION 'tj: this compensation always fails';} ])
	{
		my ($name, $local, $raise) = @$g;
		$sql .= qq{
CREATE FUNCTION $schema.$name(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS \$g\$
BEGIN
    INSERT INTO public.tj_ran (fn, who, sp, wm)
    VALUES ('$schema.$name', current_user, pg_catalog.current_setting('search_path'),
            pg_catalog.current_setting('work_mem'));
    PERFORM pg_catalog.set_config('search_path', '$GUEST_PATH', $local);
    PERFORM pg_catalog.set_config('work_mem', '7MB', $local);
    $raise
    RETURN '{}'::jsonb;
END
\$g\$;
};
	}
	return $sql;
}
$node->safe_psql('postgres', guests('eve'), extra_params => [ '-U', 'eve' ]);
sql($node, guests('tjsu'));

my $nsp_list = "'eve', 'public', $su_lit";
my $nplanted = sql(
	$node, qq{
SELECT (SELECT count(*) FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE n.nspname IN ($nsp_list))
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ($nsp_list) AND p.proname NOT LIKE '%poison%'
           AND p.proname <> 'comp_broken')});

# ------------------------------------------------------------------------
# the trap works: a poisoned session runs planted objects, and we see it
# ------------------------------------------------------------------------

{
	local $ENV{PGOPTIONS};
	delete $ENV{PGOPTIONS};
	my $log_at = -s $node->logfile;
	$node->safe_psql('postgres',
		"SET search_path = $POISON; SET application_name = 'tj self-test'; "
		  . "SELECT now() IS NULL, 1::bigint * interval '1 second', 'a'::text || 'b'",
		extra_params => [ '-U', 'wally' ]);
	cmp_ok(sql($node, 'SELECT last_value FROM public.canary_seq'),
		'>=', 3, 'self-test: a poisoned session runs planted now(), * and || and the canary counts');
	ok(wait_log($node, qr/WARNING:  saga-canary: wally ran public\.\*\(bigint,interval\) \[tj self-test\]/, $log_at),
		'self-test: and the log shows the canary');
	sql($node, "SELECT setval('public.canary_seq', 1, false)");
}

# every session, the worker's included, looks in the planted schemas first
sql(
	$node, qq{
ALTER DATABASE postgres SET search_path = $DBPATH;
ALTER ROLE $su_ident SET search_path = $DBPATH;
});
my $log_from = -s $node->logfile;
$node->restart;
ok( poll_until(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname = 'postgres'",
		'1'),
	'the saga worker runs again after the restart');
{
	local $ENV{PGOPTIONS};
	delete $ENV{PGOPTIONS};
	is($node->safe_psql('postgres', 'SHOW search_path'),
		"$su, public, eve, pg_catalog",
		'a new session of the superuser gets the planted schemas before pg_catalog');
}

# ------------------------------------------------------------------------
# caller sessions
# ------------------------------------------------------------------------

# What a check prints: search_path, work_mem, current_user (the "session"),
# then what else a guest could leave behind (the "state"): prepared
# statements, open cursors, LISTEN channels, temporary relations, session
# advisory locks, and last every setting but application_name (which each
# call sets).  Only pg_catalog objects, by exact name: the session's own
# search_path is poisoned.
my $CHK = join(
	', ',
	"pg_catalog.current_setting('search_path')",
	"pg_catalog.current_setting('work_mem')",
	'current_user',
	'(SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements)',
	'(SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors)',
	'(SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels())',
	'(SELECT pg_catalog.count(*) FROM pg_catalog.pg_class '
	  . 'WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())',
	'(SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks '
	  . "WHERE locktype OPERATOR(pg_catalog.=) 'advisory' "
	  . 'AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())',
	'(SELECT pg_catalog.string_agg(name OPERATOR(pg_catalog.||) '
	  . "'=' OPERATOR(pg_catalog.||) setting, pg_catalog.chr(1) ORDER BY name) "
	  . 'FROM pg_catalog.pg_settings '
	  . "WHERE name OPERATOR(pg_catalog.<>) 'application_name')");
my @STATE = qw(prepared cursors listening temp advisory);
my $ncalls = 0;

# a check line: session => "search_path|work_mem|user", state => "name=n ...",
# settings => {name => value}
sub parse_check
{
	my ($line) = @_;
	my @f = split /\|/, $line, 9;
	return undef unless @f == 9;
	my %settings = map { split /=/, $_, 2 } split /\x01/, $f[8];
	return {
		session => join('|', @f[ 0 .. 2 ]),
		state => join(' ', map { "$STATE[$_]=$f[$_ + 3]" } 0 .. $#STATE),
		settings => \%settings
	};
}

# test that check $got equals check $base
sub same_session
{
	my ($got, $base, $what) = @_;
	my $ok = is($got && $got->{session}, $base->{session}, "$what: search_path|work_mem|current_user");
	my @changed;
	if ($got)
	{
		for my $k (sort keys %{ { %{ $base->{settings} }, %{ $got->{settings} } } })
		{
			my ($b, $g) = ($base->{settings}{$k} // '(none)', $got->{settings}{$k} // '(none)');
			push @changed, "$k: $b -> $g" if $b ne $g;
		}
	}
	$ok &= is($got && join(' ', $got->{state}, @changed),
		$base->{state}, "$what: no other session state or setting changed");
	return $ok;
}

# a call: label, sql (one entry-point statement, may end in \gset), expect
# ('ok', 'error', '*' or a SQLSTATE), optionally out (regex on its output),
# tx (run it in BEGIN ... COMMIT and check the session inside the
# transaction too), pre (statements before it, inside the transaction)
sub call
{
	my ($label, $sql, $expect, %opt) = @_;
	return { label => $label, sql => $sql, expect => $expect, %opt };
}

# one psql session as $role: set the poisoned search_path, then each call,
# each followed by a check of the session
sub session
{
	my ($role, @calls) = @_;
	# (an empty DO loads plpgsql first: the guests' loading it adds its
	# settings, which is no change a guest made)
	my $script = "SET search_path = $POISON;\nDO \$\$BEGIN END\$\$;\nSELECT '\@\@base', $CHK;\n";

	for my $i (0 .. $#calls)
	{
		my $c = $calls[$i];
		$script .= "SET application_name = 'tj $role: $c->{label}';\n";
		$script .= "BEGIN;\n" if $c->{tx};
		$script .= "$c->{pre}\n" if $c->{pre};
		$script .= "\\warn \@\@call $i\n\\echo \@\@call $i\n$c->{sql}\n"
		  . "\\echo \@\@result $i :ERROR :SQLSTATE\n";
		$script .= "SELECT '\@\@chk', $i, 'tx', $CHK;\nCOMMIT;\n" if $c->{tx};
		$script .= "SELECT '\@\@chk', $i, 'after', $CHK;\n";
		$ncalls++;
	}

	local $ENV{PGOPTIONS};
	delete $ENV{PGOPTIONS};
	my ($ret, $out, $err) = $node->psql(
		'postgres', $script,
		extra_params => [ '-U', $role ],
		on_error_stop => 0);

	my (%res, %chk, %output, %errors, $base, $cur);
	for my $line (split /\n/, $out)
	{
		if ($line =~ /^\@\@base\|(.*)$/) { $base = parse_check($1); }
		elsif ($line =~ /^\@\@call (\d+)$/) { $cur = $1; $output{$cur} = ''; }
		elsif ($line =~ /^\@\@result (\d+) (\S+) (\S+)$/) { $res{$1} = [ $2, $3 ]; undef $cur; }
		elsif ($line =~ /^\@\@chk\|(\d+)\|(\w+)\|(.*)$/) { $chk{$1}{$2} = parse_check($3); }
		elsif (defined $cur) { $output{$cur} .= "$line\n"; }
	}
	undef $cur;
	for my $line (split /\n/, $err)
	{
		if ($line =~ /^\@\@call (\d+)$/) { $cur = $1; }
		elsif (defined $cur) { $errors{$cur} .= "$line\n"; }
	}

	is($base && $base->{session}, "$POISON|4MB|$role",
		"$role: the session starts with search_path $POISON")
	  or diag "psql said: $err";
	BAIL_OUT("cannot read the session check of $role") unless $base;

	# each call is held to the state before it (the first leak is blamed on
	# the call that caused it, not on every call after it)
	my $before = $base;
	for my $i (0 .. $#calls)
	{
		my $c = $calls[$i];
		my $what = "$role: $c->{label}";
		my ($error, $state) = @{ $res{$i} // [ 'missing', 'missing' ] };
		my $good =
			$c->{expect} eq '*'     ? $error ne 'missing'
		  : $c->{expect} eq 'ok'    ? $error eq 'false'
		  : $c->{expect} eq 'error' ? $error eq 'true'
		  :                           ($error eq 'true' && $state eq $c->{expect});
		ok($good, "$what: $c->{expect}")
		  or diag "got ERROR=$error SQLSTATE=$state\n" . ($errors{$i} // '');
		like($output{$i} // '', $c->{out}, "$what: returns $c->{out}")
		  if $good && $c->{out};
		same_session($chk{$i}{tx}, $before, "$what: the caller's transaction after it")
		  if $c->{tx} && $error eq 'false';
		same_session($chk{$i}{after}, $before, "$what: the caller's session after it");
		$before = $chk{$i}{after} // $before;
	}
	return \%output;
}

# ------------------------------------------------------------------------
# definitions
# ------------------------------------------------------------------------

my $FAST = q{"retry": {"max_attempts": 2, "initial_delay": "100 milliseconds", "backoff": 1, "max_delay": "100 milliseconds", "jitter": false}};
my %defs = (
	tj_fwd => q{{"steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_poison"}},
      {"name": "a2", "sql": "eve.step_poison_local", "compensate": {"sql": "eve.comp_poison_local"}},
      {"name": "b", "topic": "tj_fwd_b", "compensate": {"topic": "tj_fwd_b_undo"}},
      {"name": "c", "sql": "eve.step_poison"},
      {"name": "d", "topic": "tj_fwd_d"}]}},
	tj_fail => q{{"steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_poison_local"}},
      {"name": "b", "topic": "tj_fail_b",
       "retry": {"max_attempts": 3, "initial_delay": "100 milliseconds", "backoff": 1, "max_delay": "100 milliseconds", "jitter": false}}]}},
	tj_cancel => q{{"steps": [
      {"name": "a", "sql": "eve.step_poison_local", "compensate": {"sql": "eve.comp_poison"}},
      {"name": "b", "topic": "tj_cancel_b"}]}},
	tj_retry => q{{"steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_poison"}},
      {"name": "b", "topic": "tj_retry_b", "compensate": {"topic": "tj_retry_b_undo"},
       "retry": {"max_attempts": 3, "initial_delay": "100 milliseconds", "backoff": 1, "max_delay": "100 milliseconds", "jitter": false}},
      {"name": "c", "topic": "tj_retry_c"}]}},
	tj_broken => qq{{"steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_broken"}, $FAST},
      {"name": "b", "topic": "tj_broken_b"}]}},
	tj_timeout => q{{"steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_poison"}},
      {"name": "b", "topic": "tj_timeout_b", "timeout": "1 second"}]}},
	tj_deadline => q{{"deadline": "1 second", "steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_poison_local"}},
      {"name": "b", "topic": "tj_deadline_b"}]}},
	tj_lease => q{{"steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_poison"}},
      {"name": "b", "topic": "tj_lease_b", "retry": {"max_attempts": 2}}]}},
	tj_wbroken => qq{{"steps": [
      {"name": "a", "sql": "eve.step_poison", "compensate": {"sql": "eve.comp_broken"}, $FAST},
      {"name": "b", "topic": "tj_wbroken_b", "timeout": "1 second"}]}},
);
my %su_defs = (
	tj_su => q{{"steps": [
      {"name": "a", "sql": "tjsu.step_poison", "compensate": {"sql": "tjsu.comp_poison"}},
      {"name": "b", "topic": "tj_su_b"}]}},
	tj_su_topic => q{{"steps": [{"name": "a", "topic": "tj_su_topic_a"}]}},
);

sub define_call
{
	my ($name, $doc, $expect) = @_;
	return call("define $name", "SELECT saga.define('$name', '$doc');", $expect);
}

session('eve',
	(map { define_call($_, $defs{$_}, 'ok') } sort keys %defs),
	call('define tj_fwd again (identical)', "SELECT saga.define('tj_fwd', '$defs{tj_fwd}');",
		'ok', out => qr/^1$/),
	call('define an invalid document', q{SELECT saga.define('tj_bad', '{"steps": []}');},
		'22023'),
	call('define with an unqualified SQL function',
		q{SELECT saga.define('tj_bad', '{"steps": [{"name": "a", "sql": "step_poison"}]}');},
		'error'),
	call('claim (not a saga_worker)', q{SELECT saga.claim('tj_fwd_b', 'eve');}, '42501'),
	call('tick', 'SELECT saga.tick();', 'ok'));
session($su, map { define_call($_, $su_defs{$_}, 'ok') } sort keys %su_defs);
session('wally', define_call('tj_wally', $su_defs{tj_su_topic}, '42501'),
	call('tick (not a saga_admin)', 'SELECT saga.tick();', '42501'));

my $nsagas = 0;
sub corr { return 'tj-' . $_[0] . '-' . ++$nsagas; }

sub status
{
	my ($corr) = @_;
	return "SELECT status FROM saga.instances WHERE correlation_id = '$corr'";
}

sub sid
{
	my ($corr) = @_;
	return "(SELECT id FROM saga.instances WHERE correlation_id OPERATOR(pg_catalog.=) '$corr')";
}

sub start_call
{
	my ($name, $corr, %opt) = @_;
	return call("start $name", "SELECT saga.start('$name', '{\"n\": 1}', correlation_id => '$corr');",
		'ok', %opt);
}

sub claim_call
{
	my ($topic, $role, $lease) = @_;
	$lease //= '30 seconds';
	return call("claim $topic",
		"SELECT id AS t_id, lease AS t_lease FROM saga.claim('$topic', '$role', 1, '$lease') \\gset",
		'ok');
}

# lock a visible task of $topic in the caller's transaction, then report it
sub polled
{
	my ($label, $topic, $report, $expect, %opt) = @_;
	return call(
		$label, $report, $expect,
		tx => 1,
		pre => "SELECT id AS p_id FROM saga.outbox WHERE topic OPERATOR(pg_catalog.=) '$topic' "
		  . "AND visible_at OPERATOR(pg_catalog.<=) pg_catalog.now() LIMIT 1 FOR UPDATE SKIP LOCKED \\gset",
		%opt);
}

sub visible
{
	my ($topic) = @_;
	return "SELECT count(*) FROM saga.outbox WHERE topic = '$topic' AND visible_at <= now() "
	  . "AND lease_owner IS NULL";
}

# ------------------------------------------------------------------------
# forward: start (SQL steps run in it), claim, heartbeat, complete with a
# lease (an SQL step runs in it), complete in a transactional poll
# ------------------------------------------------------------------------

for my $p ([ 'wally', 'wally' ], [ 'eve', $su ], [ $su, 'wally' ])
{
	my ($starter, $worker) = @$p;
	my $c = corr('fwd');
	session($starter, start_call('tj_fwd', $c, tx => 1));
	wait_for(visible('tj_fwd_b'), '1', "fwd $c: b is dispatched");
	session(
		$worker,
		claim_call('tj_fwd_b', $worker),
		call('heartbeat', 'SELECT saga.heartbeat(:t_id, :t_lease) IS NOT NULL;', 'ok', out => qr/^t$/),
		call('heartbeat extend', "SELECT saga.heartbeat(:t_id, :t_lease, extend => '1 minute') IS NOT NULL;",
			'ok', out => qr/^t$/),
		call('heartbeat under a wrong lease', 'SELECT saga.heartbeat(:t_id, 99);', 'error'),
		call('complete b with its lease', q{SELECT saga.complete(:t_id, '{"b": 1}', lease => :t_lease);},
			'ok', out => qr/^t$/),
		call('complete b again (identical)', q{SELECT saga.complete(:t_id, '{"b": 1}', lease => :t_lease);},
			'ok', out => qr/^f$/),
		call('complete b again (conflicting)', q{SELECT saga.complete(:t_id, '{"b": 2}', lease => :t_lease);},
			'55000'),
		polled('complete d in a transactional poll', 'tj_fwd_d', q{SELECT saga.complete(:p_id, '{"d": 1}');},
			'ok', out => qr/^t$/),
		call('complete an unknown task', q{SELECT saga.complete(1, '{}');}, '42704'));
	wait_for(status($c), 'completed', "fwd $c: completed");
}

# ------------------------------------------------------------------------
# fail: retryable with a lease, retryable in a transactional poll, then for
# good (the SQL compensation runs in that call)
# ------------------------------------------------------------------------

for my $worker ('wally', $su)
{
	my $c = corr('fail');
	session($worker, start_call('tj_fail', $c));
	wait_for(visible('tj_fail_b'), '1', "fail $c: b is dispatched");
	session(
		$worker,
		claim_call('tj_fail_b', $worker),
		call('fail b retryably with its lease',
			q{SELECT saga.fail(:t_id, '{"reason": "busy"}', retryable => true, lease => :t_lease);},
			'ok', out => qr/^t$/));
	wait_for(visible('tj_fail_b'), '1', "fail $c: b is visible again");
	session($worker,
		polled('fail b retryably in a transactional poll', 'tj_fail_b',
			q{SELECT saga.fail(:p_id, '{"reason": "busy again"}');}, 'ok', out => qr/^t$/));
	wait_for(visible('tj_fail_b'), '1', "fail $c: b is visible once more");
	session(
		$worker,
		claim_call('tj_fail_b', $worker),
		call('fail b for good',
			q{SELECT saga.fail(:t_id, '{"reason": "no"}', retryable => false, lease => :t_lease);},
			'ok', out => qr/^t$/, tx => 1),
		call('fail b again (identical)',
			q{SELECT saga.fail(:t_id, '{"reason": "no"}', retryable => false, lease => :t_lease);},
			'ok', out => qr/^f$/),
		call('fail b again (conflicting)',
			q{SELECT saga.fail(:t_id, '{"reason": "other"}', retryable => false, lease => :t_lease);},
			'55000'));
	wait_for(status($c), 'compensated', "fail $c: compensated");
}

# ------------------------------------------------------------------------
# cancel (the SQL compensation runs in it), also where it must fail
# ------------------------------------------------------------------------

for my $p ([ 'wally', 'eve' ], [ 'eve', $su ], [ $su, 'eve' ])
{
	my ($starter, $admin) = @$p;
	my $c = corr('cancel');
	session($starter, start_call('tj_cancel', $c));
	session(
		$admin,
		call('cancel', "SELECT saga.cancel(" . sid($c) . ", 'changed my mind');", 'ok', tx => 1),
		call('cancel again (finished)', "SELECT saga.cancel(" . sid($c) . ", 'again');", '55000'),
		call('cancel an unknown saga', "SELECT saga.cancel(424242424, 'who');", '42704'));
	wait_for(status($c), 'cancelled', "cancel $c: cancelled");
}
session('wally', call('cancel (not a saga_admin)', "SELECT saga.cancel(1, 'no');", '42501'));

# ------------------------------------------------------------------------
# retry: a topic compensation fails for good, a person retries, and the SQL
# compensation that follows runs in the worker's report
# ------------------------------------------------------------------------

for my $admin ('eve', $su)
{
	my $c = corr('retry');
	session('wally', start_call('tj_retry', $c));
	wait_for(visible('tj_retry_b'), '1', "retry $c: b is dispatched");
	session('wally', claim_call('tj_retry_b', 'wally'),
		call('complete b', q{SELECT saga.complete(:t_id, '{}', lease => :t_lease);}, 'ok'));
	wait_for(visible('tj_retry_c'), '1', "retry $c: c is dispatched");
	session(
		'wally',
		claim_call('tj_retry_c', 'wally'),
		call('fail c for good', q{SELECT saga.fail(:t_id, '{"reason": "no"}', false, :t_lease);}, 'ok'));
	# a compensation failing retryably is retried (after its delay the worker
	# announces it); after saga.compensation_incident_after = 2 attempts the
	# saga is an incident while it keeps compensating
	wait_for(visible('tj_retry_b_undo'), '1', "retry $c: b's compensation is dispatched");
	session('wally', claim_call('tj_retry_b_undo', 'wally'),
		call('fail the compensation of b retryably',
			q{SELECT saga.fail(:t_id, '{"reason": "later"}', true, :t_lease);}, 'ok'));
	wait_for(visible('tj_retry_b_undo'), '1', "retry $c: b's compensation is visible again");
	session('wally',
		polled('fail the compensation of b retryably in a transactional poll', 'tj_retry_b_undo',
			q{SELECT saga.fail(:p_id, '{"reason": "later again"}');}, 'ok'));
	wait_for(
		"SELECT status FROM saga.incidents WHERE correlation_id = '$c'",
		'compensating', "retry $c: an incident after two attempts, still compensating");
	wait_for(visible('tj_retry_b_undo'), '1', "retry $c: b's compensation is visible once more");
	session(
		'wally',
		claim_call('tj_retry_b_undo', 'wally'),
		call('fail the compensation of b for good',
			q{SELECT saga.fail(:t_id, '{"reason": "stuck"}', false, :t_lease);}, 'ok'),
		call('retry (not a saga_admin)', 'SELECT saga.retry(' . sid($c) . ');', '42501'));
	wait_for(status($c), 'failed', "retry $c: failed");
	session(
		$admin,
		call('retry', 'SELECT saga.retry(' . sid($c) . ');', 'ok', tx => 1),
		call('retry again (not failed)', 'SELECT saga.retry(' . sid($c) . ');', '55000'),
		call('retry an unknown saga', 'SELECT saga.retry(424242424);', '42704'),
		call('tick', 'SELECT saga.tick();', 'ok'));
	wait_for(visible('tj_retry_b_undo'), '1', "retry $c: b's compensation is back");
	session('wally', claim_call('tj_retry_b_undo', 'wally'),
		call('complete the compensation of b', q{SELECT saga.complete(:t_id, '{}', lease => :t_lease);},
			'ok', tx => 1));
	wait_for(status($c), 'compensated', "retry $c: compensated");
}

# ------------------------------------------------------------------------
# a compensation that always fails: an incident
# ------------------------------------------------------------------------

my $broken = corr('broken');
session('wally', start_call('tj_broken', $broken));
wait_for(visible('tj_broken_b'), '1', "broken $broken: b is dispatched");
session(
	'wally',
	claim_call('tj_broken_b', 'wally'),
	call('fail b for good (the compensation fails)',
		q{SELECT saga.fail(:t_id, '{"reason": "no"}', false, :t_lease);}, 'ok', tx => 1));
wait_for(
	"SELECT count(*) FROM saga.incidents WHERE correlation_id = '$broken'",
	'1', "broken $broken: an incident");
# failed (0.1: retry runs it again, and it fails again) or still compensating
# while the worker retries it (retry refuses): either way the session is checked
session('eve', call('retry the broken saga', 'SELECT saga.retry(' . sid($broken) . ');', '*'),
	call('tick', 'SELECT saga.tick();', 'ok'));
session($su, call('retry the broken saga', 'SELECT saga.retry(' . sid($broken) . ');', '*'),
	call('tick', 'SELECT saga.tick();', 'ok'));

# ------------------------------------------------------------------------
# the worker: a step timeout, lapsed leases, a deadline, a compensation that
# keeps failing, retention; the SQL compensations run in the worker
# ------------------------------------------------------------------------

my %w = map { $_ => corr($_) } qw(timeout deadline lease wbroken);
session('wally', map { start_call("tj_$_", $w{$_}) } sort keys %w);
wait_for(visible('tj_lease_b'), '1', 'lease: b is dispatched');
session('wally', claim_call('tj_lease_b', 'wally', '1 second'));
wait_for(
	"SELECT lease_owner IS NULL AND attempt = 2 FROM saga.outbox WHERE topic = 'tj_lease_b'",
	't', 'lease: the worker counts the lapsed lease');
session('wally', claim_call('tj_lease_b', 'wally', '1 second'));
wait_for(status($w{lease}), 'compensated',
	'lease: with no attempts left the lapse fails b and the saga compensates');
wait_for(status($w{timeout}), 'compensated', 'timeout: the worker times b out, the saga compensates');
wait_for(status($w{deadline}), 'compensated', 'deadline: the worker enforces it, the saga compensates');
wait_for(
	"SELECT count(*) FROM saga.incidents WHERE correlation_id = '$w{wbroken}'",
	'1', 'a compensation the worker runs fails: an incident');

my $finished = "SELECT count(*) FROM saga.sagas WHERE status IN ('completed', 'compensated', 'cancelled')";
cmp_ok(sql($node, $finished), '>', 0, 'retention: there are finished sagas');
sql($node, "ALTER SYSTEM SET saga.retention = '1s'");
sql($node, 'SELECT pg_reload_conf()');
wait_for($finished, '0', 'retention: the worker purges the finished sagas');

# ------------------------------------------------------------------------
# choreography: events, subscriptions (with a filter), deliveries through
# both worker protocols, dead letters, redelivery, replay, and a flow
# deadline the worker fires
# ------------------------------------------------------------------------

my $TJ_CHOREO = q{{"start": "TjPlaced",
  "participants": {"tj_pay": {"on": ["TjPlaced"], "emits": ["TjPaid"], "fails": ["TjDeclined"],
                              "compensation": {"on": ["TjLate"], "emits": "TjRefunded"}},
                   "tj_ship": {"on": ["TjPaid"], "emits": ["TjShipped"]}},
  "completed": ["TjShipped"], "deadline": {"after": "1 second", "publish": "TjLate"}, "max_hops": 5}};
session(
	'eve',
	call('define_choreography', "SELECT saga.define_choreography('tj_choreo', '$TJ_CHOREO');", 'ok'),
	call('define_choreography again (identical)',
		"SELECT saga.define_choreography('tj_choreo', '$TJ_CHOREO');", 'ok', out => qr/^1$/),
	call('define_choreography with a cycle',
		q{SELECT saga.define_choreography('tj_cycle', '{"start": "A", "participants": {"p": {"on": ["A", "B"], "emits": ["B", "D"]}}, "completed": ["D"]}');},
		'42P17'),
	call('subscribe with a filter',
		q{SELECT saga.subscribe('TjPlaced', 'tj_audit', '{"filter": "$.n > 0 && $.who like_regex \"^w\"", "retry": {"max_attempts": 1}}');},
		'ok'),
	call('subscribe with a filter that errors', q{SELECT saga.subscribe('TjPlaced', 'tj_audit2', '{"filter": "$.n"}');},
		'ok'),
	call('publish (not a saga_worker)', q{SELECT saga.publish('TjPlaced', '{}');}, '42501'));
session(
	'wally',
	call('publish the start event',
		q{SELECT saga.publish('TjPlaced', '{"n": 1, "who": "wally"}', correlation_id => 'tj-flow-1') AS tj_e1 \gset},
		'ok', tx => 1),
	call('publish with an idempotency key', q{SELECT saga.publish('TjNoted', '{}', idempotency_key => 'tj-k');},
		'ok'),
	call('publish it again', q{SELECT saga.publish('TjNoted', '{}', idempotency_key => 'tj-k');}, 'ok'),
	call('publish with a bad cause', q{SELECT saga.publish('TjPaid', '{}', causation_id => -1);}, '42704'),
	claim_call('tj_pay', 'wally'),
	call('complete the delivery', q{SELECT saga.complete(:t_id, '{}', lease => :t_lease);}, 'ok', tx => 1),
	call('publish the answer', q{SELECT saga.publish('TjPaid', '{}', causation_id => :tj_e1);}, 'ok'),
	claim_call('tj_audit', 'wally'),
	call('fail the audit delivery for good',
		q{SELECT saga.fail(:t_id, '{"no": 1}', retryable => false, lease => :t_lease);}, 'ok'),
	polled('complete a delivery in a transactional poll', 'tj_ship', q{SELECT saga.complete(:p_id);}, 'ok'),
	call('redeliver (not a saga_admin)', q{SELECT saga.redeliver(-1);}, '42501'),
	call('subscribe (not a saga_admin)', q{SELECT saga.subscribe('TjPlaced', 'tj_x');}, '42501'));
session(
	'eve',
	call('redeliver the dead letter',
		q{SELECT saga.redeliver((SELECT pg_catalog.min(id) FROM saga.dead_letters WHERE topic OPERATOR(pg_catalog.=) 'tj_audit'));},
		'ok'),
	call('replay', q{SELECT saga.replay('TjPlaced', 'tj_audit', pg_catalog.now() OPERATOR(pg_catalog.-) '1 hour'::pg_catalog.interval);},
		'ok'),
	call('unsubscribe', q{SELECT saga.unsubscribe('TjPlaced', 'tj_audit2');}, 'ok'));
$node->safe_psql('postgres', q{SELECT saga.publish('TjPlaced', '{"n": 2}', correlation_id => 'tj-flow-2')});
wait_for("SELECT count(*) FROM saga.events WHERE type = 'TjLate' AND correlation_id = 'tj-flow-2'",
	'1', 'the worker fires the flow deadline: the deadline event is published');
session($su, call('tick', 'SELECT saga.tick();', 'ok'));

# the bridges: a saga started by an event (start_saga), an await step ended
# by a publish, events the saga publishes on its transitions; all of it runs
# inside a publish under the caller's poisoned search_path
session(
	'eve',
	call('define with publish (a saga_admin may not publish)',
		q{SELECT saga.define('tj_bridge', '{"publish": {"completed": "TjBridged"}, "steps": [{"name": "a", "sql": "eve.step_poison"}]}');},
		'42501'));
$node->safe_psql('postgres', 'GRANT saga_worker TO eve');
session(
	'eve',
	call('define with await and publish',
		q{SELECT saga.define('tj_bridge', '{"publish": {"completed": "TjBridged"}, "steps": [{"name": "a", "sql": "eve.step_poison", "publish": "TjStepped"}, {"name": "w", "await": "TjGo", "timeout": "1 hour"}]}');},
		'ok'),
	call('subscribe with start_saga',
		q{SELECT saga.subscribe('TjStart', 'tj_starter', '{"start_saga": "tj_bridge", "filter": "$.n > 0"}');},
		'ok'));
session(
	'wally',
	call('publish an event that starts a saga',
		q{SELECT saga.publish('TjStart', '{"n": 1}', correlation_id => 'tj-bridge');}, 'ok'),
	call('publish the awaited event', q{SELECT saga.publish('TjGo', '{"go": 1}', correlation_id => 'tj-bridge');},
		'ok'));
$node->safe_psql('postgres', 'REVOKE saga_worker FROM eve');
is(sql($node, "SELECT status FROM saga.instances WHERE correlation_id = 'tj-bridge'"),
	'completed', 'bridges: the saga an event started ends by an awaited event');
is(sql($node, "SELECT string_agg(type, ',' ORDER BY id) FROM saga.events WHERE correlation_id = 'tj-bridge'"),
	'TjStart,TjStepped,TjGo,TjBridged', 'bridges: the saga published its step and its outcome');

# ------------------------------------------------------------------------
# state that is not a setting: what a guest or the engine leaves in the
# caller's session or transaction beyond GUCs.  Known to survive the sandbox
# (0.1 and 0.2), hence TODO: a guest's session-level advisory lock (it stays
# with the caller's backend, or the worker's, for good), a guest's SET
# CONSTRAINTS ALL DEFERRED and its open cursor (for the rest of the caller's
# transaction), and lastval(), which after an entry point names the
# engine's sequence instead of the caller's.
# ------------------------------------------------------------------------

$node->safe_psql(
	'postgres', q{
CREATE FUNCTION eve.step_grabby(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $g$
DECLARE
    c refcursor := 'tj_grabbed';
BEGIN
    PERFORM pg_catalog.pg_advisory_lock(4242);
    SET CONSTRAINTS ALL DEFERRED;
    OPEN c FOR SELECT 1;
    RETURN '{}'::jsonb;
END
$g$;
},
	extra_params => [ '-U', 'eve' ]);
sql(
	$node, q{
CREATE SEQUENCE public.tj_seq;
CREATE TABLE public.tj_parent (id integer PRIMARY KEY);
CREATE TABLE public.tj_child (id integer REFERENCES public.tj_parent DEFERRABLE INITIALLY IMMEDIATE);
GRANT USAGE ON SEQUENCE public.tj_seq TO PUBLIC;
GRANT INSERT ON public.tj_child TO PUBLIC;
});
session('eve', define_call('tj_grabby', q{{"steps": [{"name": "a", "sql": "eve.step_grabby"}]}}, 'ok'));
{
	local $ENV{PGOPTIONS};
	delete $ENV{PGOPTIONS};
	my $locks = '(SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks '
	  . "WHERE locktype OPERATOR(pg_catalog.=) 'advisory' "
	  . 'AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())';
	my $cursors = '(SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors)';
	my ($ret, $out, $err) = $node->psql(
		'postgres', qq{
SET search_path = $POISON;
SET application_name = 'tj wally: start tj_grabby';
SELECT '\@\@seq', pg_catalog.nextval('public.tj_seq');
BEGIN;
SELECT saga.start('tj_grabby');
SELECT '\@\@tx', $cursors, $locks;
INSERT INTO public.tj_child VALUES (1);
\\echo \@\@fk :SQLSTATE
ROLLBACK;
SELECT '\@\@after', $cursors, $locks;
SELECT '\@\@lastval', pg_catalog.lastval();
},
		extra_params => [ '-U', 'wally' ],
		on_error_stop => 0);
	$ncalls++;
	my %got = $out =~ /^\@\@(\w+)\|(.*)$/mg;
	my ($fk) = $out =~ /^\@\@fk (\S+)$/m;
	TODO:
	{
		local $TODO = 'state that outlives the sandbox (not a setting)';
		is($got{tx}, '0|0',
			"wally: start tj_grabby: no guest's cursor or advisory lock in the caller's transaction");
		is($fk, '23503',
			"wally: start tj_grabby: the caller's constraints are still checked at once");
		is($got{after}, '0|0', "wally: start tj_grabby: no guest's advisory lock left in the caller's session");
		is($got{lastval}, $got{seq}, "wally: start tj_grabby: lastval() is still the caller's")
		  or diag $err;
	}
}

# ------------------------------------------------------------------------
# user code ran as its definer and found no setting of an earlier guest
# ------------------------------------------------------------------------

my $ran = sql($node,
	"SELECT count(*), count(DISTINCT fn) FROM public.tj_ran");
like($ran, qr/^[1-9]\d*\|[4-9]$/, "the guests ran (runs|distinct functions: $ran)");
is( sql($node,
		"SELECT coalesce(string_agg(DISTINCT fn || ' as ' || who, ', '), '') FROM public.tj_ran "
		  . "WHERE who <> CASE WHEN fn LIKE 'eve.%' THEN 'eve' ELSE current_user END"),
	'',
	"SQL steps run as the role that defined the saga (eve's as eve, the superuser's as $su)");
is( sql($node,
		"SELECT coalesce(string_agg(DISTINCT sp || ' / ' || wm, '; '), '') FROM public.tj_ran "
		  . "WHERE wm <> '4MB' OR sp ~ '(eve|public|\\\$user|\"?$su\"?)'"),
	'',
	'no guest found search_path or work_mem as an earlier guest or a caller had left them');

# ------------------------------------------------------------------------
# the canaries
# ------------------------------------------------------------------------

diag "planted objects (operators and functions in $su, public, eve): $nplanted";
diag "entry-point calls made: $ncalls";

is(sql($node, "SELECT last_value || ' ' || is_called FROM public.canary_seq"),
	'1 false', 'canary_seq was never advanced: no planted object ran');

# the server log as messages: a line with a level, and the CONTEXT,
# STATEMENT, ... lines (and tab-indented continuations) that belong to it
my @entries;
for my $line (split /\n/, slurp_file($node->logfile, $log_from))
{
	if ($line =~ /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S* \S+ \[\d+\] .*?(\w+):  /
		&& $1 !~ /^(CONTEXT|STATEMENT|DETAIL|HINT|QUERY|LOCATION)$/)
	{
		push @entries, $line;
	}
	elsif (@entries)
	{
		$entries[-1] .= "\n$line";
	}
}
my @hits = grep { /WARNING:  saga-canary/ } @entries;
is(scalar(@hits), 0, 'the server log holds no saga-canary');
if (@hits)
{
	# what ran, as whom, from which context
	my (%by_ctx, %by_stmt);
	for my $h (@hits)
	{
		next unless $h =~ /saga-canary: (\S+) ran (.+?) \[(.*?)\]/;
		my ($who, $obj, $ctx) = ($1, $2, $3);
		$by_ctx{$ctx}{"$obj as $who"}++;
		# the engine's statement that called it
		my $stmt = $h =~ /SQL statement "([^\n]*)"/ ? $1 : '(no statement)';
		$stmt = substr($stmt, 0, 250) . ' ...' if length($stmt) > 250;
		$by_stmt{$stmt}{ctx}{$ctx} = 1;
		$by_stmt{$stmt}{obj}{$obj} = 1;
	}
	for my $ctx (sort keys %by_ctx)
	{
		my $objs = $by_ctx{$ctx};
		diag "canaries in [$ctx]: "
		  . join(', ', map { "$_ (x$objs->{$_})" } sort keys %$objs);
	}
	for my $stmt (sort keys %by_stmt)
	{
		diag "statement: $stmt\n  ran: "
		  . join(', ', sort keys %{ $by_stmt{$stmt}{obj} }) . "\n  in: "
		  . join(', ', sort keys %{ $by_stmt{$stmt}{ctx} });
	}
}

$node->stop;
done_testing();
