/*
 * bench/listen_latency.c: how long after a commit that makes saga work visible does a LISTENing
 * worker hear about it?
 *
 * Two connections in one process: a listener (LISTEN saga_<topic>) and a producer that commits
 * SELECT saga.start(<definition>) in autocommit mode, one saga every <interval_ms>.  One event
 * loop waits on both sockets, so both times come from the same clock (CLOCK_REALTIME):
 *   commit -> receipt = when the notification arrived - when the producer's commit was
 *                       acknowledged (can be slightly negative: the server signals listeners
 *                       as part of the commit, before the producer reads its reply)
 *   send -> receipt   = when the notification arrived - when the producer sent the statement
 * Output, one line: samples missed avg_ms p50_ms p99_ms max_ms send_p50_ms send_p99_ms
 *
 * Usage: listen_latency CONNINFO TOPIC DEFINITION SAMPLES INTERVAL_MS
 * Built by bench/run.sh: gcc -O2 listen_latency.c -I$(pg_config --includedir) -lpq
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void
die(PGconn *c, const char *what)
{
	fprintf(stderr, "listen_latency: %s: %s\n", what, c ? PQerrorMessage(c) : "");
	exit(1);
}

static void
exec_ok(PGconn *c, const char *sql)
{
	PGresult   *r = PQexec(c, sql);

	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
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

static double
pct(const double *sorted, int n, double p)
{
	int			i;

	if (n == 0)
		return 0;
	i = (int) (p * n + 0.5) - 1;
	if (i < 0)
		i = 0;
	if (i >= n)
		i = n - 1;
	return sorted[i];
}

/* drop notifications that are already there (none expected) */
static void
drain(PGconn *l)
{
	PGnotify   *n;

	if (!PQconsumeInput(l))
		die(l, "reading the listener's socket");
	while ((n = PQnotifies(l)) != NULL)
		PQfreemem(n);
}

int
main(int argc, char **argv)
{
	PGconn	   *l,
			   *p;
	char		sql[512];
	int			samples,
				interval_ms,
				got = 0,
				missed = 0;
	double	   *lat,
			   *lat_send;
	double		sum = 0;

	if (argc != 6)
	{
		fprintf(stderr, "usage: %s CONNINFO TOPIC DEFINITION SAMPLES INTERVAL_MS\n", argv[0]);
		return 2;
	}
	samples = atoi(argv[4]);
	interval_ms = atoi(argv[5]);
	lat = calloc(samples, sizeof(double));
	lat_send = calloc(samples, sizeof(double));

	l = PQconnectdb(argv[1]);
	if (PQstatus(l) != CONNECTION_OK)
		die(l, "connecting the listener");
	p = PQconnectdb(argv[1]);
	if (PQstatus(p) != CONNECTION_OK)
		die(p, "connecting the producer");
	snprintf(sql, sizeof(sql), "LISTEN saga_%s", argv[2]);
	exec_ok(l, sql);
	{
		PGresult   *r = PQprepare(p, "start", "SELECT saga.start($1)", 1, NULL);

		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			die(p, "preparing saga.start");
		PQclear(r);
	}

	for (int i = 0; i < samples; i++)
	{
		const char *params[1] = {argv[3]};
		double		t_send,
					t_ack = 0,
					t_recv = 0,
					deadline;
		int			acked = 0,
					heard = 0;

		drain(l);
		t_send = now_ms();
		if (!PQsendQueryPrepared(p, "start", 1, params, NULL, NULL, 0))
			die(p, "sending saga.start");
		deadline = t_send + 5000;
		while (!(acked && heard) && now_ms() < deadline)
		{
			struct pollfd fds[2];
			int			nfds = 0;

			if (!heard)
			{
				fds[nfds].fd = PQsocket(l);
				fds[nfds].events = POLLIN;
				nfds++;
			}
			if (!acked)
			{
				fds[nfds].fd = PQsocket(p);
				fds[nfds].events = POLLIN;
				nfds++;
			}
			if (poll(fds, nfds, 100) < 0 && errno != EINTR)
			{
				perror("poll");
				return 1;
			}
			if (!heard)
			{
				PGnotify   *n;

				if (!PQconsumeInput(l))
					die(l, "reading the listener's socket");
				if ((n = PQnotifies(l)) != NULL)
				{
					t_recv = now_ms();
					heard = 1;
					PQfreemem(n);
				}
			}
			if (!acked)
			{
				if (!PQconsumeInput(p))
					die(p, "reading the producer's socket");
				while (!PQisBusy(p))
				{
					PGresult   *r = PQgetResult(p);

					if (r == NULL)
					{
						t_ack = now_ms();
						acked = 1;
						break;
					}
					if (PQresultStatus(r) != PGRES_TUPLES_OK)
						die(p, "saga.start");
					PQclear(r);
				}
			}
		}
		if (!acked)
			die(p, "no reply to saga.start within 5 s");
		if (heard)
		{
			lat[got] = t_recv - t_ack;
			lat_send[got] = t_recv - t_send;
			sum += lat[got];
			got++;
		}
		else
			missed++;
		/* pace the samples; the notification of one must not be taken for the next */
		{
			double		wait = interval_ms - (now_ms() - t_send);
			struct timespec ts;

			if (wait > 0)
			{
				ts.tv_sec = (time_t) (wait / 1000);
				ts.tv_nsec = (long) ((wait - ts.tv_sec * 1000.0) * 1e6);
				nanosleep(&ts, NULL);
			}
		}
	}
	qsort(lat, got, sizeof(double), cmp_double);
	qsort(lat_send, got, sizeof(double), cmp_double);
	printf("%d %d %.3f %.3f %.3f %.3f %.3f %.3f\n", got, missed, got ? sum / got : 0,
		   pct(lat, got, 0.50), pct(lat, got, 0.99), got ? lat[got - 1] : 0,
		   pct(lat_send, got, 0.50), pct(lat_send, got, 0.99));
	PQfinish(l);
	PQfinish(p);
	return 0;
}
