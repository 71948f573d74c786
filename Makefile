# saga: PGXS build
EXTENSION = saga
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" saga.control)

MODULE_big = saga
OBJS = \
	src/saga.o \
	src/definition.o \
	src/engine.o \
	src/outbox.o \
	src/event.o \
	src/choreography.o \
	src/api.o \
	src/worker.o \
	src/wakeup.o \
	src/cdc.o \
	src/rows.o

DATA = $(wildcard saga--*.sql)
PGFILEDESC = "saga - sagas inside PostgreSQL"

# -Wno-unused-parameter: the server headers themselves trip it
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter \
	-Wmissing-prototypes -Werror=implicit-function-declaration
ifdef WERROR
PG_CFLAGS += -Werror
endif

# pg_regress: sql/ + expected/; each run brings its own server with the
# library preloaded
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --temp-config=$(srcdir)/saga.conf --temp-instance=tmp_check_regress

# isolation specs live under test/isolation
ISOLATION = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --temp-config=$(srcdir)/saga.conf --temp-instance=tmp_check_iso \
	--inputdir=$(srcdir)/test/isolation --outputdir=output_iso --load-extension=saga

# TAP tests (PostgreSQL::Test::Cluster) under test/t: each starts its own
# cluster, so run them as a user the server accepts (scripts/test.sh does)
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

src/%.o: src/saga.h src/compat.h
