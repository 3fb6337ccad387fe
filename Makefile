# lorapipe — build, test, benchmark, install.
#
#   make            release build into build/ (bin/lora-*, liblora.a)
#   make check      AddressSanitizer + UBSan build into build-san/, then every test layer
#   make bench      benchmarks (release build); prints ratios measured in one run
#   make fuzz       libFuzzer harnesses (clang) into build-fuzz/
#   make install    PREFIX=/usr/local DESTDIR=
#   make clean

VERSION  := 0.1.0
PREFIX   ?= /usr/local
DESTDIR  ?=
BINDIR   := $(PREFIX)/bin
MANDIR   := $(PREFIX)/share/man
BASHCOMPDIR := $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  := $(PREFIX)/share/zsh/vendor-completions

PKGS     := msgpack yaml-0.1 openblas lapacke libpcre2-8 libutf8proc nlopt
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CC       ?= cc
WARN     := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes \
            -Wmissing-prototypes -Wformat=2 -Wvla -Wno-unused-parameter
CSTD     := -std=c11 -D_GNU_SOURCE
OPT      ?= -O2 -march=x86-64-v3 -mtune=native -g
CFLAGS_ALL = $(CSTD) $(WARN) $(OPT) $(PKG_CFLAGS) -Ilib -DLORA_VERSION='"$(VERSION)"' $(EXTRA_CFLAGS)
LDLIBS_ALL = $(PKG_LIBS) -lm -lpthread

# Out-of-tree builds: B is the build directory (build/ or build-san/).
B        ?= build

LIB_SRC  := $(sort $(wildcard lib/*.c))
BIN_SRC  := $(sort $(wildcard bin/lora-*.c))
CLI_SRC  := bin/cli.c
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
BENCH_SRC := $(sort $(wildcard bench/bench_*.c))
FUZZ_SRC := $(sort $(wildcard fuzz/fuzz_*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o)
TOOLS    := $(BIN_SRC:bin/%.c=$(B)/bin/%)
UNITS    := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
BENCHES  := $(BENCH_SRC:bench/%.c=$(B)/bench/%)

.PHONY: all check check-build bench fuzz install uninstall clean lib tools units

all: tools

tools: $(TOOLS)
units: $(UNITS)

$(B)/liblora.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

$(B)/%.o: %.c $(wildcard lib/*.h) $(wildcard bin/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(B)/bin/%: bin/%.c $(B)/bin/cli.o $(B)/liblora.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(B)/bin/cli.o $(B)/liblora.a $(LDLIBS_ALL)

$(B)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(B)/liblora.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -Itests/unit -o $@ $< $(B)/liblora.a $(LDLIBS_ALL)

$(B)/bench/%: bench/%.c $(wildcard bench/*.h) $(B)/liblora.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(B)/liblora.a $(LDLIBS_ALL)

# ---- tests: sanitizer build, then every layer through tests/run.sh ----
SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

check:
	$(MAKE) B=build-san OPT="$(SAN_FLAGS)" tools units
	LORA_BUILD=build-san ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run.sh

# A plain (unsanitized) run of the same suite, quicker while developing.
check-fast: tools units
	LORA_BUILD=build tests/run.sh

bench: tools $(BENCHES)
	LORA_BUILD=build bench/run.sh

fuzz:
	$(MAKE) B=build-fuzz CC=clang OPT="-O1 -g -fsanitize=fuzzer-no-link,address,undefined" build-fuzz/liblora.a
	@mkdir -p build-fuzz/fuzz
	for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang $(CSTD) $(PKG_CFLAGS) -Ilib -O1 -g -fsanitize=fuzzer,address,undefined \
	    -o build-fuzz/fuzz/$$n $$f build-fuzz/liblora.a $(LDLIBS_ALL) || exit 1; done

install: tools
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
	  $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR)
	install -m 755 $(TOOLS) $(DESTDIR)$(BINDIR)/
	install -m 644 $(wildcard man/*.1) $(DESTDIR)$(MANDIR)/man1/
	install -m 644 $(wildcard man/*.5) $(DESTDIR)$(MANDIR)/man5/
	for t in $(notdir $(TOOLS)); do \
	  install -m 644 completions/$$t.bash $(DESTDIR)$(BASHCOMPDIR)/$$t; \
	  install -m 644 completions/_$$t $(DESTDIR)$(ZSHCOMPDIR)/_$$t; done

uninstall:
	for t in $(notdir $(TOOLS)); do rm -f $(DESTDIR)$(BINDIR)/$$t $(DESTDIR)$(MANDIR)/man1/$$t.1 \
	  $(DESTDIR)$(BASHCOMPDIR)/$$t $(DESTDIR)$(ZSHCOMPDIR)/_$$t; done
	rm -f $(DESTDIR)$(MANDIR)/man5/lora-stream.5

clean:
	rm -rf build build-san build-fuzz build-h* tests/tmp

-include $(wildcard $(B)/*.d)
