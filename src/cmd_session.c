/* cmd_session.c - `d3po session info DIR [--json]`: what a labeling session
 * on disk holds (pairs sampled, labels by choice, queue, rounds trained,
 * model, settings), as text for people or as one JSON object for scripts.
 * The session is opened read-only (no lock), so it can be inspected while
 * `d3po label` has it open. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "fsutil.h"
#include "model.h"
#include "groups.h"
#include "session.h"
#include "session_sd.h"
#include "text.h"

static const char session_help[] =
    "usage: d3po session info DIR [--json]\n"
    "       d3po session check DIR [--repair]\n"
    "       d3po session rollback DIR --to-round N\n"
    "\n"
    "Describes the labeling session in DIR: pairs sampled, labels by choice\n"
    "(A, B, tie, skip, and decisions undone), pairs labeled and still queued,\n"
    "rounds trained, the model version in use, the base model's architecture\n"
    "and the settings the session was started with; groups of k (grid mode):\n"
    "sampled, marked, skipped, their images' marks and pairs. Problems the session\n"
    "recovered from (a torn last journal line, a checkpoint that does not\n"
    "load) are printed as warnings on stderr.\n"
    "\n"
    "  --json   print one JSON object instead of text\n"
    "\n"
    "check lists every problem: bad journal lines (FILE:LINE), damaged pair\n"
    "files, checkpoints that do not load, a bad LATEST, temp files of\n"
    "interrupted writes, damaged group files and bad groups.jsonl lines.\n"
    "--repair moves bad journal lines into labels.jsonl.bad (groups.jsonl.bad)\n"
    "beside the journal, damaged pair (group) files to pairs/NNNNNN.traj.bad\n"
    "(groups/NNNNNN.traj.bad) and bad checkpoints to rounds/NNNN.safetensors.bad\n"
    "(nothing is deleted), points LATEST at the checkpoint in use and removes\n"
    "the temp files. Exit status 0 when the session has no problem (left),\n"
    "2 when it has.\n"
    "\n"
    "rollback makes round N's model the session's model again: it is saved as a\n"
    "new round (current + 1) with its weights and optimizer state, so versions\n"
    "keep rising and no checkpoint or label is rewritten; labels and pairs\n"
    "stay as they are.\n"
    "\n"
    "On a Stable Diffusion-family session the base model is the pipeline the\n"
    "session refers to (path and content hash in session.json; check reports a\n"
    "changed hash), and each round holds only the LoRA adapters and their\n"
    "optimizer state.\n";

/* The base model in one line: the pixel UNet's architecture, or the sd
 * pipeline, its hash, latents and adapters. */
static void base_desc(const d3_session *s, char *out, size_t n) {
    if (s->family == SESSION_FAMILY_PIXEL) {
        char arch[256];
        unet_arch_format(&s->arch, arch, sizeof arch);
        snprintf(out, n, "%s, %d classes", arch, s->nclasses);
        return;
    }
    char path[1024];
    snprintf(out, n, "%s (Stable Diffusion family, %s), latents %dx%dx%d; LoRA %s", 
             text_escape(path, sizeof path, s->model_path), s->model_hash, s->lat_c, s->lat_h,
             s->lat_w, s->lora.start ? "started from " SESSION_LORA_START : "");
    size_t u = strlen(out);
    if (!s->lora.start && u < n)
        snprintf(out + u, n - u, "rank %d, alpha %g on %s", s->lora.rank, s->lora.alpha,
                 s->lora.targets);
}

static void print_text(const d3_session *s, const session_stats *in) {
    char arch[1400], t1[1024];
    base_desc(s, arch, sizeof arch);
    printf("session:      %s\n", text_escape(t1, sizeof t1, s->dir));
    printf("pairs:        %ld sampled, %ld labeled, %ld unlabeled (queued)\n", in->pairs,
           in->labeled, in->unlabeled);
    printf("labels:       A %ld, B %ld, tie %ld, skip %ld, undone %ld (%ld journal records)\n",
           in->by_choice[SESSION_A], in->by_choice[SESSION_B], in->by_choice[SESSION_TIE],
           in->by_choice[SESSION_SKIP], in->undone, in->journal_lines);
    printf("training:     %ld labels trained, %ld not trained yet (they go into the next "
           "round)\n", in->trained, in->untrained);
    printf("rounds:       %d trained\n", in->round);
    printf("model:        version %d (rounds/%04d.safetensors)\n", in->version, in->round);
    printf("base model:   %s\n", arch);
    if (s->nprompts) {
        printf("prompts:      %d:", s->nprompts);
        for (int i = 0; i < s->nprompts; i++) {
            printf("%s %s", i ? "," : "", text_escape(t1, sizeof t1, s->prompts[i]));
            if (s->prompt_w[i] > 1) printf(" x%d", s->prompt_w[i]);
        }
        printf("\n");
    } else {
        printf("prompts:      %s\n", s->family == SESSION_FAMILY_PIXEL ? "every class of the model"
                                                                       : "none yet");
    }
    if (s->prompt_fixed) printf("fixed prompt: %s\n", text_escape(t1, sizeof t1, s->prompt_fixed));
    json_t *o = json_loads(s->settings, 0, NULL);
    const char *key;
    json_t *v;
    printf("settings:\n");
    json_object_foreach(o, key, v) {
        char k2[256];
        text_escape(k2, sizeof k2, key);
        if (json_is_string(v)) {
            printf("  %-12s %s\n", k2, text_escape(t1, sizeof t1, json_string_value(v)));
        } else {
            char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII |
                                        JSON_REAL_PRECISION(15));
            printf("  %-12s %s\n", k2, t ? t : "?");
            free(t);
        }
    }
    json_decref(o);
}

static void info_groups(const d3_session *s, json_t *o);

static int print_json(const d3_session *s, const session_stats *in) {
    char arch[1400];
    base_desc(s, arch, sizeof arch);
    json_t *warn = json_array();
    for (int i = 0; i < s->nwarn; i++) json_array_append_new(warn, json_string(s->warn[i]));
    json_t *prompts = json_array();
    for (int i = 0; i < s->nprompts; i++)
        json_array_append_new(prompts, json_pack("{s:s,s:i}", "prompt", s->prompts[i], "weight",
                                                 s->prompt_w[i]));
    json_t *o = json_pack(
        "{s:s, s:{s:I, s:I, s:I}, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I}, s:I, s:i, s:i, s:s, s:i, "
        "s:o, s:o, s:o, s:o, s:s}",
        "session", s->dir,
        "pairs", "sampled", (json_int_t)in->pairs, "labeled", (json_int_t)in->labeled,
        "unlabeled", (json_int_t)in->unlabeled,
        "labels", "A", (json_int_t)in->by_choice[SESSION_A], "B",
        (json_int_t)in->by_choice[SESSION_B], "tie", (json_int_t)in->by_choice[SESSION_TIE],
        "skip", (json_int_t)in->by_choice[SESSION_SKIP], "undone", (json_int_t)in->undone,
        "trained", (json_int_t)in->trained, "untrained", (json_int_t)in->untrained,
        "journal_records", (json_int_t)in->journal_lines,
        "rounds", in->round, "version", in->version, "arch", arch, "classes", s->nclasses,
        "settings", json_loads(s->settings, 0, NULL), "warnings", warn, "prompts", prompts,
        "fixed_prompt", s->prompt_fixed ? json_string(s->prompt_fixed) : json_null(),
        "family", session_family_name(s->family));
    if (o) info_groups(s, o);
    if (!o) {
        fprintf(stderr, "d3po session: cannot encode the JSON output\n");
        return EXIT_FAIL;
    }
    char *t = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(15));
    json_decref(o);
    if (!t) {
        fprintf(stderr, "d3po session: cannot encode the JSON output\n");
        return EXIT_FAIL;
    }
    printf("%s\n", t);
    free(t);
    return 0;
}

/* The groups of k (src/groups.h): a text block, or "groups" in o. */
static void info_groups(const d3_session *s, json_t *o) {
    char err[D3_ERRLEN];
    d3_groups g;
    if (groups_open(s->dir, s->round, 1, &g, err)) {
        fprintf(stderr, "d3po session info: warning: %s\n", err);
        return;
    }
    for (int i = 0; i < g.nwarn && i < GROUPS_MAX_WARN; i++)
        fprintf(stderr, "d3po session info: warning: %s\n", g.warn[i]);
    groups_stats st;
    groups_info(&g, &st);
    groups_close(&g);
    if (o) {
        json_object_set_new(o, "groups", json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                                                   "s:I, s:I, s:I}",
            /* names no other key of the output uses, so a grep for one finds one */
            "count", (json_int_t)st.groups, "marked", (json_int_t)st.decided,
            "skipped_groups", (json_int_t)st.skipped, "undecided", (json_int_t)st.undecided,
            "images_good", (json_int_t)st.good, "images_bad", (json_int_t)st.bad,
            "images_unmarked", (json_int_t)st.unmarked, "group_pairs", (json_int_t)st.pairs,
            "group_pairs_trained", (json_int_t)st.pairs_trained,
            "group_pairs_pending", (json_int_t)st.pairs_pending,
            "group_undos", (json_int_t)st.undone, "group_records", (json_int_t)st.journal_lines));
        return;
    }
    if (!st.groups && !st.journal_lines) return;
    printf("groups:       %ld sampled, %ld decided, %ld skipped, %ld undecided; images: %ld good, "
           "%ld bad, %ld unmarked\n", st.groups, st.decided, st.skipped, st.undecided, st.good,
           st.bad, st.unmarked);
    printf("group pairs:  %ld (good beats bad): %ld trained, %ld not trained yet; undone %ld (%ld "
           "journal records in groups.jsonl)\n", st.pairs, st.pairs_trained, st.pairs_pending,
           st.undone, st.journal_lines);
}

static int session_info_cmd(int argc, char **argv) {
    static const struct option opts[] = {{"json", 0, 0, 'j'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h': fputs(session_help, stdout); return 0;
        default: fputs(session_help, stderr); return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "d3po session info: expected one session directory\n%s", session_help);
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN];
    d3_session s;
    if (session_open_readonly(argv[optind], &s, err)) {
        fprintf(stderr, "d3po session info: %s\n", err);
        return EXIT_FAIL;
    }
    for (int i = 0; i < s.nwarn; i++)
        fprintf(stderr, "d3po session info: warning: %s\n", s.warn[i]);
    if (s.nwarn_dropped)
        fprintf(stderr, "d3po session info: warning: %d more (d3po session check lists them all)\n",
                s.nwarn_dropped);
    session_stats in;
    session_info(&s, &in);
    int rc = 0;
    if (json) rc = print_json(&s, &in);
    else {
        print_text(&s, &in);
        info_groups(&s, NULL);
    }
    session_close(&s);
    return rc;
}

typedef struct {
    int n;
} check_ctx;

static void problem(void *ctx, const char *what) {
    ((check_ctx *)ctx)->n++;
    printf("problem: %s\n", what);
}

/* Groups of k: each group file loads, each journal line replays; with
 * repair, damaged group files go to .traj.bad and bad lines to
 * groups.jsonl.bad. Returns the problems repaired. */
static int check_groups(const d3_session *s, check_ctx *cx, int repair) {
    int fixed = 0;
    char err[D3_ERRLEN], msg[D3_ERRLEN + 64];
    d3_groups g;
    if (groups_open(s->dir, s->round, 1, &g, err)) {
        problem(cx, err);
        return 0;
    }
    for (long id = 0; id < g.next; id++) {
        session_traj t;
        if (!g.present[id]) continue;
        if (groups_load(&g, id, &t, err) == 0) {
            session_traj_free(&t);
            continue;
        }
        snprintf(msg, sizeof msg, "%s%s", err, repair ? "; moved to .traj.bad" : "");
        text_escape_inplace(msg, sizeof msg);
        problem(cx, msg);
        if (repair && groups_set_aside(&g, id, err) == 0) fixed++;
        else if (repair) fprintf(stderr, "d3po session check: %s\n", err);
    }
    groups_close(&g);
    int nb = groups_check(s->dir, repair, problem, cx, err);
    if (nb < 0) {
        problem(cx, err);
    } else if (repair && nb) {
        fixed += nb;
        printf("moved %d line%s to %s/groups.jsonl.bad\n", nb, nb == 1 ? "" : "s", s->dir);
    }
    return fixed;
}

static int session_check_cmd(int argc, char **argv) {
    static const struct option opts[] = {{"repair", 0, 0, 'r'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int repair = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': repair = 1; break;
        case 'h': fputs(session_help, stdout); return 0;
        default: fputs(session_help, stderr); return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "d3po session check: expected one session directory\n%s", session_help);
        return EXIT_USAGE;
    }
    const char *dir = argv[optind];
    char err[D3_ERRLEN], msg[8800], path[4200], list[4096];
    check_ctx cx = {0};
    int fixed = 0;
    /* temp files first: opening for a repair removes them */
    int ntmp = session_clean_temp(dir, 0, list, sizeof list);
    for (char *l = list, *nl; ntmp && *l; l = nl + 1) {
        if (!(nl = strchr(l, '\n'))) break;
        *nl = 0;
        snprintf(msg, sizeof msg, "%s: temp file of an interrupted write (its writer is gone)%s", l,
                 repair ? "; removed" : "");
        text_escape_inplace(msg, sizeof msg);
        problem(&cx, msg);
    }
    if (repair) fixed += ntmp;
    d3_session s;
    if ((repair ? session_open : session_open_readonly)(dir, &s, err)) {
        char e2[D3_ERRLEN];
        fprintf(stderr, "d3po session check: %s\n", text_escape(e2, sizeof e2, err));
        return EXIT_FAIL;
    }
    /* LATEST and the checkpoints */
    {
        unsigned char *buf = NULL;
        size_t len;
        int r = -1, v = -1, n = 0;
        snprintf(path, sizeof path, "%s/LATEST", s.dir);
        if (fs_read_all(path, &buf, &len, err) ||
            sscanf((char *)buf, "round %d version %d\n%n", &r, &v, &n) != 2 || (size_t)n != len ||
            r != s.round) {
            snprintf(msg, sizeof msg, "%s: does not name a checkpoint that loads; the session uses "
                     "round %d%s", path, s.round, repair ? "; LATEST now points at it" : "");
            text_escape_inplace(msg, sizeof msg);
            problem(&cx, msg);
            if (repair) {
                char line[64];
                snprintf(line, sizeof line, "round %d version %d\n", s.round, s.version);
                const void *parts[1] = {line};
                size_t lens[1] = {strlen(line)};
                if (fs_write_atomic(path, parts, lens, 1, err)) fprintf(stderr, "d3po session check: %s\n", err);
                else fixed++;
            }
        }
        free(buf);
        /* sd: the adapters' layout from the model (its hash checked) */
        lora_set ad = {0};
        int sd = s.family == SESSION_FAMILY_SD, have_ad = 0;
        if (sd && !(have_ad = !session_sd_adapters(&s, 0, &ad, err))) {
            snprintf(msg, sizeof msg, "%s; the rounds' adapters are not checked against it", err);
            text_escape_inplace(msg, sizeof msg);
            problem(&cx, msg);
        }
        for (int round = 0; round <= SESSION_MAX_ROUND; round++) {
            session_round_path(&s, round, path, sizeof path);
            if (access(path, F_OK) || (sd && !have_ad)) continue;
            d3_model m;
            d3_state st;
            if (sd ? session_sd_read_adapters(&s, round, &ad, &st, err) == 0
                   : model_load(&m, path, &st, err) == 0) {
                if (!sd) model_free(&m);
                state_free(&st);
                continue;
            }
            snprintf(msg, sizeof msg, "%s%s", err, repair ? "; moved to .bad" : "");
            text_escape_inplace(msg, sizeof msg);
            problem(&cx, msg);
            char bad[4300];
            snprintf(bad, sizeof bad, "%s.bad", path);
            if (repair && round != s.round && !rename(path, bad)) fixed++;
        }
        if (have_ad) lora_free(&ad);
    }
    /* pairs */
    for (long id = 0; id < s.next_pair; id++) {
        if (id >= s.cap || !s.present[id]) continue;
        session_pair p;
        if (session_load_pair(&s, id, &p, err) == 0) {
            session_pair_free(&p);
            continue;
        }
        snprintf(msg, sizeof msg, "%s%s", err, repair ? "; moved to .traj.bad" : "");
        text_escape_inplace(msg, sizeof msg);
        problem(&cx, msg);
        if (repair) {
            if (session_set_aside_pair(&s, id, err)) fprintf(stderr, "d3po session check: %s\n", err);
            else fixed++;
        }
    }
    /* the journal (after the pairs: a label of a pair set aside is bad now) */
    int nb = session_check_journal(&s, repair, problem, &cx, err);
    if (nb < 0) fprintf(stderr, "d3po session check: %s\n", err);
    else if (repair && nb) {
        fixed += nb;
        printf("moved %d journal line%s to %s/labels.jsonl.bad\n", nb, nb == 1 ? "" : "s", s.dir);
    }
    fixed += check_groups(&s, &cx, repair);
    /* other warnings of the open (round label lists, prompts) */
    for (int i = 0; i < s.nwarn; i++)
        if (!strstr(s.warn[i], "labels.jsonl:") && !strstr(s.warn[i], "LATEST") &&
            !strstr(s.warn[i], "temp file"))
            problem(&cx, s.warn[i]);
    session_close(&s);
    if (!cx.n) {
        printf("%s: no problems\n", dir);
        return 0;
    }
    printf("%s: %d problem%s%s\n", dir, cx.n, cx.n == 1 ? "" : "s",
           repair ? (fixed >= cx.n ? ", all repaired" : ", some not repaired") : " (--repair sets them aside)");
    return repair && fixed >= cx.n ? 0 : EXIT_FAIL;
}

static int session_rollback_cmd(int argc, char **argv) {
    static const struct option opts[] = {{"to-round", 1, 0, 'r'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    long to = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (cli_int("session rollback", "--to-round", optarg, 0, SESSION_MAX_ROUND, &to))
                return EXIT_USAGE;
            break;
        case 'h': fputs(session_help, stdout); return 0;
        default: fputs(session_help, stderr); return EXIT_USAGE;
        }
    }
    if (argc - optind != 1 || to < 0) {
        fprintf(stderr, "d3po session rollback: expected DIR and --to-round N\n%s", session_help);
        return EXIT_USAGE;
    }
    char err[D3_ERRLEN], path[4200];
    d3_session s;
    if (session_open(argv[optind], &s, err)) {
        fprintf(stderr, "d3po session rollback: %s\n", err);
        return EXIT_FAIL;
    }
    int rc = 0;
    if (to >= s.round) {
        fprintf(stderr, "d3po session rollback: %s is at round %d; --to-round must be earlier\n",
                s.dir, s.round);
        rc = EXIT_USAGE;
    } else if (s.family == SESSION_FAMILY_SD) {
        int from = s.round;
        if (session_sd_copy_round(&s, (int)to, err)) {
            fprintf(stderr, "d3po session rollback: %s\n", err);
            rc = EXIT_FAIL;
        } else {
            printf("%s: round %d is round %ld's adapters (rolled back from round %d)\n", s.dir,
                   s.round, to, from);
        }
    } else {
        d3_model m;
        d3_state st;
        session_round_path(&s, (int)to, path, sizeof path);
        if (model_load(&m, path, &st, err)) {
            fprintf(stderr, "d3po session rollback: %s\n", err);
            rc = EXIT_FAIL;
        } else {
            char buf[32];
            snprintf(buf, sizeof buf, "%ld", to);
            model_set_meta(&m, "d3po.rollback_of", buf);
            int from = s.round;
            if (session_save_round(&s, &m, &st, s.round + 1, err)) {
                fprintf(stderr, "d3po session rollback: %s\n", err);
                rc = EXIT_FAIL;
            } else {
                printf("%s: round %d is round %ld's model (rolled back from round %d)\n", s.dir,
                       s.round, to, from);
            }
            state_free(&st);
            model_free(&m);
        }
    }
    session_close(&s);
    return rc;
}

int cmd_session(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(session_help, stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "info")) return session_info_cmd(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "check")) return session_check_cmd(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "rollback")) return session_rollback_cmd(argc - 1, argv + 1);
    if (argc < 2) fprintf(stderr, "d3po session: expected a subcommand\n%s", session_help);
    else fprintf(stderr, "d3po session: unknown subcommand '%s'\n%s", argv[1], session_help);
    return EXIT_USAGE;
}
