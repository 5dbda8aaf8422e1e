/* optim.h - AdamW over one flat parameter buffer (llm.c style: the
 * optimizer is one loop) and global-norm gradient clipping.
 * Defaults are PyTorch's AdamW semantics: decoupled weight decay
 * p -= lr*wd*p, then the bias-corrected Adam step. */
#ifndef D3PO_OPTIM_H
#define D3PO_OPTIM_H
#include <stddef.h>

typedef struct {
    float lr, beta1, beta2, eps, wd;
    long step;       /* steps taken so far (saved in checkpoints) */
    size_t n;
    float *m, *v;    /* first and second moments [n] (host) */
} d3_adamw;

/* Allocates zeroed moments. lr 3e-5, betas 0.9/0.999, eps 1e-8, wd 1e-4
 * (the D3PO paper's values); change the fields after init. Returns 0/-1. */
int adamw_init(d3_adamw *o, size_t n);
void adamw_free(d3_adamw *o);
/* One step: params -= update(grads). Does not zero grads. */
void adamw_step(d3_adamw *o, float *params, const float *grads);
/* The scalars of step o->step + 1 (and increments o->step), for the
 * backends' adamw (backend.h): step_size = lr / (1 - b1^t),
 * rbc2 = 1 / sqrt(1 - b2^t), decay = 1 - lr * wd. */
void adamw_scalars(d3_adamw *o, float *step_size, float *rbc2, float *decay);
/* The same loop as the CPU backend's adamw (the host reference). */
void adamw_update(float *p, float *m, float *v, const float *g, size_t n, float b1, float b2,
                  float eps, float step_size, float rbc2, float decay);
/* Global L2 norm of grads; if above max_norm (> 0) scales grads to it
 * (PyTorch's clip_grad_norm_ coefficient max/(norm + 1e-6)). Returns the
 * norm before clipping. */
double grad_clip(float *grads, size_t n, double max_norm);

/* The same two on a backend's buffers (backend.h: the optimizer runs
 * where the gradients are): m, v are the moments on that device. The host
 * versions above are these on the CPU backend. */
struct d3_backend;
double grad_clip_on(const struct d3_backend *be, float *grads, size_t n, double max_norm);
void adamw_step_on(const struct d3_backend *be, d3_adamw *o, float *params, float *m, float *v,
                   const float *grads);
#endif
