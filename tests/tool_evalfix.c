/* tool_evalfix.c - makes a small session with really sampled pairs for
 * tests/test_eval.sh:  tool_evalfix DIR MODEL NPAIRS [STEPS]
 *
 * Pair i has class i % classes and seed 1000 + i, x_T from stream 0 of the
 * seed and step noise from streams 1 and 2 (as the engine samples), except
 * pair 1, which shares pair 0's seed and class (so its x_T) but takes step
 * noise streams 3 and 4: pairs 0 and 1 form a group of four images for
 * `d3po train --scores`. Decisions cycle A, B, tie, skip over the pairs;
 * the last pair stays unlabeled. Prints one line per pair:
 * "<id> <choice>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion.h"
#include "image.h"
#include "ops.h"
#include "session.h"

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: tool_evalfix DIR MODEL NPAIRS [STEPS]\n");
        return 1;
    }
    const char *dir = argv[1], *model = argv[2];
    int npairs = atoi(argv[3]), K = argc > 4 ? atoi(argv[4]) : 5;
    char err[D3_ERRLEN];
    ops_set_threads(2);
    d3_session s;
    if (session_create(dir, model, "{\"created_by\":\"tool_evalfix\"}", err) ||
        session_open(dir, &s, err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    d3_model m;
    if (session_load_policy(&s, &m, NULL, err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    int S = m.L.arch.size;
    size_t D = 3 * (size_t)S * S;
    ddim_opts o = ddim_opts_default();
    o.steps = K;
    float *x = malloc(2 * D * sizeof(float)), *traj = malloc(2 * (K + 1) * D * sizeof(float));
    float *lp = malloc(2 * K * sizeof(float));
    uint8_t *rgb[2] = {malloc(D), malloc(D)};
    d3_tape *tp = tape_new(backend_cpu());
    static const int cycle[] = {SESSION_A, SESSION_B, SESSION_TIE, SESSION_SKIP};
    int rc = 0;
    for (int i = 0; i < npairs && !rc; i++) {
        int pi = i == 1 ? 0 : i;
        uint64_t seed = 1000 + (uint64_t)pi;
        int cls[2] = {pi % m.nclasses, pi % m.nclasses};
        if (ddim_sample_pair(&m, tp, &o, cls[0], seed, i == 1 ? 3 : 1, x, traj, lp, err)) { rc = 2; break; }
        session_pair p = {.K = K, .S = S, .cls = cls[0], .version = s.version, .seed = seed,
                          .cfg = o.cfg, .eta = o.eta};
        for (int k = 0; k < 2; k++) {
            p.traj[k] = traj + k * (K + 1) * D;
            p.logp[k] = lp + k * K;
            image_to_rgb(rgb[k], x + k * D, S, S);
        }
        long id;
        if (session_add_pair(&s, &p, rgb[0], rgb[1], &id, err)) { rc = 2; break; }
        int ch = i == npairs - 1 ? SESSION_NONE : cycle[i % 4];
        if (ch != SESSION_NONE && session_label(&s, id, ch, s.version, err)) { rc = 2; break; }
        printf("%ld %s\n", id, session_choice_name(ch));
    }
    if (rc) fprintf(stderr, "%s\n", err);
    tape_free(tp);
    free(x); free(traj); free(lp); free(rgb[0]); free(rgb[1]);
    model_free(&m);
    session_close(&s);
    return rc;
}
