/* imgfolder.c - loading an image-folder data set (see imgfolder.h). */
#include "imgfolder.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fsutil.h"
#include "image.h"

static int cmpstr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has_ext(const char *n) {
    const char *d = strrchr(n, '.');
    if (!d) return 0;
    return !strcasecmp(d, ".png") || !strcasecmp(d, ".jpg") || !strcasecmp(d, ".jpeg");
}

/* names of entries in dir: subdirectories (want_dirs) or image files. */
static int list_dir(const char *dir, int want_dirs, char ***out, int *n, char *err) {
    DIR *d = opendir(dir);
    if (!d) return d3_errf(err, "%s: cannot open folder: %m", dir);
    int cap = 64, cnt = 0;
    char **v = malloc(cap * sizeof *v);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st)) continue;
        if (want_dirs ? !S_ISDIR(st.st_mode) : !(S_ISREG(st.st_mode) && has_ext(e->d_name))) continue;
        if (cnt == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[cnt++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(v, cnt, sizeof *v, cmpstr);
    *out = v;
    *n = cnt;
    return 0;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* classes.tsv: fills dirs/names in its order; 0 if absent, -1 on error. */
static int read_tsv(const char *dir, char ***dirs, char ***names, int *n, char *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/classes.tsv", dir);
    unsigned char *buf;
    size_t len;
    struct stat st;
    if (stat(path, &st)) return 0;
    if (fs_read_all(path, &buf, &len, err)) return -1;
    int cap = 64, cnt = 0, line = 0;
    char **dv = malloc(cap * sizeof *dv), **nv = malloc(cap * sizeof *nv);
    char *save = NULL;
    for (char *l = strtok_r((char *)buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        line++;
        if (line == 1 && !strncmp(l, "id\t", 3)) continue; /* header */
        char *f[4] = {0};
        int nf = 0;
        for (char *p = l; nf < 4; nf++) {
            f[nf] = p;
            char *t = strchr(p, '\t');
            if (!t) { nf++; break; }
            *t = 0;
            p = t + 1;
        }
        if (nf < 3 || !f[1][0] || !f[2][0] || strchr(f[1], '/')) {
            free(buf); free_list(dv, cnt); free_list(nv, cnt);
            return d3_errf(err, "%s:%d: expected id<TAB>folder<TAB>prompt<TAB>count", path, line);
        }
        if (cnt == cap) { cap *= 2; dv = realloc(dv, cap * sizeof *dv); nv = realloc(nv, cap * sizeof *nv); }
        dv[cnt] = strdup(f[1]);
        nv[cnt] = strdup(f[2]);
        cnt++;
    }
    free(buf);
    *dirs = dv; *names = nv; *n = cnt;
    return cnt ? 1 : (d3_errf(err, "%s: no classes listed", path), -1);
}

int imgfolder_load(imgfolder *d, const char *dir, int size, int verbose, char *err) {
    memset(d, 0, sizeof *d);
    d->size = size;
    char **dirs = NULL, **names = NULL;
    int nd = 0;
    int r = read_tsv(dir, &dirs, &names, &nd, err);
    if (r < 0) return -1;
    if (r == 0) {
        if (list_dir(dir, 1, &dirs, &nd, err)) return -1;
        if (!nd) { free(dirs); return d3_errf(err, "%s: no class folders (expected DIR/<class>/*.png|jpg)", dir); }
        names = malloc(nd * sizeof *names);
        for (int i = 0; i < nd; i++) names[i] = strdup(dirs[i]);
    }
    d->nclasses = nd;
    d->class_dirs = dirs;
    d->class_names = names;
    size_t D = 3 * (size_t)size * size;
    int cap = 1024;
    d->x = malloc(cap * D * sizeof(float));
    d->cls = malloc(cap * sizeof(int));
    for (int c = 0; c < nd; c++) {
        char cdir[4096];
        snprintf(cdir, sizeof cdir, "%s/%s", dir, dirs[c]);
        char **files = NULL;
        int nf = 0;
        if (list_dir(cdir, 0, &files, &nf, err)) { imgfolder_free(d); return -1; }
        for (int i = 0; i < nf; i++) {
            char path[8192], e2[D3_ERRLEN];
            snprintf(path, sizeof path, "%s/%s", cdir, files[i]);
            uint8_t *rgb;
            int W, H;
            if (image_read_rgb(path, &rgb, &W, &H, e2)) {
                fprintf(stderr, "d3po: skipping %s\n", e2);
                d->skipped++;
                continue;
            }
            if (d->n == cap) {
                cap *= 2;
                d->x = realloc(d->x, cap * D * sizeof(float));
                d->cls = realloc(d->cls, cap * sizeof(int));
            }
            image_to_tensor(d->x + (size_t)d->n * D, rgb, W, H, size);
            d->cls[d->n++] = c;
            free(rgb);
        }
        if (verbose) fprintf(stderr, "d3po: class %d '%s': %d images\n", c, names[c], nf);
        free_list(files, nf);
    }
    if (!d->n) {
        imgfolder_free(d);
        return d3_errf(err, "%s: no readable images in %d class folders", dir, nd);
    }
    return 0;
}

void imgfolder_free(imgfolder *d) {
    free_list(d->class_names, d->nclasses);
    free_list(d->class_dirs, d->nclasses);
    free(d->x);
    free(d->cls);
    memset(d, 0, sizeof *d);
}
