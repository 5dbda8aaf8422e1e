/* device.c - backend choice and the dlopen of the CUDA backend (device.h). */
#include "device.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ops.h"

#ifndef D3PO_LIBDIR
#define D3PO_LIBDIR "/usr/local/lib/d3po"
#endif
#define CUDA_SO "libd3po_cuda.so"

int device_parse(const char *s, d3_device_kind *k, char *err) {
    if (!strcasecmp(s, "auto")) *k = D3_DEV_AUTO;
    else if (!strcasecmp(s, "cpu")) *k = D3_DEV_CPU;
    else if (!strcasecmp(s, "cuda") || !strcasecmp(s, "gpu")) *k = D3_DEV_CUDA;
    else return d3_errf(err, "device '%s': expected auto, cpu or cuda", s);
    return 0;
}

const char *device_kind_name(d3_device_kind k) {
    return k == D3_DEV_CPU ? "cpu" : k == D3_DEV_CUDA ? "cuda" : "auto";
}

/* The loaded library, once per process. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *lib;
static int lib_tried;
static char lib_err[D3_ERRLEN];
static const d3_backend *cuda_be;
static int cuda_tried;
static char cuda_err[D3_ERRLEN];

static void *try_open(const char *path, char *why, size_t len) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h && !why[0]) snprintf(why, len, "%s", dlerror());
    else if (!h) (void)dlerror();
    return h;
}

/* Caller holds lock. */
static void *load_lib(void) {
    if (lib_tried) return lib;
    lib_tried = 1;
    char why[D3_ERRLEN] = "", path[PATH_MAX + 64];
    const char *env = getenv("D3PO_CUDA_LIB");
    if (env && *env) {
        if (!(lib = try_open(env, why, sizeof why)))
            snprintf(lib_err, sizeof lib_err, "cuda: cannot load %.200s (D3PO_CUDA_LIB): %.250s", env, why);
        return lib;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    int found = 0;
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        /* beside the binary; one level up (build/tests/x, build/bench/x
         * beside build/libd3po_cuda.so); an installed tree's lib/d3po */
        const char *rel[] = {"", "/..", "/../lib/d3po"};
        for (int i = 0; i < 3 && !lib; i++) {
            snprintf(path, sizeof path, "%s%s/" CUDA_SO, exe, rel[i]);
            if (access(path, F_OK) == 0) { found = 1; lib = try_open(path, why, sizeof why); }
        }
    }
    if (!lib) {
        snprintf(path, sizeof path, "%s/" CUDA_SO, D3PO_LIBDIR);
        if (access(path, F_OK) == 0) { found = 1; lib = try_open(path, why, sizeof why); }
    }
    if (!lib) {
        if (found)
            snprintf(lib_err, sizeof lib_err, "cuda: a library is missing: %.450s", why);
        else
            snprintf(lib_err, sizeof lib_err,
                     "cuda: " CUDA_SO " not found beside the binary or in " D3PO_LIBDIR
                     " (this build has no CUDA backend: nvcc was not found when it was built)");
    }
    return lib;
}

static const d3_backend *open_cuda(int tf32, char *err) {
    pthread_mutex_lock(&lock);
    if (!cuda_tried) {
        cuda_tried = 1;
        void *h = load_lib();
        if (!h) {
            snprintf(cuda_err, sizeof cuda_err, "%s", lib_err);
        } else {
            d3_cuda_open_fn fn = (d3_cuda_open_fn)dlsym(h, D3_CUDA_OPEN);
            char e2[D3_ERRLEN] = "";
            if (!fn)
                snprintf(cuda_err, sizeof cuda_err, "cuda: " CUDA_SO " has no %s", D3_CUDA_OPEN);
            else if (!(cuda_be = fn(tf32, e2)))
                snprintf(cuda_err, sizeof cuda_err, "cuda: %.480s", e2);
            else if (cuda_be->abi != D3_BACKEND_ABI) {
                snprintf(cuda_err, sizeof cuda_err,
                         "cuda: " CUDA_SO " was built for backend ABI %d, this binary needs %d",
                         cuda_be->abi, D3_BACKEND_ABI);
                cuda_be = NULL;
            }
        }
    }
    const d3_backend *be = cuda_be;
    if (!be && err) snprintf(err, D3_ERRLEN, "%s", cuda_err);
    pthread_mutex_unlock(&lock);
    return be;
}

const d3_backend *device_backend(d3_device_kind k, int tf32, char *why, char *err) {
    if (why) why[0] = 0;
    if (k == D3_DEV_CPU) return backend_cpu();
    char e2[D3_ERRLEN];
    const d3_backend *be = open_cuda(tf32, e2);
    if (be) return be;
    if (k == D3_DEV_CUDA) {
        d3_errf(err, "%s", e2);
        return NULL;
    }
    if (why) snprintf(why, D3_ERRLEN, "%s", e2);
    return backend_cpu();
}

void device_describe(char *out, size_t len) {
    size_t o = 0;
    int nt = ops_get_threads();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o += snprintf(out + o, len - o, "cpu: %ld cores, %d threads for the ops (OpenMP + OpenBLAS)\n",
                  ncpu, nt ? nt : (int)ncpu);
    if (o >= len) return;
    pthread_mutex_lock(&lock);
    void *h = load_lib();
    char msg[4096] = "";
    if (!h) {
        snprintf(msg, sizeof msg, "%s\n", lib_err);
    } else {
        d3_cuda_describe_fn fn = (d3_cuda_describe_fn)dlsym(h, D3_CUDA_DESCRIBE);
        if (!fn) snprintf(msg, sizeof msg, "cuda: " CUDA_SO " has no %s\n", D3_CUDA_DESCRIBE);
        else if (fn(msg, sizeof msg) < 0) {
            char tmp[4096];
            snprintf(tmp, sizeof tmp, "cuda: %.4000s\n", msg);
            snprintf(msg, sizeof msg, "%s", tmp);
        }
    }
    pthread_mutex_unlock(&lock);
    snprintf(out + o, len - o, "%s", msg);
}
