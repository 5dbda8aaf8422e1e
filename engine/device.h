/* device.h - choosing the compute backend: --device auto|cpu|cuda.
 *
 *   d3_device_kind k;
 *   if (device_parse("auto", &k, err)) ...
 *   char why[D3_ERRLEN];
 *   const d3_backend *be = device_backend(k, tf32, why, err);
 *   // be == NULL: err says why (only when cuda was asked for explicitly);
 *   // auto without a working GPU gives the CPU backend and says why in why.
 *
 * The CUDA backend is a shared object, libd3po_cuda.so, found (first hit):
 * $D3PO_CUDA_LIB, the directory of the running binary, its parent,
 * <exe>/../lib/d3po,
 * the compile-time library directory. Loading happens once per process;
 * the backend table is process-wide (one CUDA context, one stream).
 */
#ifndef D3PO_DEVICE_H
#define D3PO_DEVICE_H

#include <stddef.h>

#include "backend.h"
#include "err.h"

typedef enum { D3_DEV_AUTO = 0, D3_DEV_CPU = 1, D3_DEV_CUDA = 2 } d3_device_kind;

/* "auto", "cpu", "cuda" (also "gpu") -> kind; -1 with err naming the value. */
int device_parse(const char *s, d3_device_kind *k, char *err);
const char *device_kind_name(d3_device_kind k);

/* The backend for the request. cuda: the CUDA backend, or NULL with err
 * ("cuda: no CUDA driver (libcuda.so.1: cannot open shared object file)",
 * "cuda: no GPU", "cuda: libd3po_cuda.so not found (this build has no CUDA
 * backend)"). auto: CUDA when it works, else the CPU backend with the
 * reason CUDA was not used written into why (may be NULL). cpu: the CPU
 * backend. tf32 applies to the first CUDA initialisation only. */
const d3_backend *device_backend(d3_device_kind k, int tf32, char *why, char *err);

/* Human-readable list of the devices for `d3po info --devices`: the CPU
 * (threads) and each CUDA device, or why there is none. */
void device_describe(char *out, size_t len);

#endif
