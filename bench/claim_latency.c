/*
 * bench/claim_latency.c: latency of the leased-claim protocol seen by one worker.
 *
 * For SECONDS seconds, one connection repeats: saga.claim(topic, 'w', 1, '30 s') (its own
 * transaction), then saga.complete(id, '{"ok": true}', lease => lease) (another), with
 * prepared statements, like a worker that does its work outside the database.  When the claim
 * finds nothing (the topic is empty: its only work is the chain this loop drives), it starts a
 * saga of DEFINITION and claims again; those claims and starts are not timed.
 * Output, one line (milliseconds):
 *   n claim_avg claim_p50 claim_p99 complete_avg complete_p50 complete_p99 both_avg both_p50
 *   both_p99 empty_claims
 *
 * Usage: claim_latency CONNINFO TOPIC DEFINITION SECONDS
 * Built by bench/run.sh: gcc -O2 claim_latency.c -I$(pg_config --includedir) -lpq
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void
die(PGconn *c, const char *what)
{
	fprintf(stderr, "claim_latency: %s: %s\n", what, PQerrorMessage(c));
	exit(1);
}

static void
prepare(PGconn *c, const char *name, const char *sql)
{
	PGresult   *r = PQprepare(c, name, sql, 0, NULL);

	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die(c, sql);
	PQclear(r);
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

/* prints avg p50 p99 of v[0..n) (sorts v) */
static void
stats(double *v, int n)
{
	double		sum = 0;
	int			i50,
				i99;

	if (n == 0)
	{
		printf(" 0 0 0");
		return;
	}
	for (int i = 0; i < n; i++)
		sum += v[i];
	qsort(v, n, sizeof(double), cmp_double);
	i50 = (int) (0.50 * n + 0.5) - 1;
	i99 = (int) (0.99 * n + 0.5) - 1;
	if (i50 < 0)
		i50 = 0;
	if (i99 < 0)
		i99 = 0;
	printf(" %.3f %.3f %.3f", sum / n, v[i50], v[i99]);
}

int
main(int argc, char **argv)
{
	PGconn	   *c;
	double		end;
	int			cap = 1 << 20,
				n = 0,
				empty = 0;
	double	   *claim,
			   *complete,
			   *both;

	if (argc != 5)
	{
		fprintf(stderr, "usage: %s CONNINFO TOPIC DEFINITION SECONDS\n", argv[0]);
		return 2;
	}
	claim = malloc(cap * sizeof(double));
	complete = malloc(cap * sizeof(double));
	both = malloc(cap * sizeof(double));
	c = PQconnectdb(argv[1]);
	if (PQstatus(c) != CONNECTION_OK)
		die(c, "connecting");
	prepare(c, "claim", "SELECT id, lease FROM saga.claim($1, 'w', 1, '30 s')");
	prepare(c, "complete", "SELECT saga.complete($1, '{\"ok\": true}', lease => $2)");
	prepare(c, "start", "SELECT saga.start($1)");

	end = now_ms() + atof(argv[4]) * 1000;
	while (now_ms() < end && n < cap)
	{
		const char *topic[1] = {argv[2]};
		const char *report[2];
		double		t0,
					t1,
					t2;
		PGresult   *r,
				   *r2;

		t0 = now_ms();
		r = PQexecPrepared(c, "claim", 1, topic, NULL, NULL, 0);
		t1 = now_ms();
		if (PQresultStatus(r) != PGRES_TUPLES_OK)
			die(c, "saga.claim");
		if (PQntuples(r) == 0)
		{
			const char *def[1] = {argv[3]};

			PQclear(r);
			empty++;
			r = PQexecPrepared(c, "start", 1, def, NULL, NULL, 0);
			if (PQresultStatus(r) != PGRES_TUPLES_OK)
				die(c, "saga.start");
			PQclear(r);
			continue;
		}
		report[0] = PQgetvalue(r, 0, 0);
		report[1] = PQgetvalue(r, 0, 1);
		r2 = PQexecPrepared(c, "complete", 2, report, NULL, NULL, 0);
		t2 = now_ms();
		if (PQresultStatus(r2) != PGRES_TUPLES_OK)
			die(c, "saga.complete");
		PQclear(r2);
		PQclear(r);
		claim[n] = t1 - t0;
		complete[n] = t2 - t1;
		both[n] = t2 - t0;
		n++;
	}
	printf("%d", n);
	stats(claim, n);
	stats(complete, n);
	stats(both, n);
	printf(" %d\n", empty);
	PQfinish(c);
	return 0;
}
