/* cli.h - subcommands of the d3po program and shared option parsing
 * helpers. Each cmd_* returns the process exit status (0 ok, 1 usage,
 * 2 other error). */
#ifndef D3PO_CLI_H
#define D3PO_CLI_H
#include <stdint.h>

#define EXIT_USAGE 1
#define EXIT_FAIL 2

int cmd_init(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
int cmd_dataset(int argc, char **argv);
int cmd_session(int argc, char **argv);
int cmd_label(int argc, char **argv);
int cmd_auto(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_export(int argc, char **argv);


/* Strict number parsing for option values; print "d3po CMD: --opt: ..." and
 * return -1 on a bad value. */
int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int cli_u64(const char *cmd, const char *opt, const char *s, uint64_t *out);
int cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);
#endif
