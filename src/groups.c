/* groups.c - groups of k images on disk (layout and contract in groups.h):
 * the group files, the fsync'd journal of marks with undo, the pairs a
 * group's marks make, and which marks a trained round used. */
#include "groups.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "image.h"

#define PATH_LEN 4200
#define GROUPS_MAX_ID 10000000L

static void warn(d3_groups *g, const char *msg) {
    if (g->nwarn < GROUPS_MAX_WARN) snprintf(g->warn[g->nwarn], D3_ERRLEN, "%s", msg);
    g->nwarn++;
}

static int reserve(d3_groups *g, long id) {
    if (id < g->cap) return 0;
    long nc = g->cap ? g->cap : 64;
    while (nc <= id) nc *= 2;
    unsigned char *p = realloc(g->present, (size_t)nc);
    if (p) g->present = p;
    char(*m)[GROUPS_MARKS_LEN] = realloc(g->marks, (size_t)nc * sizeof *m);
    if (m) g->marks = m;
    char(*t)[GROUPS_MARKS_LEN] = realloc(g->trained, (size_t)nc * sizeof *t);
    if (t) g->trained = t;
    if (!p || !m || !t) return -1;
    memset(g->present + g->cap, 0, (size_t)(nc - g->cap));
    memset(g->marks + g->cap, 0, (size_t)(nc - g->cap) * sizeof *m);
    memset(g->trained + g->cap, 0, (size_t)(nc - g->cap) * sizeof *t);
    g->cap = nc;
    return 0;
}

char *groups_path(const d3_groups *g, long id, int i, char *out, size_t n) {
    if (i < 0) snprintf(out, n, "%s/groups/%06ld.traj", g->dir, id);
    else snprintf(out, n, "%s/groups/%06ld-%d.png", g->dir, id, i);
    return out;
}

/* marks: "skip", or 3..8 of g, b, -; k > 0: exactly k of them. */
static int marks_valid(const char *m, int k) {
    if (!strcmp(m, "skip")) return 1;
    int n = (int)strlen(m);
    if (n < GROUPS_MIN_K || n > GROUPS_MAX_K || (k > 0 && n != k)) return 0;
    for (int i = 0; i < n; i++)
        if (m[i] != GROUP_GOOD && m[i] != GROUP_BAD && m[i] != GROUP_UNMARKED) return 0;
    return 1;
}

int groups_pairs(const char *marks, int pairs[GROUPS_MAX_PAIRS][2]) {
    if (!marks || !marks_valid(marks, 0) || !strcmp(marks, "skip")) return 0;
    int n = 0, k = (int)strlen(marks);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k && n < GROUPS_MAX_PAIRS; j++)
            if (marks[i] == GROUP_GOOD && marks[j] == GROUP_BAD) {
                pairs[n][0] = i;
                pairs[n][1] = j;
                n++;
            }
    return n;
}

static int npairs_of(const char *marks) {
    int p[GROUPS_MAX_PAIRS][2];
    return groups_pairs(marks, p);
}

/* ---- journal replay ---- */

/* room for one more decision on the stack */
static int stack_room(d3_groups *g) {
    if (g->nstack < g->stack_cap) return 0;
    long nc = g->stack_cap ? g->stack_cap * 2 : 64;
    groups_decision *n = realloc(g->stack, (size_t)nc * sizeof *n);
    if (!n) return -1;
    g->stack = n;
    g->stack_cap = nc;
    return 0;
}

static int push(d3_groups *g, long id, const char *marks) {
    if (stack_room(g)) return -1;
    groups_decision *d = &g->stack[g->nstack++];
    d->group = id;
    snprintf(d->marks, sizeof d->marks, "%s", marks);
    snprintf(d->prev, sizeof d->prev, "%s", g->marks[id]);
    snprintf(g->marks[id], GROUPS_MARKS_LEN, "%s", marks);
    return 0;
}

static long pop(d3_groups *g) {
    groups_decision *d = &g->stack[--g->nstack];
    snprintf(g->marks[d->group], GROUPS_MARKS_LEN, "%s", d->prev);
    g->nundone++;
    return d->group;
}

/* One journal line: 0 applied, -1 bad (why in err). apply = 0: check only. */
static int replay_line(d3_groups *g, const char *line, int apply, char *why) {
    json_error_t je;
    json_t *o = json_loads(line, 0, &je);
    int rc = -1;
    if (!o || !json_is_object(o)) {
        d3_errf(why, "not a JSON object");
        goto out;
    }
    json_t *jg = json_object_get(o, "group"), *jm = json_object_get(o, "marks"),
           *ju = json_object_get(o, "undo");
    if (!json_is_integer(jg) || json_integer_value(jg) < 0 ||
        json_integer_value(jg) >= GROUPS_MAX_ID) {
        d3_errf(why, "\"group\": expected an integer 0..%ld", GROUPS_MAX_ID - 1);
        goto out;
    }
    long id = (long)json_integer_value(jg);
    if (ju) {
        if (!json_is_true(ju) || jm) {
            d3_errf(why, "an undo record is {\"group\":N,\"undo\":true,...}");
            goto out;
        }
        if (!g->nstack) {
            d3_errf(why, "undo with nothing to undo");
            goto out;
        }
        if (g->stack[g->nstack - 1].group != id) {
            d3_errf(why, "undo of group %ld, but the newest decision is on group %ld", id,
                    g->stack[g->nstack - 1].group);
            goto out;
        }
        if (apply) pop(g);
        rc = 0;
        goto out;
    }
    if (!json_is_string(jm) || !marks_valid(json_string_value(jm), 0)) {
        d3_errf(why, "\"marks\": expected \"skip\" or %d..%d of g, b, -", GROUPS_MIN_K,
                GROUPS_MAX_K);
        goto out;
    }
    if (reserve(g, id)) {
        d3_errf(why, "out of memory");
        goto out;
    }
    if (!g->present[id]) {
        d3_errf(why, "group %ld has no file groups/%06ld.traj", id, id);
        goto out;
    }
    if (apply && push(g, id, json_string_value(jm))) {
        d3_errf(why, "out of memory");
        goto out;
    }
    rc = 0;
out:
    json_decref(o);
    return rc;
}

/* The journal's lines sorted for a repair: those that replay, and the rest. */
typedef struct {
    char *text[2]; /* 0: good, 1: bad */
    size_t len[2], cap[2];
    int oom;
} sorted_lines;

static void sort_line(sorted_lines *sl, int bad, const unsigned char *line, size_t n) {
    if (!sl || sl->oom) return;
    if (sl->len[bad] + n + 2 > sl->cap[bad]) {
        size_t nc = (sl->len[bad] + n + 2) * 2;
        char *t = realloc(sl->text[bad], nc);
        if (!t) { sl->oom = 1; return; }
        sl->text[bad] = t;
        sl->cap[bad] = nc;
    }
    memcpy(sl->text[bad] + sl->len[bad], line, n);
    sl->len[bad] += n;
    sl->text[bad][sl->len[bad]++] = '\n';
}

/* Replays (or only checks) groups.jsonl; each problem goes to report;
 * sl (may be NULL) gets the lines sorted for a repair. */
static int replay(d3_groups *g, int apply, void (*report)(void *, const char *), void *ctx,
                  sorted_lines *sl, char *err) {
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s/groups.jsonl", g->dir);
    unsigned char *buf;
    size_t len;
    if (access(path, F_OK)) return 0;
    if (fs_read_all(path, &buf, &len, err)) return -1;
    size_t off = 0;
    long lineno = 0;
    int bad = 0;
    while (off < len) {
        char *nl = memchr(buf + off, '\n', len - off);
        lineno++;
        char why[D3_ERRLEN], msg[D3_ERRLEN];
        if (!nl) { /* a torn tail: a crash mid-append */
            d3_errf(msg, "%s:%ld: torn last line (a crash while writing it); ignored", path, lineno);
            report(ctx, msg);
            if (apply) g->journal_torn = 1;
            sort_line(sl, 1, buf + off, len - off);
            bad++;
            break;
        }
        *nl = 0;
        if (replay_line(g, (char *)buf + off, apply, why)) {
            d3_errf(msg, "%s:%ld: %s; line skipped", path, lineno, why);
            report(ctx, msg);
            sort_line(sl, 1, buf + off, (size_t)(nl - (char *)buf) - off);
            bad++;
        } else {
            if (apply) g->nlines++;
            sort_line(sl, 0, buf + off, (size_t)(nl - (char *)buf) - off);
        }
        off = (size_t)(nl - (char *)buf) + 1;
        if (apply) g->journal_len = off;
    }
    free(buf);
    return bad;
}

static void warn_report(void *ctx, const char *msg) { warn(ctx, msg); }

/* rounds/NNNN.groups for every round up to `round`: the trained marks */
static void read_trained(d3_groups *g, int round) {
    for (int r = 1; r <= round; r++) {
        char path[PATH_LEN];
        snprintf(path, sizeof path, "%s/rounds/%04d.groups", g->dir, r);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        char line[256];
        int lineno = 0;
        while (fgets(line, sizeof line, f)) {
            lineno++;
            json_t *o = json_loads(line, 0, NULL);
            json_t *jg = json_object_get(o, "group"), *jm = json_object_get(o, "marks");
            long id = json_is_integer(jg) ? (long)json_integer_value(jg) : -1;
            if (id >= 0 && id < GROUPS_MAX_ID && json_is_string(jm) &&
                marks_valid(json_string_value(jm), 0) && !reserve(g, id)) {
                snprintf(g->trained[id], GROUPS_MARKS_LEN, "%s", json_string_value(jm));
            } else {
                char msg[D3_ERRLEN];
                d3_errf(msg, "%s:%d: expected {\"group\":N,\"marks\":\"gb-\"}; line skipped", path,
                        lineno);
                warn(g, msg);
            }
            json_decref(o);
        }
        fclose(f);
    }
}

static int scan(d3_groups *g, char *err) {
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s/groups", g->dir);
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT ? 0 : d3_errf(err, "%s: %s", path, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long id = strtol(e->d_name, &end, 10);
        if (end != e->d_name + 6 || strcmp(end, ".traj") || id < 0 || id >= GROUPS_MAX_ID) continue;
        if (reserve(g, id)) {
            closedir(d);
            return d3_errf(err, "%s: out of memory", path);
        }
        g->present[id] = 1;
        if (id >= g->next) g->next = id + 1;
    }
    closedir(d);
    return 0;
}

static int open_common(const char *dir, d3_groups *g, char *err) {
    memset(g, 0, sizeof *g);
    g->fd = -1;
    if (!(g->dir = strdup(dir))) return d3_errf(err, "out of memory");
    return reserve(g, 0) || scan(g, err) ? -1 : 0;
}

int groups_open(const char *dir, int round, int readonly, d3_groups *g, char *err) {
    if (open_common(dir, g, err)) {
        groups_close(g);
        return -1;
    }
    g->readonly = readonly;
    if (replay(g, 1, warn_report, g, NULL, err) < 0) {
        groups_close(g);
        return -1;
    }
    read_trained(g, round);
    return 0;
}

void groups_close(d3_groups *g) {
    if (g->fd >= 0) close(g->fd);
    free(g->dir);
    free(g->present);
    free(g->marks);
    free(g->trained);
    free(g->stack);
    memset(g, 0, sizeof *g);
    g->fd = -1;
}

int groups_check(const char *dir, int repair, void (*report)(void *ctx, const char *problem),
                 void *ctx, char *err) {
    d3_groups g;
    if (open_common(dir, &g, err)) {
        groups_close(&g);
        return -1;
    }
    sorted_lines sl = {0};
    /* replayed for real (undo records need the stack), reported once */
    int n = replay(&g, 1, report, ctx, repair ? &sl : NULL, err);
    groups_close(&g);
    if (n > 0 && repair) {
        char p[PATH_LEN], pb[PATH_LEN + 8];
        snprintf(p, sizeof p, "%s/groups.jsonl", dir);
        snprintf(pb, sizeof pb, "%s.bad", p);
        /* the bad lines first, kept (appended, fsync'd); then the journal
         * without them, atomically */
        int fd = sl.oom ? -1 : open(pb, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (sl.oom) n = d3_errf(err, "%s: out of memory", p);
        else if (fd < 0 || write(fd, sl.text[1], sl.len[1]) != (ssize_t)sl.len[1] || fsync(fd))
            n = d3_errf(err, "%s: %s", pb, strerror(errno));
        else {
            const void *parts[1] = {sl.text[0] ? sl.text[0] : ""};
            if (fs_write_atomic(p, parts, &sl.len[0], 1, err)) n = -1;
        }
        if (fd >= 0) close(fd);
    }
    free(sl.text[0]);
    free(sl.text[1]);
    return n;
}

int groups_set_aside(const d3_groups *g, long id, char *err) {
    char p[PATH_LEN], bad[PATH_LEN + 8];
    groups_path(g, id, -1, p, sizeof p);
    snprintf(bad, sizeof bad, "%s.bad", p);
    if (rename(p, bad)) return d3_errf(err, "%s: rename to .bad: %s", p, strerror(errno));
    return 0;
}

/* ---- writing ---- */

static int writable(const d3_groups *g, const char *what, char *err) {
    if (g->readonly) return d3_errf(err, "%s: %s: the session is open read-only", g->dir, what);
    return 0;
}

static int journal_append(d3_groups *g, const char *line, size_t len, char *err) {
    char p[PATH_LEN];
    snprintf(p, sizeof p, "%s/groups.jsonl", g->dir);
    if (g->fd < 0) {
        g->fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (g->fd < 0) return d3_errf(err, "%s: %s", p, strerror(errno));
    }
    if (fs_journal_append(g->fd, p, &g->journal_len, &g->journal_torn, line, len, err)) return -1;
    g->nlines++;
    return 0;
}

static int record(d3_groups *g, long id, const char *marks, int version, char *err) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[200];
    int n = marks ? snprintf(line, sizeof line,
                             "{\"group\":%ld,\"marks\":\"%s\",\"time\":%lld.%03ld,\"version\":%d}\n",
                             id, marks, (long long)ts.tv_sec, ts.tv_nsec / 1000000, version)
                  : snprintf(line, sizeof line, "{\"group\":%ld,\"undo\":true,\"time\":%lld.%03ld}\n",
                             id, (long long)ts.tv_sec, ts.tv_nsec / 1000000);
    return journal_append(g, line, (size_t)n, err);
}

int groups_decide(d3_groups *g, long id, const char *marks, int k, int version, char *err) {
    if (writable(g, "decide", err)) return -1;
    if (id < 0 || id >= g->cap || !g->present[id])
        return d3_errf(err, "%s: no group %ld in the session", g->dir, id);
    if (!marks || !marks_valid(marks, k))
        return d3_errf(err, "%s: group %ld: marks '%.20s': expected \"skip\" or %d of g, b, -", g->dir,
                       id, marks ? marks : "", k > 0 ? k : GROUPS_MAX_K);
    if (version < 0) return d3_errf(err, "%s: group %ld: negative model version", g->dir, id);
    /* room on the stack first, so a journaled line is always applied */
    if (stack_room(g)) return d3_errf(err, "%s: out of memory", g->dir);
    if (record(g, id, marks, version, err)) return -1;
    push(g, id, marks);
    return 0;
}

int groups_undo(d3_groups *g, long *id, char *err) {
    if (writable(g, "undo", err)) return -1;
    if (!g->nstack) return d3_errf(err, "%s/groups.jsonl: no group decision to undo", g->dir);
    long gid = g->stack[g->nstack - 1].group;
    if (record(g, gid, NULL, -1, err)) return -1;
    pop(g);
    if (id) *id = gid;
    return 0;
}

int groups_add(d3_groups *g, const session_traj *t, const uint8_t *const *rgb, int img_h,
               int img_w, long *id, char *err) {
    if (writable(g, "add a group", err)) return -1;
    if (t->N < GROUPS_MIN_K || t->N > GROUPS_MAX_K)
        return d3_errf(err, "%s: a group of %d images, expected %d..%d", g->dir, t->N, GROUPS_MIN_K,
                       GROUPS_MAX_K);
    long nid = g->next;
    if (nid >= GROUPS_MAX_ID) return d3_errf(err, "%s: group limit reached", g->dir);
    if (reserve(g, nid)) return d3_errf(err, "%s: out of memory", g->dir);
    char p[PATH_LEN];
    snprintf(p, sizeof p, "%s/groups", g->dir);
    if (fs_mkdirs(p, err)) return -1;
    for (int i = 0; rgb && i < t->N; i++)
        if (png_write_rgb(groups_path(g, nid, i, p, sizeof p), rgb[i], img_w, img_h, err)) return -1;
    if (session_write_traj(groups_path(g, nid, -1, p, sizeof p), t, err)) return -1;
    g->present[nid] = 1;
    g->marks[nid][0] = 0;
    g->next = nid + 1;
    *id = nid;
    return 0;
}

int groups_load(const d3_groups *g, long id, session_traj *t, char *err) {
    char p[PATH_LEN];
    if (id < 0 || id >= g->cap || !g->present[id])
        return d3_errf(err, "%s: no group %ld in the session", g->dir, id);
    if (session_read_traj_n(groups_path(g, id, -1, p, sizeof p), t, err)) return -1;
    if (t->N < GROUPS_MIN_K || t->N > GROUPS_MAX_K) {
        int n = t->N;
        session_traj_free(t);
        return d3_errf(err, "%s: %d trajectories, a group holds %d..%d", p, n, GROUPS_MIN_K,
                       GROUPS_MAX_K);
    }
    return 0;
}

/* ---- queries ---- */

const char *groups_marks(const d3_groups *g, long id) {
    return id >= 0 && id < g->cap ? g->marks[id] : "";
}

long groups_next_undecided(const d3_groups *g, long from) {
    for (long i = from < 0 ? 0 : from; i < g->cap; i++)
        if (g->present[i] && !g->marks[i][0]) return i;
    return -1;
}

int groups_pending(const d3_groups *g, long id) {
    if (id < 0 || id >= g->cap || !g->present[id] || !npairs_of(g->marks[id])) return 0;
    return strcmp(g->marks[id], g->trained[id]) != 0;
}

int groups_trained(const d3_groups *g, long id) {
    return id >= 0 && id < g->cap && g->marks[id][0] && !strcmp(g->marks[id], g->trained[id]);
}

int groups_write_round(d3_groups *g, int round, const long *ids, int n, char *err) {
    if (writable(g, "write a round's groups", err)) return -1;
    size_t cap = (size_t)n * 48 + 1, len = 0;
    char *text = malloc(cap), p[PATH_LEN];
    if (!text) return d3_errf(err, "%s: out of memory", g->dir);
    text[0] = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(text + len, cap - len, "{\"group\":%ld,\"marks\":\"%s\"}\n", ids[i],
                                groups_marks(g, ids[i]));
    snprintf(p, sizeof p, "%s/rounds", g->dir);
    if (fs_mkdirs(p, err)) {
        free(text);
        return -1;
    }
    snprintf(p, sizeof p, "%s/rounds/%04d.groups", g->dir, round);
    const void *parts[1] = {text};
    int rc = fs_write_atomic(p, parts, &len, 1, err);
    free(text);
    return rc;
}

void groups_mark_trained(d3_groups *g, const long *ids, const char (*marks)[GROUPS_MARKS_LEN],
                         int n) {
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < g->cap)
            snprintf(g->trained[ids[i]], GROUPS_MARKS_LEN, "%s", marks[i]);
}

void groups_info(const d3_groups *g, groups_stats *st) {
    memset(st, 0, sizeof *st);
    for (long id = 0; id < g->cap; id++) {
        if (!g->present[id]) continue;
        st->groups++;
        const char *m = g->marks[id];
        if (!m[0]) { st->undecided++; continue; }
        if (!strcmp(m, "skip")) { st->skipped++; continue; }
        st->decided++;
        for (const char *c = m; *c; c++) {
            st->good += *c == GROUP_GOOD;
            st->bad += *c == GROUP_BAD;
            st->unmarked += *c == GROUP_UNMARKED;
        }
        int np = npairs_of(m);
        st->pairs += np;
        if (groups_pending(g, id)) st->pairs_pending += np;
        else st->pairs_trained += np;
    }
    st->undone = g->nundone;
    st->journal_lines = g->nlines;
}
