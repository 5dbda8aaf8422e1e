/* cmd_sd.h - the Stable Diffusion-family halves of d3po's model commands
 * (src/cmd_sd.c), called by cmd_model.c when sd_pipeline_probe says the
 * model path is a diffusers folder or a single-file checkpoint. Each
 * returns the process exit status (0, 1 usage, 2 other errors). */
#ifndef D3PO_CMD_SD_H
#define D3PO_CMD_SD_H

/* `d3po info DIR_OR_FILE [--tokenizer DIR]`. */
int sd_info(const char *path, const char *tokenizer);

#endif
