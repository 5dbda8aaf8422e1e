# d3po - one Makefile for the whole program.
#
#   make            build build/d3po (CPU backend always)
#   make run        the main job on the embedded default model
#   make test       install what is missing, build, run every test
#   make check-asan the tests under AddressSanitizer + UBSan
#   make fuzz       libFuzzer on the safetensors parser, bounded time
#   make bench      benchmarks against the PyTorch twin (bench/)
#
# Debian packages are installed with apt-get when missing (deps target).

CC ?= cc
ifeq ($(origin CC),default)
CC = gcc
endif
OPT ?= -O3 -march=native
CFLAGS ?= $(OPT) -g
WARN = -Wall -Wextra -Wno-unused-parameter
# OpenBLAS: the OpenMP build, so BLAS and our own parallel loops share one
# thread pool. With the pthreads build both pools spin on 2 cores and a
# small forward pass was 15x slower (28 ms vs 1.8 ms, measured).
BLAS_DIR = /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_CFLAGS = -I/usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIBS = -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas
PKGS = jansson libpng libjpeg freetype2 harfbuzz libconfig libsixel ncursesw
PKG_CFLAGS = $(BLAS_CFLAGS) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(BLAS_LIBS) $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ALL_CFLAGS = -std=gnu11 $(WARN) $(CFLAGS) -fopenmp -Iengine -Isrc -Iui $(PKG_CFLAGS) -MMD -MP
LDLIBS = $(PKG_LIBS) -fopenmp -lpthread -lm

B ?= build
VERSION = 0.1.0
PREFIX ?= /usr/local
DATADIR = $(PREFIX)/share/d3po

LIB_SRC = $(wildcard engine/*.c) $(wildcard engine/sd/*.c) $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard ui/*.c)
LIB_OBJ = $(LIB_SRC:%.c=$(B)/%.o)
TEST_SRC = $(wildcard tests/test_*.c)
TEST_BIN = $(TEST_SRC:tests/%.c=$(B)/tests/%)
TOOL_SRC = $(wildcard tests/tool_*.c) $(wildcard bench/*.c)
TOOL_BIN = $(TOOL_SRC:%.c=$(B)/%)

# Debian packages: build, then what the tests need.
DEB_BUILD = gcc make pkg-config fonts-dejavu-core libopenblas-openmp-dev libjansson-dev libpng-dev libjpeg62-turbo-dev libfreetype-dev libharfbuzz-dev libconfig-dev libsixel-dev libncurses-dev
DEB_TEST = fonts-noto-color-emoji unicode-data bzip2 tmux bsdutils xterm mlterm xvfb xdotool imagemagick x11-utils python3 python3-torch python3-venv python3-numpy clang libclang-rt-14-dev groff-base file

# The CUDA backend (engine/cuda/): a shared object loaded with dlopen at run
# time (engine/device.c), so build/d3po itself needs no CUDA library and
# runs on machines without a driver. Built whenever nvcc is found.
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(firstword $(wildcard $(CUDA_HOME)/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
# SASS for Hopper (H100/H200) and Ampere, PTX for anything newer/older
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
	-gencode arch=compute_75,code=compute_75
CUDA_LIB = $(if $(NVCC),$(B)/libd3po_cuda.so)

.PHONY: all run test check check-asan fuzz bench deps deps-test clean install
all: $(B)/d3po $(CUDA_LIB)

CUDA_SRC = engine/cuda/backend_cuda.cu engine/cuda/tx.cu engine/cuda/cls.cu
$(B)/libd3po_cuda.so: $(CUDA_SRC) $(wildcard engine/cuda/*.cuh) engine/backend.h engine/ops.h engine/err.h
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++20 -O3 -Xcompiler -fPIC,-Wall,-Wextra,-Wno-unused-parameter -shared $(CUDA_ARCH) \
		-Iengine $(CUDA_SRC) -o $@ -L$(CUDA_HOME)/lib64 -Xlinker -rpath,$(CUDA_HOME)/lib64 -lcublas -lcudnn

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DD3PO_VERSION='"$(VERSION)"' -DD3PO_DATADIR='"$(DATADIR)"' -DD3PO_LIBDIR='"$(PREFIX)/lib/d3po"' -c $< -o $@

$(B)/libd3po.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/d3po: $(B)/src/main.o $(B)/libd3po.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/%: $(B)/tests/%.o $(B)/libd3po.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/tool_%: $(B)/tests/tool_%.o $(B)/libd3po.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bench/%: $(B)/bench/%.o $(B)/libd3po.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

deps:
	@sh tests/deps.sh $(DEB_BUILD)

deps-test:
	@sh tests/deps.sh $(DEB_BUILD) $(DEB_TEST)

# The main job: the labeling screen on the default model
# (models/default.safetensors, trained by `d3po pretrain`, see
# models/README.md) in the default session. Without a terminal (a script, a
# pipe) it writes a labeled grid of samples instead. A checkout that lacks
# the default model gets a randomly initialised stand-in.
MODEL ?= $(firstword $(wildcard models/default.safetensors) $(B)/random.safetensors)
run: deps
	@$(MAKE) --no-print-directory all
	@if [ ! -f "$(MODEL)" ]; then $(B)/d3po init --out $(MODEL) --seed 1; fi
	@if [ -t 0 ] && [ -t 1 ]; then $(B)/d3po label --model $(MODEL); else \
		$(B)/d3po sample --grid --model $(MODEL) --seed 1 --out $(B)/samples.png && \
		echo "no terminal: wrote samples of 16 classes to $(B)/samples.png"; fi

test: deps-test
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(TOOL_BIN)
	@B=$(B) sh tests/run.sh

check: test

# Sanitizer build in its own directory; the python-backed tests are skipped
# there (they test numbers, not memory).
check-asan: deps-test
	@$(MAKE) --no-print-directory B=build-asan OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
		build-asan/d3po $(TEST_SRC:tests/%.c=build-asan/tests/%) $(TOOL_SRC:%.c=build-asan/%)
	@B=build-asan D3PO_ASAN=1 ASAN_OPTIONS=detect_leaks=1 sh tests/run.sh

FUZZ_TIME ?= 60
fuzz: deps-test
	@mkdir -p $(B)/fuzz
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Iengine $(shell pkg-config --cflags jansson) \
		tests/fuzz_safetensors.c engine/safetensors.c engine/fsutil.c -o $(B)/fuzz/fuzz_safetensors $(shell pkg-config --libs jansson)
	@mkdir -p $(B)/fuzz/corpus
	$(B)/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_TIME) -max_len=4096 $(B)/fuzz/corpus tests/data/fuzz_seed

bench: deps-test
	@$(MAKE) --no-print-directory all $(TOOL_BIN)
	@B=$(B) sh bench/run.sh

# make install PREFIX=DIR: the binary, the man pages, the default
# configuration and the default model (the binary looks for the model in
# $(DATADIR) when models/ is not beside it).
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(DATADIR)
	install -m 755 $(B)/d3po $(DESTDIR)$(PREFIX)/bin/d3po
	install -m 644 man/d3po.1 $(DESTDIR)$(PREFIX)/share/man/man1/d3po.1
	install -m 644 man/d3po.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/d3po.conf.5
	install -m 644 config/d3po.conf $(DESTDIR)$(DATADIR)/d3po.conf
	if [ -f models/default.safetensors ]; then \
		install -m 644 models/default.safetensors $(DESTDIR)$(DATADIR)/default.safetensors; fi
	if [ -f $(B)/libd3po_cuda.so ]; then install -d $(DESTDIR)$(PREFIX)/lib/d3po && \
		install -m 755 $(B)/libd3po_cuda.so $(DESTDIR)$(PREFIX)/lib/d3po/libd3po_cuda.so; fi

clean:
	rm -rf $(B) build-asan

-include $(LIB_OBJ:.o=.d) $(B)/src/main.d $(TEST_BIN:=.d)
