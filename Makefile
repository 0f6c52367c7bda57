# freshpay — PGXS build.
#
# The version is defined once, in freshpay.control (default_version); the
# Makefile reads it from there and hands it to the C code as FRESHPAY_VERSION.

EXTENSION    = freshpay
EXTVERSION   = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big   = freshpay
OBJS         = $(patsubst %.c,%.o,$(wildcard src/*.c))

# Install script of the first version plus the chain of upgrade scripts;
# CREATE EXTENSION at the default version runs the chain.
DATA         = $(wildcard sql/$(EXTENSION)--*.sql)

# make installcheck, on a machine where freshpay is installed, runs the whole
# suite (README "Tests"): first the pg_regress tests, test/sql/<name>.sql
# compared with test/expected/<name>.out, in this order, in a temporary
# instance with freshpay preloaded (test/regress.conf); each test's psql runs
# under test/standin/with_standins.py, which gives it a FreshPortal and a
# PayTrace stand-in of its own.
REGRESS      = install administrations sync_errors paytrace_parse statement_rules finance_views
REGRESS_OPTS = --inputdir=test --temp-instance=./tmp_regress \
               --temp-config=test/regress.conf \
               --launcher=test/standin/with_standins.py
# Then the TAP tests, test/t/*.pl (helpers in test/perl), each file with the
# nodes and stand-ins it starts itself.
TAP_TESTS    = 1
PROVE_TESTS  = test/t/*.pl

PG_CONFIG   ?= pg_config

CURL_CFLAGS  := $(shell pkg-config --cflags libcurl 2>/dev/null || curl-config --cflags)
CURL_LIBS    := $(shell pkg-config --libs libcurl 2>/dev/null || curl-config --libs)
JSONC_CFLAGS := $(shell pkg-config --cflags json-c)
JSONC_LIBS   := $(shell pkg-config --libs json-c)

PG_CPPFLAGS  = -Isrc $(CURL_CFLAGS) $(JSONC_CFLAGS) -DFRESHPAY_VERSION='"$(EXTVERSION)"'
# PostgreSQL's headers and fixed callback signatures have unused parameters
# (pg_cron disables this one warning too); everything else stays strict.
PG_CFLAGS    = -std=gnu11 -Wall -Wextra -Wno-unused-parameter $(FRESHPAY_CFLAGS)
SHLIB_LINK   = $(CURL_LIBS) $(JSONC_LIBS)

EXTRA_CLEAN  = tmp_check tmp_regress results log regression.diffs regression.out

# make FRESHPAY_SANITIZE=1: instrument freshpay with AddressSanitizer and
# UndefinedBehaviorSanitizer (test/run's sanitized pass; README "Sanitizers").
# Such a freshpay.so needs the sanitizer runtime preloaded into the server, so
# install it only into a private copy of PostgreSQL, never the system's.  No
# LLVM bitcode: the JIT must not inline instrumented code.
ifeq ($(FRESHPAY_SANITIZE),1)
PG_CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer
override with_llvm = no
endif

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# prove's options of our own go in PG_PROVE_FLAGS, so that PROVE_FLAGS stays
# the caller's (make installcheck PROVE_FLAGS='-j2 -v').  With -j, files may
# run side by side, except test/t/9*.pl: they read what all the others left
# (every server log of the run), so they run after them.
PG_PROVE_FLAGS += -I ./test/perl --rules='par=test/t/{0,1,2,3,4,5,6,7,8}*.pl'

# The secrets the servers resolve through env: references: pg_regress's
# instance inherits them from here (the TAP tests set them themselves).
installcheck: export FRESHPAY_TEST_SECRET = fp-test-key
installcheck: export FRESHPAY_TEST_PT_PASSWORD = pt-pass

# The test runner asks the Makefile for these instead of repeating them.
print-regress:
	@echo $(REGRESS)
print-version:
	@echo $(EXTVERSION)

.PHONY: print-regress print-version
