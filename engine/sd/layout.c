/* layout.c - the parameter table of a Stable Diffusion-family component
 * (see layout.h). Lookups are linear: a UNet has ~700 tensors and the
 * forward pass resolves each name once when it builds its offsets. */
#include "layout.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const sd_param *sd_layout_find(const sd_layout *L, const char *name)
{
    for (int i = 0; i < L->n; i++)
        if (strcmp(L->p[i].name, name) == 0) return &L->p[i];
    return NULL;
}

const sd_param *sd_layout_add(sd_layout *L, const char *name, int ndim, const int64_t *shape)
{
    if (ndim < 1 || ndim > SD_MAX_DIMS || strlen(name) >= SD_NAME_MAX || sd_layout_find(L, name))
        return NULL;
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 64;
        sd_param *p = realloc(L->p, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        L->p = p;
        L->cap = cap;
    }
    sd_param *e = &L->p[L->n];
    memset(e, 0, sizeof *e);
    strcpy(e->name, name);
    e->ndim = ndim;
    e->numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0) return NULL;
        e->shape[d] = shape[d];
        e->numel *= (size_t)shape[d];
    }
    e->off = (L->numel + 15) & ~(size_t)15;
    L->numel = e->off + e->numel;
    L->n++;
    return e;
}

const sd_param *sd_layout_addf(sd_layout *L, int ndim, const int64_t *shape, const char *fmt, ...)
{
    char name[SD_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (k < 0 || k >= (int)sizeof name) return NULL;
    return sd_layout_add(L, name, ndim, shape);
}

void sd_layout_free(sd_layout *L)
{
    free(L->p);
    memset(L, 0, sizeof *L);
}
