/* config.c - loading, validating and printing the d3po settings (config.h).
 *
 * The scalar settings live in one table (group, key, kind, range, offset
 * into d3_config); loading walks the file's settings and looks each up in
 * the table, so an unknown key is found where it is written, with its line.
 * Two settings are special and handled by hand: session.prompts (a list of
 * class names) and ui.keys (a group of action = key names). The dump walks
 * the same table, so what config_dump prints is what config_load reads.
 * libconfig reports the line of each setting (config_setting_source_line)
 * and of a parse error (config_error_line); every message here starts with
 * "FILE:LINE: " when there is a line to give. */
#include "config.h"
#include "text.h"

#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <ctype.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ---- the table of scalar settings ---- */

enum { K_INT, K_FLOAT, K_ENUM, K_BOOL, K_STR }; /* K_STR: lora.targets */

typedef struct {
    const char *group, *name;
    int kind;
    size_t off;               /* offsetof(d3_config, ...) of an int, double, enum or bool (int) */
    double lo, hi;            /* range (K_INT, K_FLOAT) */
    int lo_open, hi_open;     /* K_FLOAT: exclusive bounds */
    const char *const *enums; /* K_ENUM: allowed values, index = enum value */
} keydef;

static const char *const preset_names[] = {"default", "paper", NULL};
static const char *const graphics_names[] = {"auto", "sixel", "blocks", NULL};
static const char *const device_names[] = {"auto", "cpu", "cuda", NULL};
/* index = d3_dtype */
static const char *const dtype_names[] = {"fp32", "fp16", "bf16", NULL};
/* index = d3po_ref_mode: D3PO_REF_BASE 0, D3PO_REF_ROUND 1 */
static const char *const reference_names[] = {"base", "round", NULL};
/* index = d3po_objective: D3PO_OBJ_D3PO 0, D3PO_OBJ_DPO 1 */
static const char *const objective_names[] = {"d3po", "diffusion-dpo", NULL};

#define OFF(f) offsetof(d3_config, f)
static const keydef keydefs[] = {
    {NULL, "preset", K_ENUM, OFF(preset), 0, 0, 0, 0, preset_names},
    {"sampler", "steps", K_INT, OFF(sampler.steps), 1, D3_MAX_STEPS, 0, 0, NULL},
    {"sampler", "eta", K_FLOAT, OFF(sampler.eta), 0, 1, 1, 0, NULL},
    {"sampler", "cfg", K_FLOAT, OFF(sampler.cfg), 0, 100, 0, 0, NULL},
    {"session", "round_size", K_INT, OFF(session.round_size), 1, 1000, 0, 0, NULL},
    {"session", "queue_depth", K_INT, OFF(session.queue_depth), 1, 64, 0, 0, NULL},
    {"d3po", "beta", K_FLOAT, OFF(d3po.beta), 0, 100, 1, 0, NULL},
    {"d3po", "clip_eps", K_FLOAT, OFF(d3po.clip_eps), 0, 1, 1, 1, NULL},
    {"d3po", "lr", K_FLOAT, OFF(d3po.lr), 0, 1, 1, 0, NULL},
    {"d3po", "epochs", K_INT, OFF(d3po.epochs), 1, 100, 0, 0, NULL},
    {"d3po", "weight_decay", K_FLOAT, OFF(d3po.weight_decay), 0, 1, 0, 0, NULL},
    {"d3po", "max_grad_norm", K_FLOAT, OFF(d3po.max_grad_norm), 0, 1000, 0, 0, NULL},
    {"d3po", "reference", K_ENUM, OFF(d3po.reference), 0, 0, 0, 0, reference_names},
    {"d3po", "kl", K_FLOAT, OFF(d3po.kl), 0, 1000, 0, 0, NULL},
    {"train", "objective", K_ENUM, OFF(train.objective), 0, 0, 0, 0, objective_names},
    {"train", "dpo_beta", K_FLOAT, OFF(train.dpo_beta), 0, 1000, 1, 0, NULL},
    {"train", "dpo_draws", K_INT, OFF(train.dpo_draws), 1, 1024, 0, 0, NULL},
    {"train", "all_labels", K_BOOL, OFF(train.all_labels), 0, 0, 0, 0, NULL},
    {"ui", "graphics", K_ENUM, OFF(ui.graphics), 0, 0, 0, 0, graphics_names},
    {"ui", "colors", K_INT, OFF(ui.colors), 2, 256, 0, 0, NULL},
    {"engine", "device", K_ENUM, OFF(engine.device), 0, 0, 0, 0, device_names},
    {"engine", "threads", K_INT, OFF(engine.threads), 0, 1024, 0, 0, NULL},
    {"engine", "tf32", K_BOOL, OFF(engine.tf32), 0, 0, 0, 0, NULL},
    {"engine", "dtype", K_ENUM, OFF(engine.dtype), 0, 0, 0, 0, dtype_names},
    {"lora", "rank", K_INT, OFF(lora.rank), 1, 1024, 0, 0, NULL},
    {"lora", "alpha", K_FLOAT, OFF(lora.alpha), 0, 1e6, 0, 0, NULL},
    {"lora", "seed", K_INT, OFF(lora.seed), 0, 2147483647, 0, 0, NULL},
    {"lora", "targets", K_STR, OFF(lora.targets), 0, 0, 0, 0, NULL},
    {"label", "grid", K_INT, OFF(label.grid), 0, 8, 0, 0, NULL},
};
#define NKEYDEFS (sizeof keydefs / sizeof keydefs[0])

static const char *const groups[] = {"sampler", "session", "d3po", "train", "ui",
                                     "engine",  "lora",    "label", NULL};

static const char *const action_names[D3_ACT_COUNT + 1] = {"left",   "right", "tie",     "skip",
                                                           "undo",   "zoom",  "history", "train",
                                                           "prompt", "help",  "quit",    "stats",
                                                           "log",    NULL};

static const char *const named_keys[] = {"Left",      "Right", "Up",  "Down",   "Space",
                                         "Backspace", "Enter", "Tab", "Escape", "PageUp",
                                         "PageDown",  "Home",  "End", NULL};

/* Default bindings, NULL-terminated per action. */
static const char *const default_keys[D3_ACT_COUNT][D3_CFG_KEYS_PER_ACTION + 1] = {
    [D3_ACT_LEFT] = {"1", "Left", NULL},
    [D3_ACT_RIGHT] = {"2", "Right", NULL},
    [D3_ACT_TIE] = {"t", "=", NULL},
    [D3_ACT_SKIP] = {"s", "Space", NULL},
    [D3_ACT_UNDO] = {"u", "Backspace", NULL},
    [D3_ACT_ZOOM] = {"z", NULL},
    [D3_ACT_HISTORY] = {"h", NULL},
    [D3_ACT_TRAIN] = {"T", NULL},
    [D3_ACT_PROMPT] = {"p", NULL},
    [D3_ACT_HELP] = {"?", NULL},
    [D3_ACT_QUIT] = {"q", NULL},
    [D3_ACT_STATS] = {"i", NULL},
    [D3_ACT_LOG] = {"m", NULL},
};

static int *int_at(d3_config *c, const keydef *k) { return (int *)((char *)c + k->off); }
static double *dbl_at(d3_config *c, const keydef *k) { return (double *)((char *)c + k->off); }
static int cint_at(const d3_config *c, const keydef *k) {
    return *(const int *)((const char *)c + k->off);
}
static double cdbl_at(const d3_config *c, const keydef *k) {
    return *(const double *)((const char *)c + k->off);
}
/* Enums are stored as their C enum type; all of ours are int-sized. */
_Static_assert(sizeof(d3_preset) == sizeof(int) && sizeof(d3_graphics) == sizeof(int) &&
                   sizeof(d3_device) == sizeof(int) && sizeof(d3po_ref_mode) == sizeof(int) &&
                   sizeof(d3po_objective) == sizeof(int),
               "enum settings are stored through int pointers");

/* ---- defaults and presets ---- */

void config_apply_preset(d3_config *c, d3_preset p) {
    c->preset = p;
    c->d3po.beta = 0.1;
    c->d3po.clip_eps = 0.1;
    c->d3po.weight_decay = 1e-4;
    c->d3po.max_grad_norm = 1.0;
    if (p == D3_PRESET_PAPER) {
        c->d3po.lr = 3e-5;
        c->d3po.epochs = 1;
        c->d3po.reference = D3PO_REF_ROUND;
        c->d3po.kl = 0;
    } else {
        /* chosen by the learning curves in bench/results (see d3po.conf) */
        c->d3po.lr = 1e-4;
        c->d3po.epochs = 2;
        c->d3po.reference = D3PO_REF_BASE;
        c->d3po.kl = 0.3;
    }
}

static void set_keys_default(d3_config *c, int a) {
    memset(c->ui.keys[a], 0, sizeof c->ui.keys[a]);
    int n = 0;
    for (; default_keys[a][n]; n++) strcpy(c->ui.keys[a][n], default_keys[a][n]);
    c->ui.nkeys[a] = n;
}

void config_defaults(d3_config *c) {
    memset(c, 0, sizeof *c);
    c->sampler.steps = 20;
    c->sampler.eta = 1.0;
    c->sampler.cfg = D3_CFG_PIXEL; /* cfg_set 0: the family's default */
    c->session.round_size = 8;
    c->session.queue_depth = 4;
    c->session.nprompts = 0;
    config_apply_preset(c, D3_PRESET_DEFAULT);
    c->train.objective = D3PO_OBJ_D3PO;
    c->train.dpo_beta = 2.5;
    c->train.dpo_draws = 16;
    c->train.all_labels = 0;
    c->ui.graphics = D3_GRAPHICS_AUTO;
    c->ui.colors = 256;
    for (int a = 0; a < D3_ACT_COUNT; a++) set_keys_default(c, a);
    c->engine.device = D3_DEVICE_AUTO;
    c->engine.threads = 0;
    c->engine.tf32 = 0;
    c->engine.dtype = D3_DTYPE_FP32;
    c->lora.rank = 4; /* the official D3PO code's LoRA */
    c->lora.alpha = 0;
    c->lora.seed = 0;
    strcpy(c->lora.targets, "to_q,to_k,to_v,to_out.0");
    strcpy(c->source, "built-in defaults");
}

const char *config_source(const d3_config *c) { return c->source; }

const char *config_action_name(int action) {
    return action >= 0 && action < D3_ACT_COUNT ? action_names[action] : NULL;
}

/* ---- key names ---- */

int config_key_canonical(const char *name, char *out) {
    size_t len = strlen(name);
    if (len == 1 && name[0] > ' ' && name[0] < 0x7f) {
        out[0] = name[0];
        out[1] = 0;
        return 0;
    }
    for (int i = 0; named_keys[i]; i++)
        if (!strcasecmp(name, named_keys[i])) {
            strcpy(out, named_keys[i]);
            return 0;
        }
    if ((name[0] == 'F' || name[0] == 'f') && len >= 2 && len <= 3) {
        char *end;
        long f = strtol(name + 1, &end, 10);
        if (!*end && name[1] != '0' && name[1] != '+' && name[1] != '-' && f >= 1 && f <= 12) {
            snprintf(out, D3_CFG_KEYNAME_LEN, "F%ld", f);
            return 0;
        }
    }
    return -1;
}

int config_key_action(const d3_config *c, const char *key) {
    char k[D3_CFG_KEYNAME_LEN];
    if (config_key_canonical(key, k)) return -1;
    for (int a = 0; a < D3_ACT_COUNT; a++)
        for (int j = 0; j < c->ui.nkeys[a]; j++)
            if (!strcmp(c->ui.keys[a][j], k)) return a;
    return -1;
}

/* ---- messages ---- */

/* "FILE:LINE" of a setting into buf. */
static const char *where(char *buf, size_t n, const config_setting_t *s, const char *path) {
    const char *f = config_setting_source_file(s);
    snprintf(buf, n, "%s:%u", f ? f : path, config_setting_source_line(s));
    return buf;
}

static const char *type_name(const config_setting_t *s) {
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a fractional number";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "nothing";
    }
}

/* "an integer from 1 to 1000", "a number greater than 0 and at most 1",
 * "one of \"auto\", \"sixel\", \"blocks\"", "a boolean (true or false)". */
static void expected(char *buf, size_t n, const keydef *k) {
    if (k->kind == K_BOOL) {
        snprintf(buf, n, "a boolean (true or false)");
    } else if (k->kind == K_STR) {
        snprintf(buf, n, "a string of comma-separated module names (1 to %d bytes)",
                 D3_CFG_TARGETS_LEN - 1);
    } else if (k->kind == K_INT) {
        snprintf(buf, n, "an integer from %.0f to %.0f", k->lo, k->hi);
    } else if (k->kind == K_FLOAT) {
        if (!k->lo_open && !k->hi_open)
            snprintf(buf, n, "a number from %g to %g", k->lo, k->hi);
        else
            snprintf(buf, n, "a number %s %g and %s %g", k->lo_open ? "greater than" : "at least",
                     k->lo, k->hi_open ? "less than" : "at most", k->hi);
    } else {
        size_t used = (size_t)snprintf(buf, n, "one of");
        for (int i = 0; k->enums[i] && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s \"%s\"", i ? "," : "", k->enums[i]);
    }
}

static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 31 || lb > 31) return 99;
    int d[32][32];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

/* Appends "; did you mean X?" when one of names[] is close to name, and
 * the list of valid names. names is NULL-terminated. */
static void valid_names(char *buf, size_t n, const char *what, const char *name,
                        const char *const *names) {
    const char *best = NULL;
    int bestd = 3;
    for (int i = 0; names[i]; i++) {
        int d = edit_distance(name, names[i]);
        if (d < bestd) bestd = d, best = names[i];
    }
    size_t used = 0;
    if (best) used = (size_t)snprintf(buf, n, "did you mean %s? ", best);
    if (used < n) used += (size_t)snprintf(buf + used, n - used, "%s are", what);
    for (int i = 0; names[i] && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s %s", i ? "," : "", names[i]);
}

/* ---- reading ---- */

/* Reads the scalar setting s for table entry k. */
static int read_scalar(d3_config *c, const keydef *k, const config_setting_t *s, const char *full,
                       const char *path, char *err) {
    char loc[D3_CFG_PATH_LEN + 16], exp[160];
    where(loc, sizeof loc, s, path);
    expected(exp, sizeof exp, k);
    int t = config_setting_type(s);
    if (k->kind == K_ENUM) {
        if (t != CONFIG_TYPE_STRING)
            return d3_errf(err, "%s: %s: expected %s, got %s", loc, full, exp, type_name(s));
        const char *v = config_setting_get_string(s);
        for (int i = 0; k->enums[i]; i++)
            if (!strcmp(v, k->enums[i])) {
                *int_at(c, k) = i;
                return 0;
            }
        return d3_errf(err, "%s: %s: expected %s, got \"%s\"", loc, full, exp, v);
    }
    if (k->kind == K_STR) {
        const char *v = t == CONFIG_TYPE_STRING ? config_setting_get_string(s) : NULL;
        int ok = v && v[0] && strlen(v) < D3_CFG_TARGETS_LEN && v[strlen(v) - 1] != ',' && v[0] != ',' &&
                 !strstr(v, ",,");
        for (const char *q = v; ok && *q; q++)
            ok = (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
                 *q == '_' || *q == '.' || *q == ',';
        if (!ok) {
            if (t != CONFIG_TYPE_STRING)
                return d3_errf(err, "%s: %s: expected %s, got %s", loc, full, exp, type_name(s));
            char shown[64];
            return d3_errf(err, "%s: %s: expected %s, got \"%s\"", loc, full, exp,
                           text_escape(shown, sizeof shown, v));
        }
        snprintf((char *)c + k->off, D3_CFG_TARGETS_LEN, "%s", v);
        return 0;
    }
    if (k->kind == K_BOOL) {
        if (t != CONFIG_TYPE_BOOL)
            return d3_errf(err, "%s: %s: expected %s, got %s", loc, full, exp, type_name(s));
        *int_at(c, k) = config_setting_get_bool(s) ? 1 : 0;
        return 0;
    }
    if (k->kind == K_INT) {
        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
            return d3_errf(err, "%s: %s: expected %s, got %s", loc, full, exp, type_name(s));
        long long v = config_setting_get_int64(s);
        if (v < (long long)k->lo || v > (long long)k->hi)
            return d3_errf(err, "%s: %s: expected %s, got %lld", loc, full, exp, v);
        *int_at(c, k) = (int)v;
        return 0;
    }
    /* K_FLOAT: an integer literal is a number too ("cfg = 5;") */
    double v;
    if (t == CONFIG_TYPE_FLOAT)
        v = config_setting_get_float(s);
    else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
        v = (double)config_setting_get_int64(s);
    else
        return d3_errf(err, "%s: %s: expected %s, got %s", loc, full, exp, type_name(s));
    int below = k->lo_open ? !(v > k->lo) : !(v >= k->lo);
    int above = k->hi_open ? !(v < k->hi) : !(v <= k->hi);
    if (below || above || !isfinite(v))
        return d3_errf(err, "%s: %s: expected %s, got %g", loc, full, exp, v);
    *dbl_at(c, k) = v;
    return 0;
}

/* session.prompts: a list or array of class names, possibly empty. */
static int read_prompts(d3_config *c, const config_setting_t *s, const char *path, char *err) {
    char loc[D3_CFG_PATH_LEN + 16];
    where(loc, sizeof loc, s, path);
    int t = config_setting_type(s);
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
        return d3_errf(err,
                       "%s: session.prompts: expected a list of class names such as "
                       "[\"fruit\", \"cat face\"] (empty: every class), got %s",
                       loc, type_name(s));
    int n = config_setting_length(s);
    if (n > D3_CFG_MAX_PROMPTS)
        return d3_errf(err, "%s: session.prompts: expected at most %d class names, got %d", loc,
                       D3_CFG_MAX_PROMPTS, n);
    memset(c->session.prompts, 0, sizeof c->session.prompts);
    c->session.nprompts = 0;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        where(loc, sizeof loc, e, path);
        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return d3_errf(err, "%s: session.prompts[%d]: expected a class name (a string), got %s",
                           loc, i, type_name(e));
        const char *v = config_setting_get_string(e);
        size_t len = strlen(v);
        if (len == 0 || len >= D3_CFG_PROMPT_LEN)
            return d3_errf(err,
                           "%s: session.prompts[%d]: expected a class name of 1 to %d bytes, "
                           "got %zu bytes",
                           loc, i, D3_CFG_PROMPT_LEN - 1, len);
        for (int j = 0; j < i; j++)
            if (!strcmp(c->session.prompts[j], v))
                return d3_errf(err, "%s: session.prompts[%d]: \"%s\" is listed twice", loc, i, v);
        memcpy(c->session.prompts[i], v, len + 1);
        c->session.nprompts = i + 1;
    }
    return 0;
}

/* ui.keys: a group of action = "key" or action = ["key", ...]. set[a]
 * receives the setting of each action bound here (for conflict messages). */
static int read_keys(d3_config *c, const config_setting_t *g, const char *path,
                     const config_setting_t **set, char *err) {
    char loc[D3_CFG_PATH_LEN + 16], names[512];
    where(loc, sizeof loc, g, path);
    if (config_setting_type(g) != CONFIG_TYPE_GROUP)
        return d3_errf(err,
                       "%s: ui.keys: expected a group { left = [\"1\", \"Left\"]; ... }, got %s",
                       loc, type_name(g));
    int n = config_setting_length(g);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        where(loc, sizeof loc, s, path);
        int a = 0;
        while (a < D3_ACT_COUNT && strcmp(action_names[a], name)) a++;
        if (a == D3_ACT_COUNT) {
            valid_names(names, sizeof names, "actions", name, action_names);
            return d3_errf(err, "%s: ui.keys.%s: unknown action; %s", loc, name, names);
        }
        int t = config_setting_type(s);
        int cnt = t == CONFIG_TYPE_STRING                             ? 1
                  : (t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) ? config_setting_length(s)
                                                                      : -1;
        if (cnt < 1 || cnt > D3_CFG_KEYS_PER_ACTION) {
            char got[32];
            if (cnt > 0)
                snprintf(got, sizeof got, "%d key names", cnt);
            else
                snprintf(got, sizeof got, "%s", cnt == 0 ? "an empty list" : type_name(s));
            return d3_errf(err,
                           "%s: ui.keys.%s: expected a key name or a list of 1 to %d key names "
                           "such as [\"1\", \"Left\"], got %s",
                           loc, name, D3_CFG_KEYS_PER_ACTION, got);
        }
        memset(c->ui.keys[a], 0, sizeof c->ui.keys[a]);
        c->ui.nkeys[a] = 0;
        for (int j = 0; j < cnt; j++) {
            const config_setting_t *e =
                t == CONFIG_TYPE_STRING ? s : config_setting_get_elem(s, (unsigned)j);
            if (config_setting_type(e) != CONFIG_TYPE_STRING)
                return d3_errf(err, "%s: ui.keys.%s: expected key names (strings), got %s", loc,
                               name, type_name(e));
            const char *v = config_setting_get_string(e);
            char k[D3_CFG_KEYNAME_LEN];
            if (config_key_canonical(v, k))
                return d3_errf(err,
                               "%s: ui.keys.%s: \"%s\" is not a key name; expected a single "
                               "printable character or one of Left Right Up Down Space Backspace "
                               "Enter Tab Escape F1..F12 PageUp PageDown Home End",
                               loc, name, v);
            for (int m = 0; m < j; m++)
                if (!strcmp(c->ui.keys[a][m], k))
                    return d3_errf(err, "%s: ui.keys.%s: key \"%s\" is listed twice", loc, name, k);
            strcpy(c->ui.keys[a][j], k);
            c->ui.nkeys[a] = j + 1;
        }
        set[a] = s;
    }
    return 0;
}

/* One key bound to two actions: an error at the line of a binding made in
 * this file (the later one when both are). */
static int check_key_conflicts(const d3_config *c, const config_setting_t **set, const char *path,
                               char *err) {
    char loc[D3_CFG_PATH_LEN + 16];
    for (int a = 0; a < D3_ACT_COUNT; a++)
        for (int b = a + 1; b < D3_ACT_COUNT; b++)
            for (int i = 0; i < c->ui.nkeys[a]; i++)
                for (int j = 0; j < c->ui.nkeys[b]; j++) {
                    if (strcmp(c->ui.keys[a][i], c->ui.keys[b][j])) continue;
                    const config_setting_t *s = set[b] ? set[b] : set[a];
                    int later = set[b] ? b : a, other = set[b] ? a : b;
                    if (!s) continue; /* the defaults never conflict */
                    where(loc, sizeof loc, s, path);
                    return d3_errf(err,
                                   "%s: ui.keys.%s: key \"%s\" is also bound to %s%s; each key "
                                   "may do one thing",
                                   loc, action_names[later], c->ui.keys[a][i], action_names[other],
                                   set[other] ? "" : " (by default: rebind it too)");
                }
    return 0;
}

static int read_root(d3_config *c, const config_t *cf, const char *path, char *err) {
    const config_setting_t *root = config_root_setting(cf);
    char loc[D3_CFG_PATH_LEN + 16], names[512];
    const config_setting_t *keyset[D3_ACT_COUNT] = {0};
    int n = config_setting_length(root);
    /* The preset first: the d3po keys of the file override it wherever
     * they are written. */
    const config_setting_t *ps = config_setting_get_member(root, "preset");
    if (ps) {
        if (read_scalar(c, &keydefs[0], ps, "preset", path, err)) return -1;
        config_apply_preset(c, c->preset);
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(root, (unsigned)i);
        const char *gname = config_setting_name(g);
        where(loc, sizeof loc, g, path);
        if (!strcmp(gname, "preset")) continue;
        int known = 0;
        for (int j = 0; groups[j]; j++) known |= !strcmp(groups[j], gname);
        if (!known) {
            static const char *const top[] = {"preset", "sampler", "session", "d3po",
                                              "ui",     "engine",  "lora",  "label", NULL};
            valid_names(names, sizeof names, "top-level keys", gname, top);
            return d3_errf(err, "%s: %s: unknown key; %s", loc, gname, names);
        }
        if (config_setting_type(g) != CONFIG_TYPE_GROUP)
            return d3_errf(err, "%s: %s: expected a group (%s = { ... };), got %s", loc, gname,
                           gname, type_name(g));
        int m = config_setting_length(g);
        for (int j = 0; j < m; j++) {
            const config_setting_t *s = config_setting_get_elem(g, (unsigned)j);
            const char *name = config_setting_name(s);
            char full[128];
            snprintf(full, sizeof full, "%s.%s", gname, name);
            if (!strcmp(full, "session.prompts")) {
                if (read_prompts(c, s, path, err)) return -1;
                continue;
            }
            if (!strcmp(full, "ui.keys")) {
                if (read_keys(c, s, path, keyset, err)) return -1;
                continue;
            }
            const keydef *k = NULL;
            for (size_t q = 0; q < NKEYDEFS; q++)
                if (keydefs[q].group && !strcmp(keydefs[q].group, gname) &&
                    !strcmp(keydefs[q].name, name))
                    k = &keydefs[q];
            if (!k) {
                const char *in_group[16];
                int cnt = 0;
                for (size_t q = 0; q < NKEYDEFS; q++)
                    if (keydefs[q].group && !strcmp(keydefs[q].group, gname))
                        in_group[cnt++] = keydefs[q].name;
                if (!strcmp(gname, "session")) in_group[cnt++] = "prompts";
                if (!strcmp(gname, "ui")) in_group[cnt++] = "keys";
                in_group[cnt] = NULL;
                char what[64];
                snprintf(what, sizeof what, "%s keys", gname);
                valid_names(names, sizeof names, what, name, in_group);
                where(loc, sizeof loc, s, path);
                return d3_errf(err, "%s: %s: unknown key; %s", loc, full, names);
            }
            if (read_scalar(c, k, s, full, path, err)) return -1;
            if (k->off == OFF(sampler.cfg)) c->sampler.cfg_set = 1;
            if (k->off == OFF(label.grid) && (c->label.grid == 1 || c->label.grid == 2)) {
                where(loc, sizeof loc, s, path);
                return d3_errf(err, "%s: label.grid: expected 0 (pairs) or 3 to 8 images, got %d",
                               loc, c->label.grid);
            }
        }
    }
    return check_key_conflicts(c, keyset, path, err);
}

/* libconfig 1.5 reads an integer literal beyond 32 bits without an L
 * suffix by wrapping it (round_size = 4294967297 becomes 1). Before the
 * file is parsed, every integer literal outside strings and comments is
 * checked here: one that does not fit 32 bits is an error naming
 * FILE:LINE and the setting. (Files pulled in with @include are not
 * scanned.) */
static int check_int_literals(const char *path, char *err) {
    FILE *f = fopen(path, "r");
    if (!f) return 0; /* config_read_file reports it */
    char key[64] = "", word[64];
    int line = 1, c, rc = 0;
    size_t wl = 0;
    enum { CODE, STR, LINE_C, BLOCK_C } st = CODE;
    int prev = 0;
    while (!rc && (c = fgetc(f)) != EOF) {
        if (c == '\n') line++;
        if (st == STR) {
            if (c == '\\') {
                int d = fgetc(f);
                if (d == '\n') line++;
            } else if (c == '"') st = CODE;
            prev = c;
            continue;
        }
        if (st == LINE_C) {
            if (c == '\n') st = CODE;
            prev = c;
            continue;
        }
        if (st == BLOCK_C) {
            if (prev == '*' && c == '/') { st = CODE; c = 0; }
            prev = c;
            continue;
        }
        if (c == '"') st = STR;
        else if (c == '#') st = LINE_C;
        else if (c == '/' ) {
            int d = fgetc(f);
            if (d == '/') st = LINE_C;
            else if (d == '*') { st = BLOCK_C; c = 0; }
            else if (d != EOF) ungetc(d, f);
        } else if (isalpha(c) || c == '_' || c == '*' || (wl && (isalnum(c) || c == '-'))) {
            if (wl < sizeof word - 1) word[wl++] = (char)c;
            prev = c;
            continue;
        } else if (isdigit(c) && !(isalnum(prev) || prev == '_' || prev == '.')) {
            char num[64];
            size_t nl = 0;
            int d = c, hex = 0;
            while (d != EOF && (isxdigit(d) || d == 'x' || d == 'X')) {
                if (d == 'x' || d == 'X') hex = 1;
                if (nl < sizeof num - 1) num[nl++] = (char)d;
                d = fgetc(f);
            }
            num[nl] = 0;
            int is_float = d == '.' || (!hex && (d == 'e' || d == 'E')), suffix = d == 'L';
            if (d != EOF) ungetc(d, f);
            if (!is_float && !suffix) {
                errno = 0;
                unsigned long long v = strtoull(num, NULL, 0);
                if (errno == ERANGE || v > (hex ? 0xffffffffULL : 2147483648ULL))
                    rc = d3_errf(err, "%s:%d: %s: integer %s is out of range (a setting's value must "
                                 "fit 32 bits; see d3po.conf(5) for its range)", path, line,
                                 key[0] ? key : "value", num);
            }
            prev = '0';
            continue;
        }
        if (wl) { /* a word ended: it names the setting when '=' or ':' follows */
            word[wl] = 0;
            memcpy(key, word, wl + 1);
            wl = 0;
        }
        prev = c;
    }
    fclose(f);
    return rc;
}


int config_load_file(d3_config *c, const char *path, char *err) {
    struct stat st;
    if (stat(path, &st)) return d3_errf(err, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return d3_errf(err, "%s: is a directory, expected a libconfig file", path);
    FILE *probe = fopen(path, "r");
    if (!probe) return d3_errf(err, "%s: %s", path, strerror(errno));
    fclose(probe);

    if (check_int_literals(path, err)) return -1;
    config_t cf;
    config_init(&cf);
    /* @include "x.conf" is relative to the including file's directory */
    char dir[D3_CFG_PATH_LEN];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        slash[slash == dir] = 0;
        config_set_include_dir(&cf, dir);
    }
    int rc;
    if (!config_read_file(&cf, path)) {
        if (config_error_type(&cf) == CONFIG_ERR_FILE_IO)
            rc = d3_errf(err, "%s: cannot read: %s", path, config_error_text(&cf));
        else
            rc = d3_errf(err, "%s:%d: %s", config_error_file(&cf) ? config_error_file(&cf) : path,
                         config_error_line(&cf), config_error_text(&cf));
    } else {
        rc = read_root(c, &cf, path, err);
    }
    config_destroy(&cf);
    if (rc == 0) {
        memset(c->source, 0, sizeof c->source);
        snprintf(c->source, sizeof c->source, "%s", path);
    }
    return rc;
}

int config_user_path(char *buf, size_t n) {
    const char *x = getenv("XDG_CONFIG_HOME");
    int w;
    /* XDG Base Directory: a relative or empty XDG_CONFIG_HOME is ignored */
    if (x && x[0] == '/') {
        w = snprintf(buf, n, "%s/d3po/d3po.conf", x);
    } else {
        const char *h = getenv("HOME");
        if (!h || !h[0]) return -1;
        w = snprintf(buf, n, "%s/.config/d3po/d3po.conf", h);
    }
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

int config_load(d3_config *c, const char *explicit_path, char *err) {
    config_defaults(c);
    int rc = 0;
    if (explicit_path && explicit_path[0]) {
        rc = config_load_file(c, explicit_path, err);
    } else {
        char p[D3_CFG_PATH_LEN];
        struct stat st;
        if (config_user_path(p, sizeof p) == 0) {
            if (stat(p, &st) == 0)
                rc = config_load_file(c, p, err);
            else if (errno != ENOENT && errno != ENOTDIR)
                rc = d3_errf(err, "%s: %s", p, strerror(errno));
        }
    }
    if (rc) config_defaults(c);
    return rc;
}

/* ---- printing ---- */

static void put_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", f);
        else if (ch == '\t')
            fputs("\\t", f);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\x%02x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* The shortest decimal that reads back as v, always with a '.' or an
 * exponent so libconfig reads a float. */
static void put_double(FILE *f, double v) {
    char b[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(b, sizeof b, "%.*g", p, v);
        if (strtod(b, NULL) == v) break;
    }
    if (!strpbrk(b, ".eE")) strcat(b, ".0");
    fputs(b, f);
}

static void put_value(FILE *f, const d3_config *c, const keydef *k) {
    if (k->kind == K_BOOL)
        fputs(cint_at(c, k) ? "true" : "false", f);
    else if (k->kind == K_INT)
        fprintf(f, "%d", cint_at(c, k));
    else if (k->kind == K_FLOAT)
        put_double(f, cdbl_at(c, k));
    else if (k->kind == K_STR)
        put_string(f, (const char *)c + k->off);
    else
        put_string(f, k->enums[cint_at(c, k)]);
}

void config_dump(const d3_config *c, FILE *f) {
    fputs("# d3po settings from ", f);
    for (const char *s = c->source; *s; s++) fputc(*s == '\n' ? ' ' : *s, f);
    fputs("\n", f);
    fputs("preset = ", f);
    put_value(f, c, &keydefs[0]);
    fputs(";\n", f);
    for (int g = 0; groups[g]; g++) {
        fprintf(f, "%s = {\n", groups[g]);
        for (size_t q = 0; q < NKEYDEFS; q++) {
            const keydef *k = &keydefs[q];
            if (!k->group || strcmp(k->group, groups[g])) continue;
            if (k->off == OFF(sampler.cfg) && !c->sampler.cfg_set) {
                /* not set: each model family's own default, which a
                 * written value would override for both */
                fprintf(f, "    # cfg: not set: %.1f on the default (pixel) model, %.1f on Stable "
                           "Diffusion models\n", D3_CFG_PIXEL, D3_CFG_SD);
                continue;
            }
            fprintf(f, "    %s = ", k->name);
            put_value(f, c, k);
            fputs(";\n", f);
        }
        if (!strcmp(groups[g], "session")) {
            fputs("    prompts = [", f);
            for (int i = 0; i < c->session.nprompts; i++) {
                fputs(i ? ", " : "", f);
                put_string(f, c->session.prompts[i]);
            }
            fputs("];\n", f);
        }
        if (!strcmp(groups[g], "ui")) {
            fputs("    keys = {\n", f);
            for (int a = 0; a < D3_ACT_COUNT; a++) {
                fprintf(f, "        %s = [", action_names[a]);
                for (int j = 0; j < c->ui.nkeys[a]; j++) {
                    fputs(j ? ", " : "", f);
                    put_string(f, c->ui.keys[a][j]);
                }
                fputs("];\n", f);
            }
            fputs("    };\n", f);
        }
        fputs("};\n", f);
    }
}

/* ---- conversions ---- */

const char *config_objective_name(d3po_objective o) {
    return o == D3PO_OBJ_DPO ? objective_names[1] : objective_names[0];
}

const char *config_dtype_name(d3_dtype t) {
    return t >= D3_DTYPE_FP32 && t <= D3_DTYPE_BF16 ? dtype_names[t] : dtype_names[0];
}

ddim_opts config_ddim_opts(const d3_config *c) {
    return (ddim_opts){
        .steps = c->sampler.steps, .eta = (float)c->sampler.eta, .cfg = (float)c->sampler.cfg};
}

double config_cfg(const d3_config *c, int sd) {
    return c->sampler.cfg_set ? c->sampler.cfg : sd ? D3_CFG_SD : D3_CFG_PIXEL;
}

ddim_opts config_ddim_opts_family(const d3_config *c, int sd) {
    ddim_opts o = config_ddim_opts(c);
    o.cfg = (float)config_cfg(c, sd);
    return o;
}

d3po_train_opts config_train_opts_family(const d3_config *c, int sd) {
    d3po_train_opts o = config_train_opts(c);
    o.sample = config_ddim_opts_family(c, sd);
    return o;
}

d3po_train_opts config_train_opts(const d3_config *c) {
    d3po_train_opts o = d3po_train_opts_default();
    o.sample = config_ddim_opts(c);
    o.loss.beta = (float)c->d3po.beta;
    o.loss.clip_eps = (float)c->d3po.clip_eps;
    o.loss.kl = (float)c->d3po.kl;
    o.ref = c->d3po.reference;
    o.epochs = c->d3po.epochs;
    o.max_grad_norm = c->d3po.max_grad_norm;
    o.objective = c->train.objective;
    o.dpo.beta = (float)c->train.dpo_beta;
    o.dpo_draws = c->train.dpo_draws;
    o.all_labels = c->train.all_labels;
    /* Diffusion-DPO's reference is the base model, whatever d3po.reference says */
    if (o.objective == D3PO_OBJ_DPO) o.ref = D3PO_REF_BASE;
    return o;
}
