/* cli.c - option value parsing shared by the subcommands, the choice
 * of the compute backend from --device, --tf32 and the config, and the
 * lines of a session's metrics.jsonl (cli.h). */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device.h"

/* config.c stores engine.device as d3_device; device.c takes d3_device_kind */
_Static_assert((int)D3_DEVICE_AUTO == (int)D3_DEV_AUTO && (int)D3_DEVICE_CPU == (int)D3_DEV_CPU &&
                   (int)D3_DEVICE_CUDA == (int)D3_DEV_CUDA,
               "config.h's d3_device and device.h's d3_device_kind agree");

int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "d3po %s: %s '%s': expected an integer from %ld to %ld\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || *s == '-') {
        fprintf(stderr, "d3po %s: %s '%s': expected a non-negative integer\n", cmd, opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "d3po %s: %s '%s': expected a number from %g to %g\n", cmd, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_device(const char *cmd, const char *s, int *dev) {
    char err[D3_ERRLEN];
    d3_device_kind k;
    if (device_parse(s, &k, err)) {
        fprintf(stderr, "d3po %s: --device '%s': expected auto, cpu or cuda\n", cmd, s);
        return -1;
    }
    *dev = (int)k;
    return 0;
}

const d3_backend *cli_backend(const char *cmd, int dev, int tf32, const d3_config *c, char *note,
                              size_t n) {
    d3_device_kind k = dev >= 0 ? (d3_device_kind)dev : (d3_device_kind)c->engine.device;
    tf32 = tf32 || c->engine.tf32;
    char why[D3_ERRLEN], err[D3_ERRLEN];
    const d3_backend *be = device_backend(k, tf32, why, err);
    if (!be) {
        if (dev < 0) /* asked for by the config file: say where */
            fprintf(stderr, "d3po %s: %s (engine.device in %s)\n", cmd, err, config_source(c));
        else
            fprintf(stderr, "d3po %s: %s\n", cmd, err);
        return NULL;
    }
    d3_dtype dt = c->engine.dtype;
    if (!be->host && dt != D3_DTYPE_FP32) { /* see cli.h: refused, never ignored */
        fprintf(stderr, "d3po %s: dtype %s: the CUDA backend holds weights in fp32 only (half precision is not built yet); "
                        "use fp32 or --device cpu\n", cmd, config_dtype_name(dt));
        return NULL;
    }
    if (note && why[0]) snprintf(note, n, "%s (%s)", be->name, why);
    else if (note) snprintf(note, n, "%s%s", be->name, !be->host && tf32 ? ", tf32" : "");
    if (note && be->host && dt != D3_DTYPE_FP32) {
        size_t l = strlen(note);
        snprintf(note + l, n - l, ", fp32 compute (engine.dtype %s is for the GPU)", config_dtype_name(dt));
    }
    return be;
}


/* s into out (n bytes) with control bytes as \xNN, cut to fit. */
static void cli_escape(char *out, size_t n, const char *s) {
    size_t j = 0;
    for (; *s && j + 5 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f) j += (size_t)snprintf(out + j, n - j, "\\x%02x", ch);
        else out[j++] = (char)ch;
    }
    out[j] = 0;
}

int cli_dtype(const char *cmd, const char *s, int *dt) {
    static const char *const names[] = {"fp32", "fp16", "bf16"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, names[i])) {
            *dt = i; /* = d3_dtype */
            return 0;
        }
    char safe[64];
    cli_escape(safe, sizeof safe, s);
    fprintf(stderr, "d3po %s: --dtype '%s': expected fp32, fp16 or bf16\n", cmd, safe);
    return -1;
}

int cli_objective(const char *cmd, const char *s, int *obj) {
    if (!strcmp(s, "d3po")) *obj = D3PO_OBJ_D3PO;
    else if (!strcmp(s, "diffusion-dpo")) *obj = D3PO_OBJ_DPO;
    else {
        char safe[64];
        cli_escape(safe, sizeof safe, s);
        fprintf(stderr, "d3po %s: --objective '%s': expected d3po or diffusion-dpo\n", cmd, safe);
        return -1;
    }
    return 0;
}

int cli_size(const char *cmd, const char *s, int *width, int *height) {
    char *e1, *e2 = NULL;
    long W = strtol(s, &e1, 10), H = *e1 == 'x' ? strtol(e1 + 1, &e2, 10) : 0;
    if (*e1 != 'x' || !e2 || *e2 || W < 8 || H < 8 || W > 8192 || H > 8192) {
        char safe[64];
        cli_escape(safe, sizeof safe, s);
        fprintf(stderr, "d3po %s: --size '%s': expected WxH in pixels, 8..8192\n", cmd, safe);
        return -1;
    }
    *width = (int)W;
    *height = (int)H;
    return 0;
}

struct json_t *cli_train_json(const d3_config *c) {
    json_t *tr = json_object();
    json_object_set_new(tr, "lr", json_real(c->d3po.lr));
    json_object_set_new(tr, "epochs", json_integer(c->d3po.epochs));
    json_object_set_new(tr, "reference",
                        json_string(c->d3po.reference == D3PO_REF_BASE ? "base" : "round"));
    json_object_set_new(tr, "kl", json_real(c->d3po.kl));
    json_object_set_new(tr, "beta", json_real(c->d3po.beta));
    json_object_set_new(tr, "clip_eps", json_real(c->d3po.clip_eps));
    json_object_set_new(tr, "objective", json_string(config_objective_name(c->train.objective)));
    json_object_set_new(tr, "all_labels", json_boolean(c->train.all_labels));
    if (c->train.objective == D3PO_OBJ_DPO) {
        json_object_set_new(tr, "dpo_beta", json_real(c->train.dpo_beta));
        json_object_set_new(tr, "dpo_draws", json_integer(c->train.dpo_draws));
    }
    return tr;
}

int cli_metrics_append(const char *dir, struct json_t *o, char *err) {
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
    if (!line) return d3_errf(err, "metrics: cannot encode the JSON line");
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    size_t len = strlen(line);
    line[len] = '\n'; /* json_dumps' NUL becomes the newline; written by length */
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int rc = 0;
    if (fd < 0) {
        rc = d3_errf(err, "%s: %s", path, strerror(errno));
    } else {
        ssize_t w = write(fd, line, len + 1);
        if (w != (ssize_t)(len + 1) || fsync(fd))
            rc = d3_errf(err, "%s: write: %s", path, strerror(errno));
        close(fd);
    }
    free(line);
    return rc;
}
