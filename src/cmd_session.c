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

#include "cli.h"
#include "session.h"

static const char session_help[] =
    "usage: d3po session info DIR [--json]\n"
    "       d3po session rollback DIR --to-round N\n"
    "\n"
    "Describes the labeling session in DIR: pairs sampled, labels by choice\n"
    "(A, B, tie, skip, and decisions undone), pairs labeled and still queued,\n"
    "rounds trained, the model version in use, the base model's architecture\n"
    "and the settings the session was started with. Problems the session\n"
    "recovered from (a torn last journal line, a checkpoint that does not\n"
    "load) are printed as warnings on stderr.\n"
    "\n"
    "  --json   print one JSON object instead of text\n"
    "\n"
    "rollback makes round N's model the session's model again: it is saved as a\n"
    "new round (current + 1) with its weights and optimizer state, so versions\n"
    "keep rising and no checkpoint or label is rewritten; labels and pairs\n"
    "stay as they are.\n";

static void print_text(const d3_session *s, const session_stats *in) {
    char arch[256];
    unet_arch_format(&s->arch, arch, sizeof arch);
    printf("session:      %s\n", s->dir);
    printf("pairs:        %ld sampled, %ld labeled, %ld unlabeled (queued)\n", in->pairs,
           in->labeled, in->unlabeled);
    printf("labels:       A %ld, B %ld, tie %ld, skip %ld, undone %ld (%ld journal records)\n",
           in->by_choice[SESSION_A], in->by_choice[SESSION_B], in->by_choice[SESSION_TIE],
           in->by_choice[SESSION_SKIP], in->undone, in->journal_lines);
    printf("rounds:       %d trained\n", in->round);
    printf("model:        version %d (rounds/%04d.safetensors)\n", in->version, in->round);
    printf("base model:   %s, %d classes\n", arch, s->nclasses);
    json_t *o = json_loads(s->settings, 0, NULL);
    const char *key;
    json_t *v;
    printf("settings:\n");
    json_object_foreach(o, key, v) {
        if (json_is_string(v)) {
            printf("  %-12s %s\n", key, json_string_value(v));
        } else {
            char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII |
                                        JSON_REAL_PRECISION(15));
            printf("  %-12s %s\n", key, t ? t : "?");
            free(t);
        }
    }
    json_decref(o);
}

static int print_json(const d3_session *s, const session_stats *in) {
    char arch[256];
    unet_arch_format(&s->arch, arch, sizeof arch);
    json_t *warn = json_array();
    for (int i = 0; i < s->nwarn; i++) json_array_append_new(warn, json_string(s->warn[i]));
    json_t *o = json_pack(
        "{s:s, s:{s:I, s:I, s:I}, s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:i, s:i, s:s, s:i, s:o, s:o}",
        "session", s->dir,
        "pairs", "sampled", (json_int_t)in->pairs, "labeled", (json_int_t)in->labeled,
        "unlabeled", (json_int_t)in->unlabeled,
        "labels", "A", (json_int_t)in->by_choice[SESSION_A], "B",
        (json_int_t)in->by_choice[SESSION_B], "tie", (json_int_t)in->by_choice[SESSION_TIE],
        "skip", (json_int_t)in->by_choice[SESSION_SKIP], "undone", (json_int_t)in->undone,
        "journal_records", (json_int_t)in->journal_lines,
        "rounds", in->round, "version", in->version, "arch", arch, "classes", s->nclasses,
        "settings", json_loads(s->settings, 0, NULL), "warnings", warn);
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
    session_stats in;
    session_info(&s, &in);
    int rc = 0;
    if (json) rc = print_json(&s, &in);
    else print_text(&s, &in);
    session_close(&s);
    return rc;
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
    if (argc >= 2 && !strcmp(argv[1], "rollback")) return session_rollback_cmd(argc - 1, argv + 1);
    if (argc < 2) fprintf(stderr, "d3po session: expected a subcommand\n%s", session_help);
    else fprintf(stderr, "d3po session: unknown subcommand '%s'\n%s", argv[1], session_help);
    return EXIT_USAGE;
}
