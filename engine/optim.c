/* optim.c - AdamW and gradient clipping over flat buffers (see optim.h). */
#include "optim.h"

#include "backend.h"

#include <math.h>
#include <stdlib.h>

int adamw_init(d3_adamw *o, size_t n) {
    o->lr = 3e-5f; o->beta1 = 0.9f; o->beta2 = 0.999f; o->eps = 1e-8f; o->wd = 1e-4f;
    o->step = 0;
    o->n = n;
    o->m = calloc(n ? n : 1, sizeof(float));
    o->v = calloc(n ? n : 1, sizeof(float));
    if (!o->m || !o->v) { adamw_free(o); return -1; }
    return 0;
}

void adamw_free(d3_adamw *o) {
    free(o->m); free(o->v);
    o->m = o->v = NULL;
}

void adamw_scalars(d3_adamw *o, float *step_size, float *rbc2, float *decay) {
    o->step++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->step);
    double bc2 = 1.0 - pow(o->beta2, (double)o->step);
    *step_size = (float)(o->lr / bc1);
    *rbc2 = (float)(1.0 / sqrt(bc2));
    *decay = 1.0f - o->lr * o->wd;
}

void adamw_step(d3_adamw *o, float *params, const float *grads) {
    adamw_step_on(backend_cpu(), o, params, o->m, o->v, grads);
}

void adamw_step_on(const d3_backend *be, d3_adamw *o, float *params, float *m, float *v,
                   const float *grads) {
    float step_size, rbc2, decay;
    adamw_scalars(o, &step_size, &rbc2, &decay);
    be->adamw(params, m, v, grads, o->n, o->beta1, o->beta2, o->eps, step_size, rbc2, decay);
}

void adamw_update(float *params, float *m, float *v, const float *grads, size_t n, float b1,
                  float b2, float eps, float step_size, float rbc2, float decay) {
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        float denom = sqrtf(v[i]) * rbc2 + eps;
        params[i] = params[i] * decay - step_size * m[i] / denom;
    }
}

double grad_clip(float *grads, size_t n, double max_norm) {
    return grad_clip_on(backend_cpu(), grads, n, max_norm);
}

double grad_clip_on(const d3_backend *be, float *grads, size_t n, double max_norm) {
    double norm = sqrt(be->sumsq(grads, n));
    if (max_norm > 0 && norm > max_norm) be->scale(grads, (float)(max_norm / (norm + 1e-6)), n);
    return norm;
}
