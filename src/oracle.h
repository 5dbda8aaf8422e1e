/* oracle.h - simulated and scripted judges for headless rounds and blind
 * evaluation (`d3po auto`, `d3po eval`).
 *
 * Built-in oracles score one image; higher score = preferred:
 *   jpeg-compressibility    -(JPEG size in bytes at quality 95, libjpeg-turbo)
 *   jpeg-incompressibility  +(JPEG size at quality 95)
 *   brightness              mean of the RGB values in [0, 255]
 *   realism                 -(mean RMS distance, in 0..255 units, to the 5 nearest
 *                           training images of the image's class, both after a
 *                           3x3 binomial blur); the data set folder (as written by
 *                           `d3po dataset emoji`) is $D3PO_DATASET, else ./emoji;
 *                           the class comes from oracle_set_prompt()
 *   noisy:<name>[:T]        <name> answered like an inconsistent human:
 *                           P(A preferred) = sigmoid((score_A - score_B) / T)
 *                           (Bradley-Terry), T defaults to a per-oracle scale
 * An external labeler (labeler.h) answers pairs instead of scoring images.
 *
 *   d3_oracle *o = oracle_new("noisy:brightness:5", seed, err);
 *   if (oracle_set_prompt(o, "smiling face", S, err)) ...   // realism needs it
 *   double sa = oracle_score(o, rgb_a, S, S);
 *   int c = oracle_judge(o, rgb_a, rgb_b, S, S);   // SESSION_A / SESSION_B / SESSION_TIE
 *   oracle_free(o);
 */
#ifndef D3PO_ORACLE_H
#define D3PO_ORACLE_H
#include <stdint.h>
#include "err.h"

typedef struct d3_oracle d3_oracle;

/* NULL with err naming the unknown oracle and listing the known ones. */
d3_oracle *oracle_new(const char *spec, uint64_t seed, char *err);
void oracle_free(d3_oracle *o);
const char *oracle_name(const d3_oracle *o);
/* The prompt (class name) of the images judged next, and their side S.
 * Only realism uses it: it loads the data set at S x S on the first call
 * (or when S changes) and looks the class up by its prompt (classes.tsv)
 * or folder name. Returns 0, or -1 with err for an unknown class or an
 * unreadable data set; a no-op returning 0 for the other oracles. */
int oracle_set_prompt(d3_oracle *o, const char *prompt, int S, char *err);
/* Whether the oracle needs oracle_set_prompt before scoring. */
int oracle_needs_prompt(const d3_oracle *o);
/* The score of one RGB8 image [H][W][3] (the noise-free underlying score
 * for noisy: oracles); NAN for realism without a prompt set or with an
 * image whose size is not the one given to oracle_set_prompt. */
double oracle_score(d3_oracle *o, const uint8_t *rgb, int W, int H);
/* A decision between two images: SESSION_A, SESSION_B or SESSION_TIE
 * (equal scores, deterministic oracles only). */
int oracle_judge(d3_oracle *o, const uint8_t *a, const uint8_t *b, int W, int H);
/* Marks a group of k images (3..8, RGB8 [H][W][3] each) as grid mode's
 * person would (groups.h): the k/2 best-scored images good ('g'), the k/2
 * worst bad ('b'), the rest (the middle image of an odd group, images
 * tied across the split) unmarked ('-'); marks gets k characters and a
 * NUL. A noisy: oracle adds independent Gumbel noise of scale T to each
 * score first, so any two images of the group compare as oracle_judge
 * would (Bradley-Terry). Returns the number of marked images (0: all
 * tied), or -1 when k is out of range or an image has no score (realism
 * without a prompt, a size not the one set). */
int oracle_mark_group(d3_oracle *o, const uint8_t *const *rgb, int k, int W, int H, char *marks);
/* The 3x3 binomial blur ([1 2 1] x [1 2 1] / 16, edges clamped) realism
 * applies, of an RGB8 image [H][W][3] into out [H][W][3] floats. */
void oracle_blur(float *out, const uint8_t *rgb, int W, int H);
#endif
