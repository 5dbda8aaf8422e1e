/* text.h - making text from files, models, prompts and settings safe to
 * print: control characters become visible escapes, so nothing read from
 * outside reaches a terminal raw (an ESC in a class name cannot move the
 * cursor or retitle the window). UTF-8 is kept as it is. */
#ifndef D3PO_TEXT_H
#define D3PO_TEXT_H
#include <stddef.h>

/* Copies src into dst (n bytes, always NUL-terminated), writing each byte
 * below 0x20 and 0x7f as \xNN (\n, \t, \r as \n, \t, \r) and a backslash as
 * itself. Truncates at a whole escape. Returns dst. */
char *text_escape(char *dst, size_t n, const char *src);

/* Escapes the message s in place (at most n bytes with the NUL). */
void text_escape_inplace(char *s, size_t n);
#endif
