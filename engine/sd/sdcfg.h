/* sdcfg.h - reading the values of a diffusers/transformers config.json
 * (parsed by jansson) with one-line errors that name the file and the key:
 *   "unet/config.json: key 'block_out_channels': expected a list of 1 to 6
 *    positive integers"
 * A missing key (or null, where null means "default" in diffusers) takes
 * the given default, as diffusers' from_config does. Every getter returns 0
 * or -1 with err set.
 *
 *   int groups;
 *   if (sdcfg_int(j, "norm_num_groups", 32, 1, 1024, &groups, path, err)) return -1;
 *   static const sdcfg_fixed fixed[] = {{"class_embed_type", "null"}, ...};
 *   if (sdcfg_check_fixed(j, fixed, n, path, err)) return -1;
 */
#ifndef D3PO_SD_SDCFG_H
#define D3PO_SD_SDCFG_H

#include <jansson.h>

#include "err.h"

/* An integer in [lo, hi] (a real with an integral value is accepted). */
int sdcfg_int(const json_t *j, const char *key, int dflt, int lo, int hi, int *out,
              const char *path, char *err);
/* A number in [lo, hi]. */
int sdcfg_num(const json_t *j, const char *key, double dflt, double lo, double hi, double *out,
              const char *path, char *err);
/* true/false. */
int sdcfg_bool(const json_t *j, const char *key, int dflt, int *out, const char *path, char *err);
/* An integer (the same for all n entries) or a list of exactly n integers,
 * each in [lo, hi]. Missing: dflt for all. */
int sdcfg_ints(const json_t *j, const char *key, int n, int dflt, int lo, int hi, int *out,
               const char *path, char *err);
/* A list of 1..max strings, each one of names[] (NULL-terminated); out[i]
 * is the index into names. *n receives the length. Missing: dflt (a list of
 * names indices, dflt_n long). */
int sdcfg_enum_list(const json_t *j, const char *key, const char *const *names, int max,
                    const int *dflt, int dflt_n, int *out, int *n, const char *path, char *err);

/* A key that this engine supports only at one value (the default diffusers
 * gives it, as JSON text: "null", "false", "\"silu\"", "1"). A missing key
 * is its default; numbers compare by value (1 == 1.0); a list of the value
 * (only_cross_attention: [false, false]) counts as the value. */
typedef struct {
    const char *key;
    const char *value;
} sdcfg_fixed;
int sdcfg_check_fixed(const json_t *j, const sdcfg_fixed *f, int n, const char *what,
                      const char *path, char *err);

#endif
