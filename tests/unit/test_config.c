/* Config: every error is one `FILE:LINE: message` line; @include resolves
 * relative to the including file; the getters apply defaults; hostile files
 * never crash. */
#include "config.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "plugin_loader.h"
#include "testutil.h"
#include "util.h"

static char tmpdir[256];
static struct strata_registry reg;

static void setup(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/strata-conf-test-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/tests/plugins/.libs/good_quant.so", test_builddir());
  char dir2[4096];
  snprintf(dir2, sizeof dir2, "%s/plugins", test_builddir());
  const char *dirs[] = {dir, dir2};
  memset(&reg, 0, sizeof reg);
  strata_registry_scan(&reg, dirs, 2);
}

static void teardown(void) {
  strata_registry_free(&reg);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static char *put(const char *rel, const char *text) {
  char *path = strata_path_join(tmpdir, rel);
  char *dir = strata_dirname(path);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
  free(dir);
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  fclose(f);
  return path;
}

/* Loads and validates; returns the error lines (caller frees). */
static struct strata_errlist check(const char *path) {
  struct strata_errlist errs = {0};
  strata_config_t *cfg = strata_config_load(path, &errs);
  if (cfg) {
    strata_config_validate(cfg, &reg, &errs);
    strata_config_free(cfg);
  }
  return errs;
}

/* path's config, which must check clean (any errors printed first),
 * loaded and validated for its values. */
static strata_config_t *load_clean(const char *path) {
  struct strata_errlist e = check(path);
  for (size_t i = 0; i < e.n; i++) fprintf(stderr, "  got: %s\n", e.lines[i]);
  ck_assert_uint_eq(e.n, 0);
  strata_errlist_free(&e);
  struct strata_errlist e2 = {0};
  strata_config_t *cfg = strata_config_load(path, &e2);
  ck_assert_ptr_nonnull(cfg);
  ck_assert_int_eq(strata_config_validate(cfg, &reg, &e2), 0);
  strata_errlist_free(&e2);
  return cfg;
}

/* Exactly one error, of the form FILE:LINE: ..., containing needle. */
static void expect_one(const char *rel, const char *text, const char *file_rel, int line,
                       const char *needle) {
  char *path = put(rel, text);
  struct strata_errlist e = check(path);
  for (size_t i = 0; i < e.n; i++) fprintf(stderr, "  got: %s\n", e.lines[i]);
  ck_assert_uint_eq(e.n, 1);
  char *want_file = strata_path_join(tmpdir, file_rel ? file_rel : rel);
  char prefix[4200];
  snprintf(prefix, sizeof prefix, "%s:%d: ", want_file, line);
  ck_assert_msg(strncmp(e.lines[0], prefix, strlen(prefix)) == 0, "'%s' does not start with '%s'",
                e.lines[0], prefix);
  ck_assert_msg(strstr(e.lines[0], needle) != NULL, "'%s' lacks '%s'", e.lines[0], needle);
  ck_assert_ptr_null(strchr(e.lines[0], '\n'));
  free(want_file);
  free(path);
  strata_errlist_free(&e);
}

START_TEST(valid_config_ok) {
  free(put("m.gguf", "GGUF"));
  char *path = put("ok.conf",
                   "engine: {\n  model = \"m.gguf\";\n  backend = \"auto\";\n  quant = \"q8_0\";\n};\n"
                   "server: { port = 8081; host = \"0.0.0.0\"; };\n"
                   "plugins: {\n  path = [\"p1\", \"/abs/p2\"];\n"
                   "  quant: { test-good: { label = \"hi\"; factor = 3; cache = 4096; }; };\n};\n");
  strata_config_t *cfg = load_clean(path);
  const strata_config_node_t *eng = strata_config_group(cfg, "engine");
  ck_assert_str_eq(strata_config_string(eng, "backend"), "auto");
  ck_assert_int_eq(strata_config_int(eng, "context_length"), 0); /* default */
  ck_assert_int_eq(strata_config_is_set(eng, "context_length"), 0);
  ck_assert_int_eq(strata_config_is_set(eng, "model"), 1);
  char *model = strata_config_path_value(eng, "model");
  char *want = strata_path_join(tmpdir, "m.gguf");
  ck_assert_str_eq(model, want);
  free(model);
  free(want);
  const strata_config_node_t *srv = strata_config_group(cfg, "server");
  ck_assert_int_eq(strata_config_int(srv, "port"), 8081);
  const strata_config_node_t *rt = strata_config_group(cfg, "router");
  ck_assert_int_eq(strata_config_int(rt, "port"), 8080); /* absent group: defaults */
  size_t n;
  char **dirs = strata_config_plugin_dirs(cfg, &n);
  ck_assert_uint_eq(n, 2);
  char *p1 = strata_path_join(tmpdir, "p1");
  ck_assert_str_eq(dirs[0], p1);
  ck_assert_str_eq(dirs[1], "/abs/p2");
  free(p1);
  strata_free_strv(dirs, n);
  char where[512];
  strata_config_where(srv, "port", where, sizeof where);
  ck_assert_ptr_nonnull(strstr(where, "ok.conf:6"));
  strata_config_free(cfg);
  free(path);
}
END_TEST

/* engine.kv_cache is a group of its own inside engine: validated against its
 * table, with defaults when absent, and errors point into it. */
START_TEST(nested_engine_kv_cache) {
  char *path = put("kv.conf",
                   "engine: {\n  max_batch_tokens = 512;\n"
                   "  kv_cache: { block_size = 32; memory = \"64MiB\"; prefix_caching = false; };\n};\n");
  strata_config_t *cfg = load_clean(path);
  const strata_config_node_t *eng = strata_config_group(cfg, "engine");
  ck_assert_int_eq(strata_config_int(eng, "max_batch_tokens"), 512);
  ck_assert_int_eq(strata_config_int(eng, "max_running"), 64); /* default */
  ck_assert_str_eq(strata_config_string(eng, "scheduler"), "fcfs");
  const strata_config_node_t *kv = strata_config_group(cfg, "engine.kv_cache");
  ck_assert_ptr_nonnull(kv);
  ck_assert_int_eq(strata_config_int(kv, "block_size"), 32);
  ck_assert_int_eq(strata_config_int(kv, "memory"), 64 << 20);
  ck_assert_int_eq(strata_config_bool(kv, "prefix_caching"), 0);
  ck_assert_int_eq(strata_config_int(kv, "tokens"), 0);
  strata_config_free(cfg);
  free(path);
  /* absent: every default */
  char *p2 = put("kv2.conf", "engine: { };\n");
  struct strata_errlist e2 = {0};
  cfg = strata_config_load(p2, &e2);
  ck_assert_int_eq(strata_config_validate(cfg, &reg, &e2), 0);
  kv = strata_config_group(cfg, "engine.kv_cache");
  ck_assert_int_eq(strata_config_int(kv, "block_size"), 16);
  ck_assert_int_eq(strata_config_bool(kv, "prefix_caching"), 1);
  ck_assert_str_eq(strata_config_string(kv, "dtype"), "f32");
  strata_config_free(cfg);
  free(p2);
  strata_errlist_free(&e2);
  expect_one("kv3.conf", "engine: {\n  kv_cache: {\n    blok_size = 8;\n  };\n};\n", NULL, 3,
             "unknown key 'blok_size' in engine.kv_cache (did you mean 'block_size'?)");
  expect_one("kv4.conf", "engine: {\n  kv_cache = 5;\n};\n", NULL, 2,
             "'engine.kv_cache' must be a group");
  expect_one("kv5.conf", "engine: {\n  kv_cache: { block_size = 0; };\n};\n", NULL, 2,
             "engine.kv_cache.block_size = 0 is out of range");
  expect_one("kv8.conf", "engine: {\n  kv_cache: {\n    dtype = \"bf16\";\n  };\n};\n", NULL, 3,
             "engine.kv_cache.dtype: 'bf16' is not f32 or f16");
  expect_one("kv6.conf", "engine: {\n  scheduler = \"fifo\";\n};\n", NULL, 2,
             "engine.scheduler: unknown scheduler plugin 'fifo'");
  expect_one("kv7.conf", "server: {\n  max_body_bytes = \"lots\";\n};\n", NULL, 2,
             "server.max_body_bytes");
}
END_TEST

START_TEST(syntax_error) {
  expect_one("syn.conf", "engine: {\n  model = \"x\"\n  backend = ;\n};\n", NULL, 3, "syntax error");
}
END_TEST

START_TEST(wrong_type) {
  expect_one("type.conf", "server: {\n  port = \"80\";\n};\n", NULL, 2,
             "server.port must be an integer, not a string");
}
END_TEST

START_TEST(out_of_range) {
  expect_one("range.conf", "server: {\n\n  port = 70000;\n};\n", NULL, 3, "out of range");
}
END_TEST

/* libconfig reads 5000000000 as 705032704 (its low 32 bits): inside the
 * range, so only the literal tells; written 5000000000L it is 64-bit. */
START_TEST(int_past_32_bits) {
  expect_one("big.conf", "engine: {\n  kv_cache: {\n    tokens = 5000000000;\n  };\n};\n", NULL, 3,
             "engine.kv_cache.tokens = 5000000000 does not fit in 32 bits, and libconfig reads it "
             "as 705032704: write a 64-bit integer with an L suffix (5000000000L)");
  expect_one("hex.conf", "engine: { max_batch_tokens=0x100000800; };\n", NULL, 1,
             "(0x100000800L)");
  expect_one("plug.conf", "plugins: { backend: { cpu: {\n q8_activations_min = 1000000000000000;\n"
             "}; }; };\n", NULL, 2, "reads it as -1530494976");
  /* in an included file, at its own line */
  free(put("inc/big.conf", "# b\nserver: { max_body_bytes = 4294967296; };\n"));
  expect_one("top.conf", "@include \"inc/big.conf\"\n", "inc/big.conf", 2,
             "server.max_body_bytes = 4294967296 does not fit in 32 bits");
  /* the fix: a 64-bit literal, read whole; and 32-bit ones stay fine */
  char *path = put("ok.conf", "engine: { kv_cache: { tokens = 500000000L; }; max_batch_tokens = 4096; };\n"
                              "plugins: { backend: { cpu: { q8_activations_min = 1000000000000000L; }; }; };\n");
  strata_config_t *cfg = load_clean(path);
  ck_assert_int_eq(strata_config_int(strata_config_group(cfg, "engine.kv_cache"), "tokens"), 500000000);
  strata_config_free(cfg);
  free(path);
}
END_TEST

START_TEST(unknown_key_typo) {
  expect_one("typo.conf", "engine: {\n  modle = \"x.gguf\";\n};\n", NULL, 2,
             "unknown key 'modle' in engine (did you mean 'model'?)");
}
END_TEST

START_TEST(unknown_top_level) {
  expect_one("top.conf", "\nengin: { model = \"x\"; };\n", NULL, 2, "unknown top-level key 'engin'");
}
END_TEST

START_TEST(group_expected) {
  expect_one("grp.conf", "server = 5;\n", NULL, 1, "'server' must be a group");
}
END_TEST

START_TEST(unknown_plugin_name) {
  expect_one("plug.conf", "plugins: {\n  quant: {\n    q9_9: { };\n  };\n};\n", NULL, 3,
             "unknown quant plugin 'q9_9' (available:");
}
END_TEST

START_TEST(unknown_plugin_kind) {
  expect_one("kind.conf", "plugins: {\n  qaunt: { };\n};\n", NULL, 2, "unknown key 'qaunt' in plugins");
}
END_TEST

START_TEST(unknown_engine_quant) {
  expect_one("eq.conf", "engine: {\n  quant = \"q3_x\";\n};\n", NULL, 2, "unknown quant plugin 'q3_x'");
}
END_TEST

START_TEST(unknown_backend) {
  expect_one("eb.conf", "engine: {\n  backend = \"tpu\";\n};\n", NULL, 2, "unknown backend plugin 'tpu'");
}
END_TEST

START_TEST(logits_list) {
  expect_one("l1.conf", "engine: {\n  logits = 5;\n};\n", NULL, 2,
             "engine.logits must be a list of strings");
  expect_one("l2.conf", "engine: {\n  logits = [ 7 ];\n};\n", NULL, 2,
             "engine.logits[0] must be a string, not an integer");
  expect_one("l3.conf", "engine: {\n\n  logits = ( \"nope\" );\n};\n", NULL, 3,
             "engine.logits[0]: unknown logits plugin 'nope'");
  char *path = put("l4.conf", "engine: { logits = (); };\n");
  struct strata_errlist e = check(path);
  ck_assert_uint_eq(e.n, 0);
  strata_errlist_free(&e);
  free(path);
}
END_TEST

START_TEST(missing_required_key) {
  expect_one("req.conf", "plugins: {\n  quant: {\n    test-good: {\n      factor = 1.5;\n    };\n  };\n};\n",
             NULL, 3, "missing required key 'label' in plugins.quant.test-good");
}
END_TEST

START_TEST(plugin_key_typo_and_range) {
  char *path = put("pk.conf", "plugins: { quant: { test-good: {\n label = \"a\";\n factr = 2;\n"
                              " factor = 11.0;\n count = 2.5;\n cache = \"lots\";\n on = 1;\n}; }; };\n");
  struct strata_errlist e = check(path);
  ck_assert_uint_eq(e.n, 5);
  const char *want[] = {":3: unknown key 'factr' in plugins.quant.test-good (did you mean 'factor'?)",
                        ":4: plugins.quant.test-good.factor = 11 is out of range [0, 10]",
                        ":5: plugins.quant.test-good.count must be an integer, not a float",
                        ":6: plugins.quant.test-good.cache: \"lots\" is not a size",
                        ":7: plugins.quant.test-good.on must be a boolean (true or false), not an integer"};
  for (size_t i = 0; i < 5; i++) {
    int found = 0;
    for (size_t j = 0; j < e.n; j++) found |= strstr(e.lines[j], want[i]) != NULL;
    ck_assert_msg(found, "no error contains '%s'", want[i]);
  }
  strata_errlist_free(&e);
  free(path);
}
END_TEST

START_TEST(include_relative_to_including_file) {
  /* main.conf includes sub/a.conf, which includes b.conf from sub/; an error
   * in sub/b.conf is reported there with its own line. */
  free(put("sub/b.conf", "# b\n\nserver: { port = 0; };\n"));
  free(put("sub/a.conf", "engine: { model = \"model.gguf\"; };\n@include \"b.conf\"\n"));
  free(put("sub/model.gguf", "GGUF"));
  char *main_path = put("main.conf", "# top\n@include \"sub/a.conf\"\n");
  struct strata_errlist e = check(main_path);
  ck_assert_uint_eq(e.n, 1);
  char *b = strata_path_join(tmpdir, "sub/b.conf");
  char want[4200];
  snprintf(want, sizeof want, "%s:3: server.port = 0 is out of range", b);
  ck_assert_msg(strncmp(e.lines[0], want, strlen(want)) == 0, "%s", e.lines[0]);
  strata_errlist_free(&e);
  /* Paths set in an included file resolve against that file's directory. */
  free(put("sub/b.conf", "server: { port = 9000; };\n"));
  struct strata_errlist e2 = {0};
  strata_config_t *cfg = strata_config_load(main_path, &e2);
  ck_assert_ptr_nonnull(cfg);
  ck_assert_int_eq(strata_config_validate(cfg, &reg, &e2), 0);
  char *model = strata_config_path_value(strata_config_group(cfg, "engine"), "model");
  char *wantm = strata_path_join(tmpdir, "sub/model.gguf");
  ck_assert_str_eq(model, wantm);
  ck_assert_int_eq(strata_config_int(strata_config_group(cfg, "server"), "port"), 9000);
  strata_config_free(cfg);
  free(model);
  free(wantm);
  free(b);
  free(main_path);
}
END_TEST

START_TEST(include_syntax_error_mapped_back) {
  free(put("inc/bad.conf", "server: {\n  port = 80;\n  host = ;\n};\n"));
  expect_one("incmain.conf", "@include \"inc/bad.conf\"\n", "inc/bad.conf", 3, "syntax error");
}
END_TEST

START_TEST(include_missing_file) {
  expect_one("incmiss.conf", "\n\n@include \"nope.conf\"\n", NULL, 3, "cannot open include file");
}
END_TEST

START_TEST(include_cycle) {
  free(put("cyc/b.conf", "@include \"a.conf\"\n"));
  expect_one("cyc/a.conf", "@include \"b.conf\"\n", "cyc/b.conf", 1, "nested more than");
}
END_TEST

START_TEST(missing_file) {
  struct strata_errlist e = {0};
  ck_assert_ptr_null(strata_config_load("/nonexistent/strata.conf", &e));
  ck_assert_uint_eq(e.n, 1);
  ck_assert_ptr_nonnull(strstr(e.lines[0], "/nonexistent/strata.conf"));
  strata_errlist_free(&e);
}
END_TEST

START_TEST(empty_file_ok) {
  char *path = put("empty.conf", "");
  struct strata_errlist e = check(path);
  ck_assert_uint_eq(e.n, 0);
  free(path);
}
END_TEST

START_TEST(hostile_files_never_crash) {
  /* Binary garbage, deep nesting, huge strings, NUL bytes: each is either
   * valid or yields FILE:LINE errors, never a crash. */
  char *big = malloc(1 << 20);
  memset(big, 'a', (1 << 20) - 1);
  big[(1 << 20) - 1] = 0;
  static char deep[40000];
  size_t o = 0;
  for (int i = 0; i < 5000; i++) o += (size_t)sprintf(deep + o, "g%d:{", i);
  for (int i = 0; i < 5000; i++) deep[o++] = '}';
  deep[o] = 0;
  char *huge_str = malloc((1 << 20) + 64);
  snprintf(huge_str, (1 << 20) + 64, "engine: { model = \"%s\"; };\n", big);
  const char *cases[] = {"\x7f" "ELF\x01\x02\x03", "engine: { model = \"unterminated; };",
                         deep, huge_str, "@include \"\"\n", "plugins: { path = (1, \"x\", [2]); };",
                         "engine: { model = 5; context_length = -1; };",
                         "server: { port = 99999999999999999999; };", "\xff\xfe\x00\x01",
                         "plugins: { quant: { f32 = 3; }; };", "plugins = ();"};
  regex_t re;
  ck_assert_int_eq(regcomp(&re, "^[^:]+:[0-9]+: .+$", REG_EXTENDED | REG_NOSUB), 0);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "hostile%zu.conf", i);
    char *path = put(name, cases[i]);
    struct strata_errlist e = check(path);
    for (size_t j = 0; j < e.n; j++)
      ck_assert_msg(regexec(&re, e.lines[j], 0, NULL, 0) == 0, "case %zu: bad error format: %s", i,
                    e.lines[j]);
    if (i != 4) /* every case but the empty include is invalid */
      ck_assert_msg(e.n > 0 || i == 2, "case %zu accepted", i);
    strata_errlist_free(&e);
    free(path);
  }
  regfree(&re);
  free(big);
  free(huge_str);
}
END_TEST

START_TEST(size_parsing) {
  uint64_t v;
  ck_assert_int_eq(strata_parse_size("2GiB", &v), 0);
  ck_assert_uint_eq(v, 2147483648ull);
  ck_assert_int_eq(strata_parse_size("1.5GB", &v), 0);
  ck_assert_uint_eq(v, 1500000000ull);
  ck_assert_int_eq(strata_parse_size("64 KiB", &v), 0);
  ck_assert_uint_eq(v, 65536);
  ck_assert_int_eq(strata_parse_size("4096", &v), 0);
  ck_assert_uint_eq(v, 4096);
  ck_assert_int_ne(strata_parse_size("-1", &v), 0);
  ck_assert_int_ne(strata_parse_size("1.5", &v), 0);
  ck_assert_int_ne(strata_parse_size("12 parsecs", &v), 0);
  ck_assert_int_ne(strata_parse_size("1e30TiB", &v), 0);
  ck_assert_int_ne(strata_parse_size("", &v), 0);
  ck_assert_int_ne(strata_parse_size("nan", &v), 0);
}
END_TEST

START_TEST(default_config_valid) {
  /* conf/strata.conf, the embedded default, validates; its model path is
   * relative to conf/, so from a copy of the tree without ../shared beside
   * it (make distcheck) the one error must be the missing model. */
  char path[4096], model[4200];
  snprintf(path, sizeof path, "%s/conf/strata.conf", test_srcdir());
  snprintf(model, sizeof model, "%s/conf/../../shared/models/stories260K.gguf", test_srcdir());
  struct strata_errlist e = check(path);
  for (size_t i = 0; i < e.n; i++) fprintf(stderr, "%s\n", e.lines[i]);
  if (access(model, R_OK) == 0) {
    ck_assert_uint_eq(e.n, 0);
  } else {
    ck_assert_uint_eq(e.n, 1);
    ck_assert_ptr_nonnull(strstr(e.lines[0], "engine.model: cannot read"));
  }
  strata_errlist_free(&e);
}
END_TEST

static Suite *config_suite(void) {
  Suite *s = suite_create("config");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, valid_config_ok);
  tcase_add_test(tc, nested_engine_kv_cache);
  tcase_add_test(tc, syntax_error);
  tcase_add_test(tc, wrong_type);
  tcase_add_test(tc, out_of_range);
  tcase_add_test(tc, int_past_32_bits);
  tcase_add_test(tc, unknown_key_typo);
  tcase_add_test(tc, unknown_top_level);
  tcase_add_test(tc, group_expected);
  tcase_add_test(tc, unknown_plugin_name);
  tcase_add_test(tc, unknown_plugin_kind);
  tcase_add_test(tc, unknown_engine_quant);
  tcase_add_test(tc, unknown_backend);
  tcase_add_test(tc, logits_list);
  tcase_add_test(tc, missing_required_key);
  tcase_add_test(tc, plugin_key_typo_and_range);
  tcase_add_test(tc, include_relative_to_including_file);
  tcase_add_test(tc, include_syntax_error_mapped_back);
  tcase_add_test(tc, include_missing_file);
  tcase_add_test(tc, include_cycle);
  tcase_add_test(tc, missing_file);
  tcase_add_test(tc, empty_file_ok);
  tcase_add_test(tc, hostile_files_never_crash);
  tcase_add_test(tc, size_parsing);
  tcase_add_test(tc, default_config_valid);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_run_suite(config_suite()); }
