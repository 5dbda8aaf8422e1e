/* classifier.h - the small image classifier behind `d3po eval-model`
 * (DESIGN.md: a measure of sample quality d3po computes itself), trained by
 * `d3po classifier` with our own ops and tape.
 *
 * Architecture (base width B, images [3, S, S], K classes):
 *   stem   conv3x3 3->B
 *   blocks GN + SiLU + conv3x3, (out, stride): (2B,2) (2B,1) (4B,2) (4B,1) (4B,2)
 *   head   GN + SiLU, global average pool -> features [4B], linear -> K logits
 * The features (the penultimate layer) are what the Frechet distance
 * compares. Parameters live in one flat host buffer, named like a PyTorch
 * state_dict (stem.weight, blocks.0.norm.weight, ..., head.weight).
 *
 * The file (safetensors) also holds the statistics of the data set it was
 * trained on, computed by the trained network itself at save time, so an
 * evaluation needs only the classifier file:
 *   data.mu [K+1, F], data.cov [K+1, F, F]   feature mean and covariance of
 *                                           every image of class k (row K:
 *                                           all images), in double -> float
 *   data.count [K+1], holdout.acc [K+1]     images, and top-1 accuracy on
 *                                           the held-out images (row K:
 *                                           over all held-out images; NaN
 *                                           for a class with none)
 * Held out: every image whose index within its class (folder order) is
 * 4 mod 5, i.e. 20% of each class with at least 5 images (cls_holdout).
 *
 *   d3_classifier c;
 *   cls_load(&c, "models/classifier.safetensors", err);
 *   d3_tensor *feat, *logits = cls_forward(tp, &c, params, NULL, x, &feat);
 */
#ifndef D3PO_CLASSIFIER_H
#define D3PO_CLASSIFIER_H
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tape.h"

#define CLS_NBLOCKS 5

typedef struct {
    int base, size, nclasses, nfeat; /* nfeat = 4 * base */
    char **class_names;
    size_t nparams;
    float *params; /* host [nparams] */
    /* data statistics (NULL until computed or loaded) */
    float *mu, *cov, *count, *hacc;
    char **meta_keys, **meta_vals; /* extra metadata written by cls_save */
    int nmeta;
} d3_classifier;

/* A fresh network with seeded (Kaiming-uniform) weights. 0/-1. */
int cls_init(d3_classifier *c, int base, int size, int nclasses, char *const *names,
             uint64_t seed, char *err);
int cls_load(d3_classifier *c, const char *path, char *err);
/* Atomic write of the weights, the data statistics (when present) and the
 * metadata. 0/-1. */
int cls_save(const d3_classifier *c, const char *path, char *err);
void cls_free(d3_classifier *c);
void cls_set_meta(d3_classifier *c, const char *key, const char *val);
const char *cls_get_meta(const d3_classifier *c, const char *key);

/* The forward pass on the tape. params/grads: device buffers of nparams
 * floats (grads NULL: no parameter gradients). x: [N, 3, S, S] in [-1, 1].
 * Returns logits [N, K, 1, 1]; *feat (may be NULL) gets the features
 * [N, F, 1, 1]. */
d3_tensor *cls_forward(d3_tape *tp, const d3_classifier *c, const float *params, float *grads,
                       d3_tensor *x, d3_tensor **feat);

/* Whether image i of a class (0-based, folder order) is held out. */
static inline int cls_holdout(int i) { return i % 5 == 4; }

/* Feature statistics: mean mu[F] and unbiased covariance cov[F*F] (zero
 * when n < 2) of n rows of feat[n][F], in double. */
void cls_moments(double *mu, double *cov, const float *feat, int n, int F);
/* Frechet distance between two Gaussians:
 * |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), by symmetric
 * Jacobi eigendecompositions in double (negative eigenvalues of
 * rank-deficient covariances are clamped to 0). */
double cls_frechet(const double *mu1, const double *cov1, const double *mu2, const double *cov2,
                   int F);
#endif
