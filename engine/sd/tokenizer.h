/* tokenizer.h - CLIP's byte-level BPE tokenizer, as transformers'
 * CLIPTokenizer (the slow one, which diffusers' StableDiffusionPipeline
 * loads) computes it when ftfy is not installed, read from a pipeline's
 * tokenizer/ folder: vocab.json, merges.txt, and tokenizer_config.json /
 * special_tokens_map.json for the special tokens, the pad token and
 * model_max_length.
 *
 * What encode does to a prompt, in transformers' order:
 *   1. UTF-8 -> code points (each invalid byte sequence becomes U+FFFD,
 *      which step 2 then drops: a defined result for input Python could
 *      not even hold);
 *   2. split out the added tokens typed literally (<|startoftext|>,
 *      <|endoftext|>, and SD 2's pad token "!"), leftmost-longest; each
 *      maps straight to its id;
 *   3. on every other piece, BERT's BasicTokenizer without accent
 *      stripping or punctuation splitting: drop NUL, U+FFFD and control/
 *      format/unassigned characters, whitespace -> space, spaces around
 *      CJK ideographs, NFC, split on whitespace, Python's str.lower() per
 *      word (U+0130 -> "i\u0307", final sigma), join with single spaces;
 *   4. CLIP's pattern (case-insensitive, as the regex module matches it):
 *      <|startoftext|> | <|endoftext|> | 's 't 're 've 'm 'll 'd |
 *      \p{L}+ | one \p{N} | [^\s\p{L}\p{N}]+;
 *   5. each piece's UTF-8 bytes through GPT-2's byte -> character table,
 *      "</w>" on the last symbol, merges by rank, vocabulary ids (unknown
 *      -> the unk token's id);
 *   6. <start> ids[: max_len - 2] <end>, padded with the pad token to
 *      max_len (model_max_length, 77 for every SD).
 *
 * The Unicode data is Debian's unicode-data 15.0 (unicode.h); transformers
 * on Python 3.11 sees Unicode 14.0, so the characters new in 15.0 (CJK
 * extension H, Kawi, ...) are dropped there as unassigned and kept here:
 * the one known difference. 2000 random prompts over every character
 * assigned in 14.0 gave identical ids.
 *
 *   char err[D3_ERRLEN];
 *   sd_tokenizer *tk = sd_tokenizer_load("pipe/tokenizer", err);
 *   int32_t ids[SD_TOKENS_MAX];
 *   int n = sd_tokenizer_encode(tk, "a photo of a cat", ids, err);
 *   ... ids[0..sd_tokenizer_max_length(tk)) ...
 *   sd_tokenizer_free(tk);
 */
#ifndef D3PO_SD_TOKENIZER_H
#define D3PO_SD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Largest model_max_length accepted (the ids array callers provide). */
#define SD_TOKENS_MAX 1024

typedef struct sd_tokenizer sd_tokenizer;

/* Reads dir/vocab.json and dir/merges.txt (required) and
 * dir/tokenizer_config.json, dir/special_tokens_map.json (optional; the
 * defaults are CLIPTokenizer's: <|startoftext|>, <|endoftext|> for end,
 * unk and pad, model_max_length 77). NULL + a one-line error naming the
 * file and the key or line on failure. */
sd_tokenizer *sd_tokenizer_load(const char *dir, char *err);
void sd_tokenizer_free(sd_tokenizer *tk);

/* Encoding only reads tk: one loaded tokenizer serves every thread.
 * Writes exactly sd_tokenizer_max_length(tk) ids (start, tokens, end,
 * pads) and returns how many are not padding (2 for ""), or -1 with err
 * set when memory runs out. text is any byte string (NUL-terminated). */
int sd_tokenizer_encode(const sd_tokenizer *tk, const char *text, int32_t *ids, char *err);
/* Same on n bytes (may hold NULs, which are dropped like Python drops U+0000). */
int sd_tokenizer_encode_n(const sd_tokenizer *tk, const char *text, size_t n, int32_t *ids, char *err);

/* 1 when encode drops tokens of text (more than max_length - 2 of them:
 * diffusers warns then), 0 when it keeps all, -1 with err set when memory
 * runs out. */
int sd_tokenizer_truncates(const sd_tokenizer *tk, const char *text, char *err);

int sd_tokenizer_max_length(const sd_tokenizer *tk);
int sd_tokenizer_pad_id(const sd_tokenizer *tk);
int sd_tokenizer_bos_id(const sd_tokenizer *tk);
int sd_tokenizer_eos_id(const sd_tokenizer *tk);
/* Number of entries in vocab.json. */
int sd_tokenizer_vocab_size(const sd_tokenizer *tk);

#endif
