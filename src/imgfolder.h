/* imgfolder.h - an image-folder data set (DIR/<class>/<images>.png or .jpg) loaded into
 * memory as model tensors. Classes are the sub-folders in name order; when
 * DIR/classes.tsv exists (written by `d3po dataset`) its rows give the
 * class order and human-readable prompts:
 *   id<TAB>folder<TAB>prompt<TAB>count   (a header line first)
 * Unreadable images are reported on stderr by path and skipped. */
#ifndef D3PO_IMGFOLDER_H
#define D3PO_IMGFOLDER_H
#include <stddef.h>
#include "err.h"

typedef struct {
    int nclasses;
    char **class_names; /* prompts */
    char **class_dirs;
    int n;              /* images */
    int size;           /* S: images are [3,S,S] */
    float *x;           /* [n][3*S*S] in [-1,1] */
    int *cls;           /* [n] */
    int skipped;
} imgfolder;

/* Loads every image resized to size x size. Returns 0, or -1 with err when
 * the folder is missing, unreadable, has no class folders or no usable
 * image. */
int imgfolder_load(imgfolder *d, const char *dir, int size, int verbose, char *err);
void imgfolder_free(imgfolder *d);
#endif
