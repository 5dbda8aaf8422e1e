/* term.h - what the terminal can draw, found out once at start-up.
 *
 * d3po shows images either as sixel (DCS ... ST, see sixel.h) or as Unicode
 * half blocks (see blocks.h). This module asks the terminal in one burst of
 * queries ending with DA1, parses the replies byte by byte (they may be split
 * across reads, interleaved with keys the user typed, or never come at all),
 * adds what the environment says (tmux and its version, $TERM, $COLORTERM,
 * TIOCGWINSZ) and picks a drawing mode. Nothing here uses curses: run
 * term_detect() before initscr() so no reply leaks into curses' key input,
 * then push term_caps.leftover back as keys (ungetch) if the UI wants them.
 *
 *   term_caps caps;
 *   term_detect(STDIN_FILENO, STDOUT_FILENO, TERM_TIMEOUT_MS, &caps);
 *   term_mode mode = term_choose_mode(&caps, cfg_graphics);   // "auto" etc.
 *   if (mode == TERM_MODE_SIXEL && caps.tmux_passthrough) ... sixel_wrap_tmux
 */
#ifndef D3PO_TERM_H
#define D3PO_TERM_H
#include <stddef.h>

/* About 1 s: long enough for a reply to cross a slow SSH link, short enough
 * that a terminal which never answers delays start-up only a little. */
#define TERM_TIMEOUT_MS 1000
/* Cell size used when neither TIOCGWINSZ nor ESC [ 16 t tells us. */
#define TERM_DEFAULT_CELL_W 10
#define TERM_DEFAULT_CELL_H 20
/* Typed bytes kept from the detection window; more are dropped. */
#define TERM_LEFTOVER_MAX 64

typedef enum {
    TERM_MODE_SIXEL,
    TERM_MODE_BLOCKS_TRUECOLOR, /* half blocks, ESC [ 38;2;r;g;b m */
    TERM_MODE_BLOCKS_256,       /* half blocks, xterm 256-colour palette */
} term_mode;

typedef struct {
    /* From the replies (term_parse_replies). 0 means "not reported". */
    int da1_complete;    /* the DA1 reply arrived whole */
    int da1_class;       /* first DA1 parameter: 62..65 for VT220..VT525 */
    int sixel;           /* DA1 listed attribute 4 */
    int color_registers; /* XTSMGRAPHICS ESC [ ? 1 ; 0 ; N S */
    int reply_cell_w, reply_cell_h; /* ESC [ 6 ; H ; W t */
    /* Typed keys that arrived between the replies, in order, to be handed
     * to the key input. Reply bytes never appear here. */
    unsigned char leftover[TERM_LEFTOVER_MAX];
    size_t nleftover;

    /* From TIOCGWINSZ (term_detect); 0 when unknown. */
    int win_cols, win_rows, win_xpix, win_ypix;
    /* Resolved by term_resolve_cell: TIOCGWINSZ, else reply, else default. */
    int cell_w, cell_h;

    /* From the environment (term_apply_env). */
    int tmux;                   /* $TMUX is set */
    int tmux_major, tmux_minor; /* 0.0 when unknown */
    int tmux_passthrough;       /* tmux older than 3.4: wrap sixel */
    int truecolor;              /* $COLORTERM truecolor/24bit or a -direct $TERM */
    int term_sixel_hint;        /* $TERM names a terminal known to have sixel */
    int term_no_sixel_hint;     /* $TERM names one known not to (kitty, ...) */
} term_caps;

/* Writes the query burst into buf (at least 32 bytes) and returns its length:
 * XTSMGRAPHICS colour registers, cell size in pixels, and DA1 LAST. Every
 * terminal answers DA1 and answers in order, so once its reply is in, no
 * other reply is still on the way. */
size_t term_query_build(char *buf);

/* Parses everything read so far from the terminal after the burst. bytes is
 * the whole accumulated input, not just the latest read: call again with the
 * grown buffer after each read (the parse is idempotent). Sets the reply
 * fields of out that it finds (leaves the others alone) and rebuilds
 * out->leftover from scratch. Tolerates garbage, replies split anywhere,
 * and typed keys in between. Recognised replies and other terminal reports
 * (CSI with a '?' or '>' marker, CSI ... t, DCS/OSC/APC strings) are dropped;
 * other bytes, including key sequences like ESC [ A, go to leftover. A
 * sequence cut off at the end is held back while DA1 is still missing (more
 * of it may come) and handed to leftover once DA1 is in (replies come in
 * order, so it is a typed key such as a lone Escape).
 * Returns 1 when the DA1 reply is complete, else 0. */
int term_parse_replies(const char *bytes, size_t n, term_caps *out);

/* Fills out with the environment's view: tmux (from $TMUX, its version from
 * tmux_version, a `tmux -V` or $TERM_PROGRAM_VERSION string such as
 * "tmux 3.3a", "3.4" or "next-3.5"; NULL or unparseable means a current tmux),
 * truecolor from $COLORTERM, hints from $TERM. Any argument may be NULL. Pure:
 * term_detect() passes getenv() values. */
void term_apply_env(term_caps *out, const char *term, const char *colorterm, const char *tmux,
                    const char *tmux_version);

/* Parses a tmux version string ("tmux 3.3a", "next-3.5"): 0 and major.minor,
 * or -1 when no number is in it ("tmux master"). */
int term_parse_tmux_version(const char *s, int *major, int *minor);

/* Sets out->cell_w/cell_h: the TIOCGWINSZ pixel size divided by the cell
 * count when plausible (4..64 x 8..128 pixels per cell), else the ESC[16t
 * reply when plausible, else 10x20. */
void term_resolve_cell(term_caps *out);

/* The whole detection. Zeroes out, fills the environment part, writes the
 * burst to fd_out, reads fd_in with poll() until the DA1 reply is complete or
 * timeout_ms passes (a terminal that never answers costs timeout_ms), reads
 * TIOCGWINSZ from fd_out, resolves the cell size. When fd_in is a tty it is
 * put in raw mode (no echo, no line buffering) for the duration and restored
 * before returning, also on failure. Returns 0 when the terminal answered
 * DA1, -1 otherwise (timeout, write or read error: out then describes a
 * terminal without sixel, which is still usable). */
int term_detect(int fd_in, int fd_out, int timeout_ms, term_caps *out);

/* Checks a --graphics / config value: 0 for "auto", "sixel", "blocks" (or
 * NULL, meaning auto), else -1 with err naming the value and the choices. */
int term_override_check(const char *override, char *err);

/* Chooses the drawing mode. override "sixel" forces sixel (the caller still
 * wraps for old tmux when caps->tmux_passthrough), "blocks" forces half
 * blocks, NULL / "auto" (and anything term_override_check rejects) detects:
 * sixel when DA1 listed it, or when DA1 never came and $TERM names a sixel
 * terminal (mlterm, foot, ...); else half blocks in truecolor when
 * caps->truecolor, else in 256 colours. A DA1 reply without 4 wins over
 * $TERM: a terminal knows itself better than its name does. */
term_mode term_choose_mode(const term_caps *caps, const char *override);

/* "sixel", "blocks-truecolor", "blocks-256". */
const char *term_mode_name(term_mode mode);
#endif
