/* test_config.c - the configuration layer (src/config.h): built-in
 * defaults, the shipped config/d3po.conf (must equal the defaults, key for
 * key), the lookup order (--config, $XDG_CONFIG_HOME, $HOME/.config,
 * defaults), the "paper" preset, key remapping, the engine keys (device,
 * tf32), config_dump round trips,
 * and one case per error class, each checked for a message that names
 * file:line, the key and what was expected. Run from the repository root
 * (tests/run.sh does); files are written under a mkdtemp directory. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "t.h"

static char tmp[256];

/* Writes text to tmp/name (creating parent directories) and returns the
 * path (static buffer rotation: up to 4 live paths). */
static const char *put(const char *name, const char *text) {
    static char paths[4][512];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, 512, "%s/%s", tmp, name);
    for (char *s = p + strlen(tmp) + 1; (s = strchr(s, '/')); s++) {
        *s = 0;
        mkdir(p, 0700);
        *s = '/';
    }
    FILE *f = fopen(p, "w");
    if (!f) {
        perror(p);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
    return p;
}

/* Two configs equal in every setting (source aside). */
static int same_settings(const d3_config *a, const d3_config *b) {
    d3_config x = *a;
    memcpy(x.source, b->source, sizeof x.source);
    return memcmp(&x, b, sizeof x) == 0;
}

/* Loads text as a file and expects failure with every one of the given
 * substrings in the message ("@" stands for the file's path). */
static void expect_error(const char *text, const char *const *want) {
    const char *p = put("bad.conf", text);
    d3_config c, def;
    char err[D3_ERRLEN] = "";
    int rc = config_load(&c, p, err);
    CHECK(rc == -1, "loading %s should fail:\n%s", p, text);
    for (int i = 0; want[i]; i++) {
        char w[700];
        if (!strncmp(want[i], "@", 1))
            snprintf(w, sizeof w, "%s%s", p, want[i] + 1);
        else
            snprintf(w, sizeof w, "%s", want[i]);
        CHECK(strstr(err, w) != NULL, "message lacks '%s': %s", w, err);
    }
    config_defaults(&def);
    CHECK(same_settings(&c, &def), "a failed load leaves the defaults");
    printf("    %s\n", err);
}
#define EXPECT_ERROR(text, ...) expect_error(text, (const char *const[]){__VA_ARGS__, NULL})

static void test_defaults(void) {
    d3_config c;
    config_defaults(&c);
    CHECK(c.preset == D3_PRESET_DEFAULT, "preset");
    CHECK(c.sampler.steps == 20 && c.sampler.eta == 1.0 && c.sampler.cfg == D3_CFG_PIXEL &&
              !c.sampler.cfg_set,
          "sampler");
    /* guidance not set: each family's default */
    CHECK(config_cfg(&c, 0) == 2.0 && config_cfg(&c, 1) == 5.0, "cfg by family: %g %g",
          config_cfg(&c, 0), config_cfg(&c, 1));
    CHECK(config_ddim_opts_family(&c, 1).cfg == 5.0f && config_train_opts_family(&c, 1).sample.cfg == 5.0f &&
              config_ddim_opts(&c).cfg == 2.0f && config_train_opts(&c).sample.cfg == 2.0f,
          "ddim/train opts by family");
    CHECK(c.session.round_size == 8 && c.session.queue_depth == 4 && c.session.nprompts == 0,
          "session");
    CHECK(c.d3po.beta == 0.1 && c.d3po.clip_eps == 0.1 && c.d3po.lr == 1e-4 && c.d3po.epochs == 2,
          "d3po beta %g eps %g lr %g epochs %d", c.d3po.beta, c.d3po.clip_eps, c.d3po.lr,
          c.d3po.epochs);
    CHECK(c.d3po.weight_decay == 1e-4 && c.d3po.max_grad_norm == 1.0 &&
              c.d3po.reference == D3PO_REF_BASE && c.d3po.kl == 0.3,
          "d3po wd/clip/reference/kl");
    CHECK(c.ui.graphics == D3_GRAPHICS_AUTO && c.ui.colors == 256, "ui");
    CHECK(c.engine.device == D3_DEVICE_AUTO && c.engine.threads == 0 && c.engine.tf32 == 0,
          "engine");
    static const struct {
        const char *key;
        int act;
    } b[] = {
        {"1", D3_ACT_LEFT},  {"Left", D3_ACT_LEFT},
        {"2", D3_ACT_RIGHT}, {"Right", D3_ACT_RIGHT},
        {"t", D3_ACT_TIE},   {"=", D3_ACT_TIE},
        {"s", D3_ACT_SKIP},  {"Space", D3_ACT_SKIP},
        {"u", D3_ACT_UNDO},  {"Backspace", D3_ACT_UNDO},
        {"z", D3_ACT_ZOOM},  {"h", D3_ACT_HISTORY},
        {"T", D3_ACT_TRAIN}, {"p", D3_ACT_PROMPT},
        {"?", D3_ACT_HELP},  {"q", D3_ACT_QUIT},
        {"x", -1},           {"Q", -1},
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        CHECK(config_key_action(&c, b[i].key) == b[i].act, "key %s -> %d, wanted %d", b[i].key,
              config_key_action(&c, b[i].key), b[i].act);
    CHECK(!strcmp(config_source(&c), "built-in defaults"), "source %s", config_source(&c));
    /* the engine sees the same numbers */
    d3po_train_opts o = config_train_opts(&c);
    CHECK(o.sample.steps == 20 && o.epochs == 2 && o.ref == D3PO_REF_BASE && o.loss.beta == 0.1f &&
              o.loss.clip_eps == 0.1f && o.loss.kl == 0.3f && o.max_grad_norm == 1.0,
          "config_train_opts");
}

/* No file anywhere: the built-in defaults. */
static void test_no_file(void) {
    char dir[300];
    snprintf(dir, sizeof dir, "%s/empty-xdg", tmp);
    mkdir(dir, 0700);
    setenv("XDG_CONFIG_HOME", dir, 1);
    d3_config c, def;
    char err[D3_ERRLEN];
    CHECK(config_load(&c, NULL, err) == 0, "%s", err);
    config_defaults(&def);
    CHECK(same_settings(&c, &def), "defaults");
    CHECK(!strcmp(config_source(&c), "built-in defaults"), "source %s", config_source(&c));
    CHECK(config_load(&c, "", err) == 0, "an empty --config is no --config: %s", err);
}

static void test_shipped_file(void) {
    d3_config c, def;
    char err[D3_ERRLEN] = "";
    int rc = config_load(&c, "config/d3po.conf", err);
    CHECK(rc == 0, "config/d3po.conf: %s", err);
    config_defaults(&def);
    CHECK(same_settings(&c, &def), "config/d3po.conf differs from the built-in defaults");
    if (!same_settings(&c, &def)) {
        config_dump(&c, stderr);
        config_dump(&def, stderr);
    }
    CHECK(!strcmp(config_source(&c), "config/d3po.conf"), "source %s", config_source(&c));
    /* every key is present: each table key appears in the file as "key =" */
    char *dump = NULL, *file = NULL;
    size_t dn = 0;
    FILE *m = open_memstream(&dump, &dn);
    config_dump(&def, m);
    fclose(m);
    FILE *f = fopen("config/d3po.conf", "r");
    CHECK(f != NULL, "open config/d3po.conf");
    if (!f) {
        free(dump);
        return;
    }
    size_t fn = 0;
    FILE *fm = open_memstream(&file, &fn);
    int ch;
    while ((ch = fgetc(f)) != EOF) fputc(ch, fm);
    fclose(f);
    fclose(fm);
    for (char *line = strtok(dump, "\n"); line; line = strtok(NULL, "\n")) {
        while (*line == ' ') line++;
        char *eq = strstr(line, " = ");
        if (!eq || line[0] == '#') continue;
        char key[80];
        snprintf(key, sizeof key, "\n%.*s = ", (int)(eq - line), line);
        /* indented in the file: look for "<spaces>key = " at a line start */
        int found = 0;
        for (char *p = file; (p = strstr(p, key + 1)); p++) {
            char *q = p;
            while (q > file && q[-1] == ' ') q--;
            if (q == file || q[-1] == '\n') {
                found = 1;
                break;
            }
        }
        CHECK(found, "config/d3po.conf lacks the key '%s'", key + 1);
    }
    free(dump);
    free(file);
}

/* config_dump prints what config_load reads back. */
static void test_dump_roundtrip(void) {
    d3_config c, back;
    char err[D3_ERRLEN] = "";
    config_defaults(&c);
    char *dump = NULL;
    size_t dn = 0;
    FILE *m = open_memstream(&dump, &dn);
    config_dump(&c, m);
    fclose(m);
    const char *dp = put("defaults-dump.conf", dump);
    free(dump);
    CHECK(config_load(&back, dp, err) == 0 && same_settings(&c, &back), "defaults dump: %s", err);

    c.preset = D3_PRESET_PAPER;
    c.sampler.steps = 50;
    c.sampler.cfg = 7.5;
    c.sampler.cfg_set = 1;
    c.sampler.eta = 0.3;
    c.d3po.lr = 3e-5;
    c.d3po.max_grad_norm = 0;
    c.d3po.reference = D3PO_REF_ROUND;
    c.d3po.kl = 2.5;
    c.session.nprompts = 2;
    strcpy(c.session.prompts[0], "cat face");
    strcpy(c.session.prompts[1], "say \"hi\"\\");
    memset(c.ui.keys[D3_ACT_HELP], 0, sizeof c.ui.keys[D3_ACT_HELP]);
    strcpy(c.ui.keys[D3_ACT_HELP][0], "\"");
    strcpy(c.ui.keys[D3_ACT_HELP][1], "\\");
    strcpy(c.ui.keys[D3_ACT_HELP][2], "F12");
    c.ui.nkeys[D3_ACT_HELP] = 3;
    c.ui.graphics = D3_GRAPHICS_BLOCKS;
    c.engine.device = D3_DEVICE_CUDA;
    c.engine.threads = 3;
    c.engine.tf32 = 1;
    char path[300];
    snprintf(path, sizeof path, "%s/dump.conf", tmp);
    FILE *f = fopen(path, "w");
    config_dump(&c, f);
    fclose(f);
    CHECK(config_load(&back, path, err) == 0, "%s", err);
    CHECK(same_settings(&c, &back), "dump, load: different settings");
    if (!same_settings(&c, &back)) config_dump(&back, stderr);
    /* a guidance set in a file holds for both families, even at the pixel default's value */
    CHECK(config_cfg(&back, 0) == 7.5 && config_cfg(&back, 1) == 7.5, "cfg set: %g %g",
          config_cfg(&back, 0), config_cfg(&back, 1));
    const char *two = put("cfg-two.conf", "sampler = { cfg = 2.0; };\n");
    CHECK(config_load(&back, two, err) == 0 && back.sampler.cfg_set && config_cfg(&back, 1) == 2.0,
          "cfg = 2.0 in a file: set %d, sd %g (%s)", back.sampler.cfg_set, config_cfg(&back, 1), err);
}

/* engine.device and engine.tf32 (--device and --tf32 override them) */
static void test_engine_keys(void) {
    d3_config c;
    char err[D3_ERRLEN] = "";
    const char *p = put("engine.conf", "engine = {\n  device = \"cpu\";\n  tf32 = true;\n};\n");
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(c.engine.device == D3_DEVICE_CPU && c.engine.tf32 == 1 && c.engine.threads == 0,
          "device %d tf32 %d", c.engine.device, c.engine.tf32);
    p = put("engine2.conf", "engine = { device = \"cuda\"; tf32 = false; };\n");
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(c.engine.device == D3_DEVICE_CUDA && c.engine.tf32 == 0, "device %d tf32 %d",
          c.engine.device, c.engine.tf32);
    EXPECT_ERROR("engine = {\n  tf32 = \"yes\";\n};\n",
                 "@:2: engine.tf32: expected a boolean (true or false), got a string");
    EXPECT_ERROR("engine = {\n\n  tf32 = 1;\n};\n",
                 "@:3: engine.tf32: expected a boolean (true or false), got an integer");
    EXPECT_ERROR("engine = {\n  device = true;\n};\n",
                 "@:2: engine.device: expected one of \"auto\", \"cpu\", \"cuda\", got a boolean");
    EXPECT_ERROR("engine = {\n  device = \"CUDA0\";\n};\n",
                 "@:2: engine.device: expected one of \"auto\", \"cpu\", \"cuda\", got \"CUDA0\"");
    EXPECT_ERROR("engine = {\n  tf23 = true;\n};\n", "@:2: engine.tf23: unknown key",
                 "did you mean tf32?", "engine keys are device, threads, tf32");
}

static void test_syntax_error(void) {
    /* (libconfig makes the ';' after a setting optional: not an error) */
    EXPECT_ERROR("sampler = {\n    steps = 20;\n    eta 1.0;\n};\n", "@:3: ", "syntax error");
    EXPECT_ERROR("# a comment\nsampler = {\n    steps = = 20;\n};\n", "@:3: syntax error");
    EXPECT_ERROR("ui = {\n  colors = 256;\n", "@:3: ");
}

static void test_unknown_key(void) {
    EXPECT_ERROR("sampler = {\n    steps = 20;\n    stpes = 30;\n};\n",
                 "@:3: sampler.stpes: unknown key", "did you mean steps?",
                 "sampler keys are steps, eta, cfg");
    EXPECT_ERROR("# comment\nsampelr = { steps = 20; };\n", "@:2: sampelr: unknown key",
                 "did you mean sampler?");
    EXPECT_ERROR("\n\nd3po = {\n  lr = 1e-4;\n  learning_rate = 1e-4;\n};\n",
                 "@:5: d3po.learning_rate: unknown key");
    EXPECT_ERROR("ui = {\n  keys = {\n    quitt = [\"q\"];\n  };\n};\n",
                 "@:3: ui.keys.quitt: unknown action", "did you mean quit?");
}

static void test_wrong_type(void) {
    EXPECT_ERROR("sampler = {\n  steps = \"20\";\n};\n",
                 "@:2: sampler.steps: expected an integer from 1 to 1000, got a string");
    EXPECT_ERROR("sampler = {\n  steps = 2.5;\n};\n",
                 "@:2: sampler.steps: expected an integer from 1 to 1000, got a fractional number");
    EXPECT_ERROR("d3po = {\n  lr = true;\n};\n",
                 "@:2: d3po.lr: expected a number greater than 0 and at most 1, got a boolean");
    EXPECT_ERROR("sampler = 5;\n", "@:1: sampler: expected a group", "got an integer");
    EXPECT_ERROR("ui = { graphics = 1; };\n", "@:1: ui.graphics: expected one of",
                 "got an integer");
    EXPECT_ERROR("session = {\n  prompts = \"fruit\";\n};\n",
                 "@:2: session.prompts: expected a list of class names", "got a string");
    EXPECT_ERROR("session = {\n  prompts = [1, 2];\n};\n",
                 "session.prompts[0]: expected a class name");
}

static void test_out_of_range(void) {
    EXPECT_ERROR("sampler = {\n  steps = 0;\n};\n",
                 "@:2: sampler.steps: expected an integer from 1 to 1000, got 0");
    EXPECT_ERROR("sampler = {\n  steps = 5000000000L;\n};\n",
                 "@:2: sampler.steps:", "got 5000000000");
    EXPECT_ERROR("sampler = { eta = 0.0; };\n",
                 "@:1: sampler.eta: expected a number greater than 0 and at most 1, got 0");
    EXPECT_ERROR("d3po = {\n\n  clip_eps = 1;\n};\n",
                 "@:3: d3po.clip_eps: expected a number greater than 0 and less than 1, got 1");
    EXPECT_ERROR("d3po = { kl = -0.5; };\n",
                 "@:1: d3po.kl: expected a number from 0 to 1000, got -0.5");
    EXPECT_ERROR("ui = { colors = 1; };\n",
                 "@:1: ui.colors: expected an integer from 2 to 256, got 1");
    EXPECT_ERROR("engine = { threads = -1; };\n",
                 "engine.threads: expected an integer from 0 to 1024");
    EXPECT_ERROR("d3po = { weight_decay = -0.1; };\n",
                 "d3po.weight_decay: expected a number from 0 to 1, got -0.1");
}

static void test_bad_enum(void) {
    EXPECT_ERROR(
        "ui = {\n  graphics = \"kitty\";\n};\n",
        "@:2: ui.graphics: expected one of \"auto\", \"sixel\", \"blocks\", got \"kitty\"");
    EXPECT_ERROR("d3po = { reference = \"policy\"; };\n",
                 "@:1: d3po.reference: expected one of \"base\", \"round\", got \"policy\"");
    EXPECT_ERROR("engine = { device = \"gpu\"; };\n",
                 "engine.device: expected one of \"auto\", \"cpu\", \"cuda\"");
    EXPECT_ERROR("\npreset = \"fast\";\n",
                 "@:2: preset: expected one of \"default\", \"paper\", got \"fast\"");
}

static void test_bad_key_name(void) {
    EXPECT_ERROR("ui = {\n  keys = {\n    left = [\"1\", \"Lefty\"];\n  };\n};\n",
                 "@:3: ui.keys.left: \"Lefty\" is not a key name",
                 "single printable character or one of Left Right");
    EXPECT_ERROR("ui = { keys = { left = [\" \"]; }; };\n",
                 "ui.keys.left: \" \" is not a key name");
    EXPECT_ERROR("ui = { keys = { left = [\"F13\"]; }; };\n", "\"F13\" is not a key name");
    EXPECT_ERROR("ui = { keys = { left = [\"\"]; }; };\n", "\"\" is not a key name");
    EXPECT_ERROR("ui = { keys = { left = []; }; };\n",
                 "ui.keys.left: expected a key name or a list of 1 to 4", "got an empty list");
    EXPECT_ERROR("ui = { keys = { left = [\"a\", \"b\", \"c\", \"d\", \"e\"]; }; };\n",
                 "got 5 key names");
    EXPECT_ERROR("ui = { keys = { left = [\"a\", \"A\", \"a\"]; }; };\n",
                 "key \"a\" is listed twice");
}

static void test_duplicate_binding(void) {
    /* both bindings in the file: reported at the later one */
    EXPECT_ERROR("ui = {\n  keys = {\n    left = [\"x\"];\n    right = [\"x\"];\n  };\n};\n",
                 "@:4: ui.keys.right: key \"x\" is also bound to left");
    /* against a default binding: names the action to rebind */
    EXPECT_ERROR("ui = {\n  keys = {\n    tie = [\"s\"];\n  };\n};\n",
                 "@:3: ui.keys.tie: key \"s\" is also bound to skip (by default: rebind it too)");
    /* named keys compare by canonical spelling */
    EXPECT_ERROR("ui = { keys = { zoom = [\"left\"]; }; };\n",
                 "key \"Left\" is also bound to left");
}

static void test_missing_explicit_file(void) {
    d3_config c;
    char err[D3_ERRLEN] = "", p[300];
    snprintf(p, sizeof p, "%s/nowhere/d3po.conf", tmp);
    CHECK(config_load(&c, p, err) == -1, "a missing --config file is an error");
    CHECK(strstr(err, p) && strstr(err, strerror(ENOENT)), "message: %s", err);
    printf("    %s\n", err);
    CHECK(config_load(&c, tmp, err) == -1 && strstr(err, "is a directory"), "directory: %s", err);
}

static void test_xdg_lookup(void) {
    char xdg[300], home[300], want[400];
    d3_config c;
    char err[D3_ERRLEN] = "";
    snprintf(xdg, sizeof xdg, "%s/xdg", tmp);
    const char *p = put("xdg/d3po/d3po.conf", "sampler = { steps = 7; };\n");
    setenv("XDG_CONFIG_HOME", xdg, 1);
    CHECK(config_load(&c, NULL, err) == 0, "%s", err);
    CHECK(c.sampler.steps == 7 && c.sampler.cfg == D3_CFG_PIXEL && !c.sampler.cfg_set,
          "steps %d (file) cfg %g (default)", c.sampler.steps, c.sampler.cfg);
    CHECK(!strcmp(config_source(&c), p), "source %s, wanted %s", config_source(&c), p);

    /* XDG_CONFIG_HOME unset: $HOME/.config */
    snprintf(home, sizeof home, "%s/home", tmp);
    p = put("home/.config/d3po/d3po.conf", "sampler = { steps = 9; };\n");
    unsetenv("XDG_CONFIG_HOME");
    setenv("HOME", home, 1);
    CHECK(config_load(&c, NULL, err) == 0 && c.sampler.steps == 9, "HOME: %s steps %d", err,
          c.sampler.steps);
    CHECK(config_user_path(want, sizeof want) == 0 && !strcmp(want, p), "user path %s", want);
    setenv("XDG_CONFIG_HOME", "", 1); /* empty counts as unset */
    CHECK(config_load(&c, NULL, err) == 0 && c.sampler.steps == 9, "empty XDG: steps %d",
          c.sampler.steps);

    /* an invalid XDG file is an error too, with its path */
    put("xdg2/d3po/d3po.conf", "sampler = { steps = 0; };\n");
    snprintf(xdg, sizeof xdg, "%s/xdg2", tmp);
    setenv("XDG_CONFIG_HOME", xdg, 1);
    CHECK(config_load(&c, NULL, err) == -1 && strstr(err, "xdg2/d3po/d3po.conf:1: sampler.steps"),
          "bad XDG file: %s", err);
}

static void test_explicit_beats_xdg(void) {
    char xdg[300];
    snprintf(xdg, sizeof xdg, "%s/xdg", tmp);
    put("xdg/d3po/d3po.conf", "sampler = { steps = 7; cfg = 3.0; };\n");
    setenv("XDG_CONFIG_HOME", xdg, 1);
    const char *p = put("explicit.conf", "sampler = { steps = 11; };\n");
    d3_config c;
    char err[D3_ERRLEN] = "";
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(c.sampler.steps == 11, "steps %d", c.sampler.steps);
    CHECK(c.sampler.cfg == D3_CFG_PIXEL && !c.sampler.cfg_set, "files are not merged: cfg %g",
          c.sampler.cfg);
    CHECK(!strcmp(config_source(&c), p), "source %s", config_source(&c));
}

static void test_preset_paper(void) {
    d3_config c;
    char err[D3_ERRLEN] = "";
    const char *p = put("paper.conf", "preset = \"paper\";\n");
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(c.preset == D3_PRESET_PAPER && c.d3po.lr == 3e-5 && c.d3po.epochs == 1 &&
              c.d3po.reference == D3PO_REF_ROUND && c.d3po.beta == 0.1 && c.d3po.clip_eps == 0.1 &&
              c.d3po.kl == 0,
          "paper: lr %g epochs %d kl %g", c.d3po.lr, c.d3po.epochs, c.d3po.kl);
    /* explicit keys win, wherever they are written relative to the preset */
    p = put("paper2.conf",
            "d3po = { lr = 2e-5; reference = \"base\"; kl = 0.5; };\npreset = \"paper\";\n");
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(c.d3po.lr == 2e-5 && c.d3po.epochs == 1 && c.d3po.reference == D3PO_REF_BASE &&
              c.d3po.kl == 0.5,
          "paper + override: lr %g epochs %d ref %d kl %g", c.d3po.lr, c.d3po.epochs,
          c.d3po.reference, c.d3po.kl);
    CHECK(config_train_opts(&c).loss.kl == 0.5f, "the engine sees kl");
    CHECK(c.sampler.steps == 20, "the preset leaves other groups alone");
}

static void test_key_remap(void) {
    d3_config c;
    char err[D3_ERRLEN] = "";
    const char *p = put("keys.conf", "ui = {\n"
                                     "  keys = {\n"
                                     "    left = [\"a\", \"f1\"];\n"
                                     "    right = \"d\";\n"
                                     "    quit = [\"Escape\", \"q\", \"Q\"];\n"
                                     "  };\n"
                                     "};\n");
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(config_key_action(&c, "a") == D3_ACT_LEFT, "a -> left");
    CHECK(config_key_action(&c, "F1") == D3_ACT_LEFT, "F1 -> left");
    CHECK(config_key_action(&c, "1") == -1 && config_key_action(&c, "Left") == -1,
          "old left keys unbound");
    CHECK(config_key_action(&c, "d") == D3_ACT_RIGHT && c.ui.nkeys[D3_ACT_RIGHT] == 1,
          "a single string binds one key");
    CHECK(config_key_action(&c, "escape") == D3_ACT_QUIT &&
              config_key_action(&c, "Q") == D3_ACT_QUIT &&
              config_key_action(&c, "q") == D3_ACT_QUIT,
          "quit keys");
    CHECK(config_key_action(&c, "t") == D3_ACT_TIE, "untouched actions keep their defaults");
    CHECK(!strcmp(c.ui.keys[D3_ACT_LEFT][1], "F1"), "canonical spelling: %s",
          c.ui.keys[D3_ACT_LEFT][1]);
    /* moving a default key: rebind its old action too */
    p = put("keys2.conf", "ui = { keys = { tie = [\"s\"]; skip = [\"n\", \"Space\"]; }; };\n");
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(config_key_action(&c, "s") == D3_ACT_TIE && config_key_action(&c, "n") == D3_ACT_SKIP,
          "swap");
    char k[D3_CFG_KEYNAME_LEN];
    CHECK(config_key_canonical("pagedown", k) == 0 && !strcmp(k, "PageDown"), "PageDown");
    CHECK(config_key_canonical("F10", k) == 0 && config_key_canonical("F0", k) == -1 &&
              config_key_canonical("F01", k) == -1 && config_key_canonical("\t", k) == -1,
          "F keys and control characters");
}

static void test_numbers(void) {
    d3_config c;
    char err[D3_ERRLEN] = "";
    const char *p = put("num.conf", "sampler = { cfg = 7; eta = 0.5; };\nsession = { prompts = "
                                    "[\"fruit\", \"cat face\"]; };\n");
    CHECK(config_load(&c, p, err) == 0, "%s", err);
    CHECK(c.sampler.cfg == 7.0 && c.sampler.eta == 0.5, "an integer is a number");
    CHECK(c.session.nprompts == 2 && !strcmp(c.session.prompts[1], "cat face"), "prompts");
    EXPECT_ERROR("session = { prompts = [\"fruit\", \"fruit\"]; };\n", "\"fruit\" is listed twice");
}

int main(void) {
    snprintf(tmp, sizeof tmp, "%s/d3po-config-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 2;
    }
    /* never read the developer's own ~/.config/d3po */
    char empty[300];
    snprintf(empty, sizeof empty, "%s/empty-home", tmp);
    mkdir(empty, 0700);
    setenv("HOME", empty, 1);
    unsetenv("XDG_CONFIG_HOME");

    RUN(test_defaults);
    RUN(test_no_file);
    RUN(test_shipped_file);
    RUN(test_dump_roundtrip);
    RUN(test_syntax_error);
    RUN(test_unknown_key);
    RUN(test_wrong_type);
    RUN(test_out_of_range);
    RUN(test_bad_enum);
    RUN(test_bad_key_name);
    RUN(test_duplicate_binding);
    RUN(test_missing_explicit_file);
    RUN(test_xdg_lookup);
    RUN(test_explicit_beats_xdg);
    RUN(test_preset_paper);
    RUN(test_key_remap);
    RUN(test_numbers);
    RUN(test_engine_keys);

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return t_done();
}
