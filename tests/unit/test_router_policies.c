/* The router plugins on synthetic instance lists (no network): each loads
 * as a real plugin, and route() is driven the way strata route drives it. */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <strata/router.h>

#include "conf.h"
#include "plugin_loader.h"
#include "testutil.h"

static struct strata_plugin plug;
static const struct strata_router_vtable *vt;
static void *state;
static strata_config_t *plug_cfg;

/* Loads plugins/router/<dir>/.libs/router_<so>.so with settings for it. */
static void load(const char *dir, const char *so, const char *name, const char *settings) {
  char path[4096], err[1024];
  snprintf(path, sizeof path, "%s/plugins/router/%s/.libs/router_%s.so", test_builddir(), dir, so);
  ck_assert_msg(strata_plugin_load_file(path, &plug, err, sizeof err) == 0, "%s", err);
  ck_assert_int_eq(plug.desc->kind, STRATA_PLUGIN_ROUTER);
  ck_assert_str_eq(plug.desc->name, name);
  plug_cfg = NULL;
  const strata_config_node_t *node = strata_config_plugin_node(NULL, &plug);
  if (settings) {
    char cpath[] = "/tmp/strata-router-XXXXXX";
    int fd = mkstemp(cpath);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "plugins: { router: { %s: { %s }; }; };\n", name, settings);
    fclose(f);
    struct strata_errlist errs = {0};
    plug_cfg = strata_config_load(cpath, &errs);
    ck_assert_ptr_nonnull(plug_cfg);
    struct strata_registry reg = {.plugins = &plug, .n_plugins = 1};
    ck_assert_int_eq(strata_config_validate(plug_cfg, &reg, &errs), 0);
    strata_errlist_free(&errs);
    unlink(cpath);
    node = strata_config_plugin_node(plug_cfg, &plug);
  }
  ck_assert_int_eq(strata_plugin_init(&plug, plug_cfg, err, sizeof err), 0);
  vt = plug.desc->vt.router;
  ck_assert_int_eq(vt->create(node, &state, err, sizeof err), 0);
}

static void unload(void) {
  vt->destroy(state);
  free(plug.path);
  plug.path = NULL;
  if (plug_cfg) strata_config_free(plug_cfg);
  plug_cfg = NULL;
}

/* instances 0..n-1, ids = positions unless skip removes some */
static const char *urls[] = {"http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000",
                             "http://10.0.0.4:8000", "http://10.0.0.5:8000"};

static size_t fleet(struct strata_route_backend *b, int n, int skip) {
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    if (i == skip) continue;
    b[k++] = (struct strata_route_backend){.id = i, .url = urls[i], .running = -1, .waiting = -1,
                                           .kv_usage = -1};
  }
  return k;
}

struct hdrs {
  const char *name, *value;
};
static const char *hdr(const struct strata_route_request *r, const char *name) {
  const struct hdrs *h = r->host_data;
  return h && h->name && strcasecmp(h->name, name) == 0 ? h->value : NULL;
}

static int32_t route(json_t *body, const struct hdrs *h, struct strata_route_backend *b, size_t n,
                     const char **reason) {
  struct strata_route_request r = {.id = 1, .path = "/v1/completions",
                                   .body = (const strata_json_t *)body, .header = hdr,
                                   .host_data = (void *)h};
  struct strata_route_choice c = {.id = -1};
  ck_assert_int_eq(vt->route(state, &r, b, n, &c), 0);
  int ok = 0;
  for (size_t i = 0; i < n; i++) ok |= b[i].id == c.id;
  ck_assert_msg(ok, "chose id %d, not one offered", c.id);
  ck_assert_ptr_nonnull(c.reason);
  if (reason) *reason = c.reason;
  return c.id;
}

START_TEST(round_robin_in_turn_through_ejections) {
  load("basic", "round_robin", "round-robin", NULL);
  struct strata_route_backend b[5];
  size_t n = fleet(b, 3, -1);
  int count[5] = {0};
  for (int i = 0; i < 9; i++) count[route(NULL, NULL, b, n, NULL)]++;
  ck_assert_int_eq(count[0], 3);
  ck_assert_int_eq(count[1], 3);
  ck_assert_int_eq(count[2], 3);
  /* instance 1 ejected: 0 and 2 alternate */
  n = fleet(b, 3, 1);
  int32_t last = -1;
  for (int i = 0; i < 6; i++) {
    const int32_t id = route(NULL, NULL, b, n, NULL);
    ck_assert_int_ne(id, 1);
    ck_assert_int_ne(id, last);
    last = id;
  }
  unload();
}
END_TEST

START_TEST(least_loaded_picks_the_idle) {
  load("basic", "least_loaded", "least-loaded", "choices = 0;");
  struct strata_route_backend b[5];
  size_t n = fleet(b, 4, -1);
  b[0].running = 5;
  b[1].running = 2;
  b[1].waiting = 3;
  b[2].inflight = 1;  /* fresher than the scrape of 0 */
  b[3].running = 4;
  const char *why;
  ck_assert_int_eq(route(NULL, NULL, b, n, &why), 2);
  ck_assert_str_eq(why, "least_loaded");
  b[2].inflight = 6;
  ck_assert_int_eq(route(NULL, NULL, b, n, NULL), 3);
  unload();
  /* two choices: never the busiest of four over many picks */
  load("basic", "least_loaded", "least-loaded", "choices = 2; seed = 7;");
  n = fleet(b, 4, -1);
  b[0].running = 100;
  b[1].running = b[2].running = b[3].running = 1;
  int busiest = 0;
  for (int i = 0; i < 200; i++) busiest += route(NULL, NULL, b, n, NULL) == 0;
  ck_assert_int_eq(busiest, 0);
  unload();
}
END_TEST

START_TEST(session_is_consistent) {
  load("session", "session", "session", "replicas = 32;");
  struct strata_route_backend b[5];
  size_t n = fleet(b, 5, -1);
  int32_t owner[64];
  char key[32];
  struct hdrs h = {"X-Session-Id", key};
  int used[5] = {0};
  for (int k = 0; k < 64; k++) {
    snprintf(key, sizeof key, "session-%d", k);
    const char *why;
    owner[k] = route(NULL, &h, b, n, &why);
    ck_assert_str_eq(why, "session_hash");
    used[owner[k]] = 1;
    ck_assert_int_eq(route(NULL, &h, b, n, NULL), owner[k]); /* again: the same */
  }
  for (int i = 0; i < 5; i++) ck_assert_msg(used[i], "instance %d owns none of 64 keys", i);
  /* instance 2 leaves: only its keys move */
  n = fleet(b, 5, 2);
  for (int k = 0; k < 64; k++) {
    snprintf(key, sizeof key, "session-%d", k);
    const char *why;
    const int32_t id = route(NULL, &h, b, n, &why);
    if (owner[k] != 2) {
      ck_assert_int_eq(id, owner[k]);
      ck_assert_str_eq(why, "session_hash");
    } else {
      ck_assert_str_eq(why, "session_moved");
    }
  }
  /* the body field, a dotted path; an integer key */
  h.name = NULL;
  json_t *body = json_pack("{s:{s:i}}", "metadata", "session_id", 42);
  unload();
  load("session", "session", "session", "field = \"metadata.session_id\";");
  n = fleet(b, 5, -1);
  const char *why;
  const int32_t a = route(body, &h, b, n, &why);
  ck_assert_str_eq(why, "session_hash");
  ck_assert_int_eq(route(body, &h, b, n, NULL), a);
  json_decref(body);
  body = json_pack("{s:s}", "prompt", "no key here");
  route(body, &h, b, n, &why);
  ck_assert_str_eq(why, "no_session_key");
  json_decref(body);
  unload();
}
END_TEST

static json_t *prompt(const char *doc, int q) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s Question %d?", doc, q);
  return json_pack("{s:s}", "prompt", buf);
}

START_TEST(prefix_aware_matches_and_spills) {
  load("prefix", "prefix_aware", "prefix-aware",
       "chunk_bytes = 16; min_match_bytes = 64; max_imbalance = 2; max_entries = 64;");
  struct strata_route_backend b[5];
  size_t n = fleet(b, 3, -1);
  const char *docA = "A long shared document about gardens, rivers and the many boats on them.";
  const char *docB = "Quite another text: engines, pistons, valves and the oil that keeps them going.";
  const char *why;
  json_t *p = prompt(docA, 0);
  const int32_t a = route(p, NULL, b, n, &why);
  ck_assert_str_eq(why, "no_prefix_match");
  json_decref(p);
  b[a].inflight = 1; /* it is busy now, a little */
  for (int q = 1; q < 4; q++) {
    p = prompt(docA, q);
    ck_assert_int_eq(route(p, NULL, b, n, &why), a);
    ck_assert_str_eq(why, "prefix_match");
    json_decref(p);
  }
  /* B matches nothing: the least loaded, not a */
  p = prompt(docB, 0);
  const int32_t bb = route(p, NULL, b, n, &why);
  ck_assert_int_ne(bb, a);
  ck_assert_str_eq(why, "no_prefix_match");
  json_decref(p);
  /* a runs far ahead: A's questions spill to the least loaded */
  b[a].inflight = 10;
  p = prompt(docA, 9);
  const int32_t s = route(p, NULL, b, n, &why);
  ck_assert_int_ne(s, a);
  ck_assert_str_eq(why, "prefix_overloaded");
  json_decref(p);
  /* now two instances hold A: ties go by load, away from the busy one */
  p = prompt(docA, 10);
  ck_assert_int_eq(route(p, NULL, b, n, &why), s);
  ck_assert_str_eq(why, "prefix_match");
  json_decref(p);
  /* a chat's messages route as well; a short prompt does not count */
  json_t *chat = json_pack("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", docB);
  route(chat, NULL, b, n, &why);
  ck_assert_str_eq(why, "no_prefix_match"); /* a chat text is not a completion prompt */
  ck_assert_int_eq(route(chat, NULL, b, n, NULL), route(chat, NULL, b, n, &why));
  ck_assert_str_eq(why, "prefix_match");
  json_decref(chat);
  p = json_pack("{s:s}", "prompt", "short");
  route(p, NULL, b, n, &why);
  ck_assert_str_eq(why, "no_prefix_match");
  json_decref(p);
  /* the index is bounded (64 entries): many documents later, A is forgotten */
  for (int d = 0; d < 40; d++) {
    char doc[256];
    snprintf(doc, sizeof doc, "Filler document number %d with enough words to fill chunks.", d);
    p = prompt(doc, 0);
    route(p, NULL, b, n, NULL);
    json_decref(p);
  }
  b[a].inflight = 0;
  p = prompt(docA, 11);
  route(p, NULL, b, n, &why);
  ck_assert_str_eq(why, "no_prefix_match");
  json_decref(p);
  unload();
}
END_TEST

/* kv-aware: what the host says each instance holds decides */
static int32_t kv_held[5];
static int32_t kv_cached(const struct strata_route_request *r, int32_t id) {
  (void)r;
  return id >= 0 && id < 5 ? kv_held[id] : -1;
}

static int32_t route_kv(struct strata_route_backend *b, size_t n, const char **reason) {
  json_t *body = json_pack("{s:s}", "prompt", "x");
  struct strata_route_request r = {.id = 1, .path = "/v1/completions",
                                   .body = (const strata_json_t *)body, .header = hdr,
                                   .cached_tokens = kv_cached, .prompt_tokens = 200};
  struct strata_route_choice c = {.id = -1};
  ck_assert_int_eq(vt->route(state, &r, b, n, &c), 0);
  json_decref(body);
  int ok = 0;
  for (size_t i = 0; i < n; i++) ok |= b[i].id == c.id;
  ck_assert_msg(ok, "chose id %d, not one offered", c.id);
  *reason = c.reason;
  return c.id;
}

START_TEST(kv_aware_follows_the_caches) {
  load("kv", "kv_aware", "kv-aware", "min_match_tokens = 32; max_imbalance = 2;");
  ck_assert(vt->needs & STRATA_ROUTE_NEEDS_CACHE);
  struct strata_route_backend b[5];
  size_t n = fleet(b, 4, -1);
  const char *why;
  /* nobody knows: the least loaded */
  for (int i = 0; i < 5; i++) kv_held[i] = -1;
  b[0].inflight = 1;
  const int32_t u = route_kv(b, n, &why);
  ck_assert_str_eq(why, "kv_unknown");
  ck_assert_int_ne(u, 0);
  /* known, below the threshold: a miss, least loaded */
  kv_held[0] = 0, kv_held[1] = 16, kv_held[2] = 0, kv_held[3] = -1;
  b[1].inflight = 1;
  ck_assert_int_eq(route_kv(b, n, &why), 2);
  ck_assert_str_eq(why, "kv_miss");
  /* the longest wins, loaded or not (within the bound) */
  kv_held[3] = 160;
  kv_held[1] = 96;
  b[3].inflight = 2;
  ck_assert_int_eq(route_kv(b, n, &why), 3);
  ck_assert_str_eq(why, "kv_match");
  /* ties go to the less loaded */
  kv_held[1] = 160;
  ck_assert_int_eq(route_kv(b, n, &why), 1);
  ck_assert_str_eq(why, "kv_match");
  /* beyond the bound: the best match within it */
  b[1].inflight = 5;
  b[3].inflight = 5;
  kv_held[0] = 64;
  ck_assert_int_eq(route_kv(b, n, &why), 0);
  ck_assert_str_eq(why, "kv_match");
  /* and when none within the bound holds enough: the least loaded */
  kv_held[0] = 0;
  ck_assert_int_eq(route_kv(b, n, &why), 2);
  ck_assert_str_eq(why, "kv_overloaded");
  /* an ejected instance is not offered: its cache does not matter */
  n = fleet(b, 4, 3);
  kv_held[1] = 0;
  kv_held[0] = 48;
  ck_assert_int_eq(route_kv(b, n, &why), 0);
  ck_assert_str_eq(why, "kv_match");
  unload();
}
END_TEST

/* New workflows go where the fewest active workflows are, even when the
 * instances' loads say nothing (workflows in tool-call pauses send none). */
START_TEST(workflow_places_by_active_workflows) {
  load("workflow", "workflow_aware", "workflow-aware", "active_window = 0.2;");
  struct strata_route_backend b[5];
  size_t n = fleet(b, 3, -1);
  char id[32];
  struct hdrs h = {"X-Workflow-Id", id};
  int per[3] = {0, 0, 0};
  int32_t where[6];
  for (int k = 0; k < 6; k++) {
    snprintf(id, sizeof id, "w-%d", k);
    const int32_t at = route(NULL, &h, b, n, NULL);
    ck_assert(at >= 0 && at < 3);
    per[at]++;
    where[k] = at;
  }
  ck_assert_int_eq(per[0], 2);
  ck_assert_int_eq(per[1], 2);
  ck_assert_int_eq(per[2], 2);
  /* the router ends the two workflows on one instance (the hook is read
   * only where the vtable's size covers it): a new one goes there, busier
   * or not, and the ended ones start afresh */
  ck_assert(vt->size >= offsetof(struct strata_router_vtable, on_workflow_end) +
                           sizeof vt->on_workflow_end);
  ck_assert_ptr_nonnull(vt->on_workflow_end);
  const int32_t freed = where[0];
  for (int k = 0; k < 6; k++)
    if (where[k] == freed) {
      snprintf(id, sizeof id, "w-%d", k);
      vt->on_workflow_end(state, id, strlen(id));
    }
  vt->on_workflow_end(state, "never-seen", 10); /* unknown: nothing happens */
  b[freed].inflight = 3;
  snprintf(id, sizeof id, "w-after-end");
  ck_assert_int_eq(route(NULL, &h, b, n, NULL), freed);
  const char *why;
  snprintf(id, sizeof id, "w-0");
  ck_assert_int_eq(route(NULL, &h, b, n, &why), freed); /* 1 there, 2 elsewhere */
  ck_assert_str_eq(why, "workflow_new");
  b[freed].inflight = 0; /* two each again */
  /* load breaks ties among the fewest */
  b[0].inflight = 4;
  b[2].inflight = 1;
  snprintf(id, sizeof id, "w-tie");
  ck_assert_int_eq(route(NULL, &h, b, n, NULL), 1);
  /* the fewest active wins over a lighter load: instance 1 holds 3 now */
  b[1].inflight = 0;
  b[0].inflight = 9;
  snprintf(id, sizeof id, "w-next");
  ck_assert_int_eq(route(NULL, &h, b, n, NULL), 2);
  /* past the window none is active: load alone decides */
  usleep(300 * 1000);
  b[2].inflight = 5;
  snprintf(id, sizeof id, "w-late");
  ck_assert_int_eq(route(NULL, &h, b, n, NULL), 1);
  unload();
}
END_TEST

START_TEST(workflow_binds_moves_and_expires) {
  load("workflow", "workflow_aware", "workflow-aware", "max_imbalance = 3; idle_ttl = 0.2;");
  struct strata_route_backend b[5];
  size_t n = fleet(b, 3, -1);
  b[0].inflight = 1;
  b[2].inflight = 2;
  struct hdrs h = {"X-Workflow-Id", "wf-1"};
  const char *why;
  ck_assert_int_eq(route(NULL, &h, b, n, &why), 1); /* the least loaded */
  ck_assert_str_eq(why, "workflow_new");
  b[1].inflight = 3; /* busier now, within the bound */
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(route(NULL, &h, b, n, &why), 1);
    ck_assert_str_eq(why, "workflow_bound");
  }
  /* the body's metadata names another workflow: it starts on the least loaded */
  json_t *body = json_pack("{s:{s:s}}", "metadata", "workflow_id", "wf-2");
  ck_assert_int_eq(route(body, NULL, b, n, &why), 0);
  ck_assert_str_eq(why, "workflow_new");
  ck_assert_int_eq(route(body, NULL, b, n, &why), 0);
  ck_assert_str_eq(why, "workflow_bound");
  /* wf-1's instance runs 4 above the least loaded: it moves, and stays moved */
  b[1].inflight = 5;
  ck_assert_int_eq(route(NULL, &h, b, n, &why), 0);
  ck_assert_str_eq(why, "workflow_moved");
  b[1].inflight = 0;
  ck_assert_int_eq(route(NULL, &h, b, n, &why), 0);
  ck_assert_str_eq(why, "workflow_bound");
  /* its instance is ejected: moved */
  n = fleet(b, 3, 0);
  ck_assert_int_ne(route(NULL, &h, b, n, &why), 0);
  ck_assert_str_eq(why, "workflow_moved");
  /* idle past the TTL: the binding ended */
  usleep(300 * 1000);
  route(NULL, &h, b, n, &why);
  ck_assert_str_eq(why, "workflow_new");
  /* many workflows: the table grows and keeps every binding */
  n = fleet(b, 3, -1);
  int32_t first[300];
  char id[32];
  h.value = id;
  for (int k = 0; k < 300; k++) {
    snprintf(id, sizeof id, "many-%d", k);
    b[k % 3].inflight = k % 2; /* vary the least loaded */
    first[k] = route(NULL, &h, b, n, NULL);
  }
  for (int i = 0; i < 3; i++) b[i].inflight = 0;
  for (int k = 0; k < 300; k++) {
    snprintf(id, sizeof id, "many-%d", k);
    ck_assert_int_eq(route(NULL, &h, b, n, &why), first[k]);
    ck_assert_str_eq(why, "workflow_bound");
  }
  json_t *empty = json_object();
  route(empty, NULL, b, n, &why);
  ck_assert_str_eq(why, "no_workflow");
  json_decref(empty);
  json_decref(body);
  unload();
}
END_TEST

int main(void) {
  Suite *s = suite_create("router_policies");
  TCase *tc = tcase_create("route");
  tcase_add_test(tc, round_robin_in_turn_through_ejections);
  tcase_add_test(tc, least_loaded_picks_the_idle);
  tcase_add_test(tc, session_is_consistent);
  tcase_add_test(tc, prefix_aware_matches_and_spills);
  tcase_add_test(tc, workflow_binds_moves_and_expires);
  tcase_add_test(tc, workflow_places_by_active_workflows);
  tcase_add_test(tc, kv_aware_follows_the_caches);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
