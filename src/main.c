/* main.c - the d3po command line: subcommand dispatch, --help and
 * --version. Exit status: 0 success, 1 usage error, 2 any other error;
 * errors go to stderr. Each subcommand lives in src/cmd_*.c. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cmd_sd.h"

#ifndef D3PO_VERSION
#define D3PO_VERSION "dev"
#endif

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cmds[] = {
    {"label", cmd_label, "the labeling screen (also: d3po with no command)"},
    {"init", cmd_init, "write a randomly initialised model"},
    {"sample", cmd_sample, "sample images from a model with DDIM"},
    {"info", cmd_info, "describe a model file, or the compute devices (--devices)"},
    {"dataset", cmd_dataset, "render an image data set (emoji) for pretraining"},
    {"pretrain", cmd_pretrain, "train a base model on an image folder"},
    {"session", cmd_session, "describe a labeling session directory"},
    {"auto", cmd_auto, "headless rounds judged by an oracle or a labeler program"},
    {"train", cmd_train, "run a D3PO round over a session's labels"},
    {"eval", cmd_eval, "blind A/B test of a session's model against its base"},
    {"export", cmd_export, "export a session's labels (Pick-a-Pic JSONL, scores)"},
    {"classifier", cmd_classifier, "train the emoji classifier that eval-model scores with"},
    {"eval-model", cmd_eval_model, "sample quality: classifier accuracy and Frechet distance"},
    {"lora", cmd_lora, "write a LoRA file for an SD model (new adapters, or another naming)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: d3po [label] [options]   the labeling screen\n"
               "       d3po <command> [options]\n"
               "       d3po --version | --help\n\ncommands:\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-10s %s\n", cmds[i].name, cmds[i].summary);
    fprintf(f, "\n'd3po <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) return cmd_label(argc, argv); /* the labeling screen */
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("d3po %s\n", D3PO_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].run(argc - 1, argv + 1);
    fprintf(stderr, "d3po: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 1;
}
