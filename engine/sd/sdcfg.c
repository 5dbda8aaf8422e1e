/* sdcfg.c - config.json getters with one-line errors (see sdcfg.h). */
#include "sdcfg.h"

#include <math.h>
#include <string.h>

static const json_t *get(const json_t *j, const char *key) {
    const json_t *v = json_object_get(j, key);
    return v && !json_is_null(v) ? v : NULL;
}

static int as_int(const json_t *v, int lo, int hi, int *out) {
    if (!json_is_number(v)) return -1;
    double d = json_number_value(v);
    if (d != floor(d) || d < lo || d > hi) return -1;
    *out = (int)d;
    return 0;
}

int sdcfg_int(const json_t *j, const char *key, int dflt, int lo, int hi, int *out,
              const char *path, char *err) {
    const json_t *v = get(j, key);
    if (!v) { *out = dflt; return 0; }
    if (as_int(v, lo, hi, out))
        return d3_errf(err, "%s: key '%s': expected an integer from %d to %d", path, key, lo, hi);
    return 0;
}

int sdcfg_num(const json_t *j, const char *key, double dflt, double lo, double hi, double *out,
              const char *path, char *err) {
    const json_t *v = get(j, key);
    if (!v) { *out = dflt; return 0; }
    double d = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(d >= lo && d <= hi))
        return d3_errf(err, "%s: key '%s': expected a number from %g to %g", path, key, lo, hi);
    *out = d;
    return 0;
}

int sdcfg_bool(const json_t *j, const char *key, int dflt, int *out, const char *path, char *err) {
    const json_t *v = get(j, key);
    if (!v) { *out = dflt; return 0; }
    if (!json_is_boolean(v))
        return d3_errf(err, "%s: key '%s': expected true or false", path, key);
    *out = json_is_true(v);
    return 0;
}

int sdcfg_ints(const json_t *j, const char *key, int n, int dflt, int lo, int hi, int *out,
               const char *path, char *err) {
    const json_t *v = get(j, key);
    if (!v) {
        for (int i = 0; i < n; i++) out[i] = dflt;
        return 0;
    }
    if (json_is_number(v)) {
        int x;
        if (as_int(v, lo, hi, &x)) goto bad;
        for (int i = 0; i < n; i++) out[i] = x;
        return 0;
    }
    if (!json_is_array(v) || (int)json_array_size(v) != n) goto bad;
    for (int i = 0; i < n; i++)
        if (as_int(json_array_get(v, (size_t)i), lo, hi, &out[i])) goto bad;
    return 0;
bad:
    return d3_errf(err, "%s: key '%s': expected an integer from %d to %d or a list of %d of them "
                   "(one per block)", path, key, lo, hi, n);
}

int sdcfg_enum_list(const json_t *j, const char *key, const char *const *names, int max,
                    const int *dflt, int dflt_n, int *out, int *n, const char *path, char *err) {
    const json_t *v = get(j, key);
    if (!v) {
        for (int i = 0; i < dflt_n; i++) out[i] = dflt[i];
        *n = dflt_n;
        return 0;
    }
    char known[256] = "";
    for (int k = 0; names[k]; k++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", k ? ", " : "", names[k]);
    if (!json_is_array(v) || json_array_size(v) < 1 || (int)json_array_size(v) > max)
        return d3_errf(err, "%s: key '%s': expected a list of 1 to %d block types (%s)", path, key,
                       max, known);
    *n = (int)json_array_size(v);
    for (int i = 0; i < *n; i++) {
        const char *s = json_string_value(json_array_get(v, (size_t)i));
        int k = 0;
        while (s && names[k] && strcmp(names[k], s)) k++;
        if (!s || !names[k])
            return d3_errf(err, "%s: key '%s': entry %d is not supported (supported: %s)", path, key,
                           i, known);
        out[i] = k;
    }
    return 0;
}

/* a equals b, numbers by value. */
static int same(const json_t *a, const json_t *b) {
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    return json_equal((json_t *)a, (json_t *)b);
}

int sdcfg_check_fixed(const json_t *j, const sdcfg_fixed *f, int n, const char *what,
                      const char *path, char *err) {
    for (int i = 0; i < n; i++) {
        const json_t *v = json_object_get(j, f[i].key);
        if (!v) continue;
        json_t *want = json_loads(f[i].value, JSON_DECODE_ANY, NULL);
        int ok = want && same(v, want);
        if (!ok && want && json_is_array(v) && json_array_size(v) > 0) {
            ok = 1;
            for (size_t k = 0; k < json_array_size(v); k++) ok &= same(json_array_get(v, k), want);
        }
        json_decref(want);
        if (!ok)
            return d3_errf(err, "%s: key '%s': only %s is supported (%s)", path, f[i].key,
                           f[i].value, what);
    }
    return 0;
}
