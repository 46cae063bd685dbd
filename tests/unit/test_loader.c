/* Plugin loader: good plugins load, each kind of broken plugin is rejected
 * with its reason, the search path and shadowing behave, init() gets the
 * plugin's validated config subtree. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <strata/quant.h>

#include "conf.h"
#include "plugin_loader.h"
#include "testutil.h"
#include "util.h"

static char *test_plugin(const char *name) {
  char *p = malloc(4096);
  snprintf(p, 4096, "%s/tests/plugins/.libs/%s.so", test_builddir(), name);
  return p;
}

static void expect_reject(const char *name, const char *needle1, const char *needle2) {
  char *path = test_plugin(name);
  struct strata_plugin p;
  char err[1024] = "";
  ck_assert_int_ne(strata_plugin_load_file(path, &p, err, sizeof err), 0);
  ck_assert_msg(strstr(err, path) != NULL, "reason lacks the path: %s", err);
  ck_assert_msg(strstr(err, needle1) != NULL, "reason lacks '%s': %s", needle1, err);
  if (needle2) ck_assert_msg(strstr(err, needle2) != NULL, "reason lacks '%s': %s", needle2, err);
  free(path);
}

START_TEST(good_plugin_loads) {
  char *path = test_plugin("good_quant");
  struct strata_plugin p;
  char err[1024] = "";
  ck_assert_msg(strata_plugin_load_file(path, &p, err, sizeof err) == 0, "%s", err);
  ck_assert_str_eq(p.desc->name, "test-good");
  ck_assert_int_eq(p.desc->kind, STRATA_PLUGIN_QUANT);
  ck_assert_uint_eq(p.desc->vt.quant->type, 9001);
  ck_assert_str_eq(p.path, path);
  free(p.path);
  free(path);
}
END_TEST

START_TEST(wrong_abi_rejected) { expect_reject("bad_abi", "ABI version mismatch: plugin has 7, host needs 1", NULL); }
END_TEST

START_TEST(wrong_fingerprint_rejected) {
  expect_reject("bad_fingerprint", "abi1-ptr4-be-weird", STRATA_BUILD_FINGERPRINT);
}
END_TEST

START_TEST(missing_entry_rejected) { expect_reject("no_entry", "missing symbol strata_plugin_entry", NULL); }
END_TEST

START_TEST(unresolved_symbol_rejected) {
  /* dlerror()'s own text names the symbol. */
  expect_reject("unresolved", "cannot load", "strata_symbol_that_does_not_exist");
}
END_TEST

START_TEST(unknown_kind_rejected) { expect_reject("bad_kind", "unknown plugin kind 99", NULL); }
END_TEST

START_TEST(missing_file_rejected) {
  struct strata_plugin p;
  char err[1024] = "";
  ck_assert_int_ne(strata_plugin_load_file("/nonexistent/x.so", &p, err, sizeof err), 0);
  ck_assert_ptr_nonnull(strstr(err, "/nonexistent/x.so"));
  ck_assert_ptr_nonnull(strstr(err, "cannot load"));
}
END_TEST

START_TEST(not_a_shared_object_rejected) {
  char dir[] = "/tmp/strata-loader-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/garbage.so", dir);
  FILE *f = fopen(path, "wb");
  fputs("this is not an ELF file", f);
  fclose(f);
  struct strata_plugin p;
  char err[1024] = "";
  ck_assert_int_ne(strata_plugin_load_file(path, &p, err, sizeof err), 0);
  ck_assert_ptr_nonnull(strstr(err, "cannot load"));
  unlink(path);
  rmdir(dir);
}
END_TEST

START_TEST(registry_scan_lists_rejects) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/tests/plugins/.libs", test_builddir());
  const char *dirs[] = {dir};
  struct strata_registry reg = {0};
  strata_registry_scan(&reg, dirs, 1);
  ck_assert_uint_eq(reg.n_plugins, 1);
  ck_assert_str_eq(reg.plugins[0].desc->name, "test-good");
  ck_assert_uint_eq(reg.n_rejects, 5);
  const char *expect[] = {"ABI version mismatch", "fingerprint mismatch", "missing symbol",
                          "strata_symbol_that_does_not_exist", "unknown plugin kind"};
  for (size_t i = 0; i < 5; i++) {
    int found = 0;
    for (size_t j = 0; j < reg.n_rejects; j++) found |= strstr(reg.rejects[j].reason, expect[i]) != NULL;
    ck_assert_msg(found, "no reject mentions '%s'", expect[i]);
  }
  ck_assert_ptr_nonnull(strata_registry_find(&reg, STRATA_PLUGIN_QUANT, "test-good"));
  ck_assert_ptr_null(strata_registry_find(&reg, STRATA_PLUGIN_BACKEND, "test-good"));
  ck_assert_ptr_nonnull(strata_registry_find_quant(&reg, 9001));
  strata_registry_free(&reg);
}
END_TEST

START_TEST(shadowed_plugin_reported) {
  /* The same plugin in two directories: the first on the path wins. */
  char dir[] = "/tmp/strata-shadow-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char *src = test_plugin("good_quant");
  char dst[256];
  snprintf(dst, sizeof dst, "%s/copy.so", dir);
  char *data;
  size_t len;
  char err[256];
  ck_assert_int_eq(strata_read_file(src, &data, &len, err, sizeof err), 0);
  FILE *f = fopen(dst, "wb");
  ck_assert_uint_eq(fwrite(data, 1, len, f), len);
  fclose(f);
  free(data);
  const char *dirs[] = {dir, src};
  struct strata_registry reg = {0};
  strata_registry_scan(&reg, dirs, 2);
  ck_assert_uint_eq(reg.n_plugins, 1);
  ck_assert_str_eq(reg.plugins[0].path, dst);
  ck_assert_uint_eq(reg.n_rejects, 1);
  ck_assert_ptr_nonnull(strstr(reg.rejects[0].reason, "shadowed"));
  strata_registry_free(&reg);
  unlink(dst);
  rmdir(dir);
  free(src);
}
END_TEST

START_TEST(real_quant_plugins_found) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/plugins", test_builddir());
  const char *dirs[] = {dir};
  struct strata_registry reg = {0};
  strata_registry_scan(&reg, dirs, 1);
  const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
  unsigned types[] = {STRATA_TYPE_F32, STRATA_TYPE_F16, STRATA_TYPE_BF16, STRATA_TYPE_Q8_0,
                      STRATA_TYPE_Q4_0};
  for (size_t i = 0; i < 5; i++) {
    const struct strata_plugin *p = strata_registry_find(&reg, STRATA_PLUGIN_QUANT, names[i]);
    ck_assert_msg(p != NULL, "quant plugin %s not found", names[i]);
    ck_assert_uint_eq(p->desc->vt.quant->type, types[i]);
    ck_assert_ptr_eq(strata_registry_find_quant(&reg, types[i]), p);
  }
  for (size_t j = 0; j < reg.n_rejects; j++) ck_abort_msg("unexpected reject: %s", reg.rejects[j].reason);
  strata_registry_free(&reg);
}
END_TEST

START_TEST(default_dirs_order) {
  setenv("STRATA_PLUGIN_PATH", "/env/a::/env/b", 1);
  const char *extra[] = {"/cfg/x"};
  size_t n;
  char **v = strata_plugin_default_dirs(extra, 1, &n);
  ck_assert_uint_eq(n, 4);
  ck_assert_str_eq(v[0], "/cfg/x");
  ck_assert_str_eq(v[1], "/env/a");
  ck_assert_str_eq(v[2], "/env/b");
  /* The test binary runs from the build tree, so the last is its plugins/. */
  char want[4096];
  snprintf(want, sizeof want, "%s/plugins", STRATA_BUILDDIR);
  ck_assert_str_eq(v[3], want);
  strata_free_strv(v, n);
  unsetenv("STRATA_PLUGIN_PATH");
}
END_TEST

static strata_config_t *write_config(const char *text, char *path, size_t cap) {
  snprintf(path, cap, "/tmp/strata-loader-cfg-%d.conf", (int)getpid());
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  struct strata_errlist errs = {0};
  strata_config_t *cfg = strata_config_load(path, &errs);
  for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "%s\n", errs.lines[i]);
  ck_assert_uint_eq(errs.n, 0);
  strata_errlist_free(&errs);
  return cfg;
}

START_TEST(init_gets_config_subtree) {
  char *path = test_plugin("good_quant");
  char cfgpath[256];
  strata_config_t *cfg = write_config(
      "plugins: { quant: { test-good: { factor = 2.5; label = \"x\"; cache = \"2KiB\"; }; }; };\n",
      cfgpath, sizeof cfgpath);
  struct strata_registry reg = {0};
  const char *dirs[] = {path};
  strata_registry_scan(&reg, dirs, 1);
  ck_assert_uint_eq(reg.n_plugins, 1);
  struct strata_errlist errs = {0};
  ck_assert_int_eq(strata_config_validate(cfg, &reg, &errs), 0);
  char err[512];
  ck_assert_msg(strata_plugin_init(&reg.plugins[0], cfg, err, sizeof err) == 0, "%s", err);
  const strata_config_node_t *node = strata_config_plugin_node(cfg, &reg.plugins[0]);
  ck_assert_int_eq(strata_config_int(node, "cache"), 2048);
  ck_assert_int_eq(strata_config_int(node, "count"), 3);
  ck_assert_int_eq(strata_config_bool(node, "on"), 1);
  float in[3] = {1, 2, 3}, out[3];
  reg.plugins[0].desc->vt.quant->dequantize_row(in, out, 3);
  ck_assert_float_eq(out[2], 7.5f);
  strata_registry_free(&reg);
  strata_config_free(cfg);
  unlink(cfgpath);
  free(path);
}
END_TEST

START_TEST(init_failure_reported) {
  char *path = test_plugin("good_quant");
  char cfgpath[256];
  strata_config_t *cfg = write_config(
      "plugins: { quant: { test-good: { factor = 7; label = \"x\"; }; }; };\n", cfgpath,
      sizeof cfgpath);
  struct strata_registry reg = {0};
  const char *dirs[] = {path};
  strata_registry_scan(&reg, dirs, 1);
  struct strata_errlist errs = {0};
  ck_assert_int_eq(strata_config_validate(cfg, &reg, &errs), 0);
  char err[512] = "";
  ck_assert_int_ne(strata_plugin_init(&reg.plugins[0], cfg, err, sizeof err), 0);
  ck_assert_msg(strstr(err, "test-good") && strstr(err, "factor 7 is unlucky"), "%s", err);
  strata_registry_free(&reg);
  strata_config_free(cfg);
  unlink(cfgpath);
  free(path);
}
END_TEST

START_TEST(host_api_alloc_aligned) {
  const struct strata_host_api *h = strata_host_api();
  ck_assert_uint_eq(h->abi_version, STRATA_ABI_VERSION);
  ck_assert_uint_eq(h->size, sizeof(struct strata_host_api));
  void *p = h->alloc(100);
  ck_assert_ptr_nonnull(p);
  ck_assert_uint_eq((uintptr_t)p % 64, 0);
  h->free(p);
  ck_assert_ptr_null(h->alloc(SIZE_MAX));
}
END_TEST

static Suite *loader_suite(void) {
  Suite *s = suite_create("loader");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, good_plugin_loads);
  tcase_add_test(tc, wrong_abi_rejected);
  tcase_add_test(tc, wrong_fingerprint_rejected);
  tcase_add_test(tc, missing_entry_rejected);
  tcase_add_test(tc, unresolved_symbol_rejected);
  tcase_add_test(tc, unknown_kind_rejected);
  tcase_add_test(tc, missing_file_rejected);
  tcase_add_test(tc, not_a_shared_object_rejected);
  tcase_add_test(tc, registry_scan_lists_rejects);
  tcase_add_test(tc, shadowed_plugin_reported);
  tcase_add_test(tc, real_quant_plugins_found);
  tcase_add_test(tc, default_dirs_order);
  tcase_add_test(tc, init_gets_config_subtree);
  tcase_add_test(tc, init_failure_reported);
  tcase_add_test(tc, host_api_alloc_aligned);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_run_suite(loader_suite()); }
