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

# pg_regress tests (test/sql/<name>.sql → test/expected/<name>.out), in this order.
REGRESS      = install administrations sync_errors paytrace_parse

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

EXTRA_CLEAN  = tmp_check tmp_regress results regression.diffs regression.out

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

# The test runner asks the Makefile for these instead of repeating them.
print-regress:
	@echo $(REGRESS)
print-version:
	@echo $(EXTVERSION)

.PHONY: print-regress print-version
