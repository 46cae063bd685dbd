/* The fcfs scheduler plugin on synthetic views (no model): it loads as a
 * scheduler plugin, decodes before prefills, starts waiting requests in
 * (priority, arrival) order within the token budget, max_running and the
 * free blocks, chunks long prompts, and preempts the latest-started request
 * when blocks run out. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <strata/scheduler.h>

#include "conf.h"
#include "plugin_loader.h"
#include "testutil.h"

static struct strata_plugin plug;
static const struct strata_scheduler_vtable *vt;
static void *state;

static strata_config_t *plug_cfg;

/* Loads scheduler_<so>.so (plugin `name`) with its settings from the text
 * of a plugins.scheduler.<name> group body (NULL: defaults). */
static void load_with(const char *so, const char *name, const char *settings) {
  char path[4096], err[1024];
  snprintf(path, sizeof path, "%s/plugins/scheduler/fcfs/.libs/scheduler_%s.so", test_builddir(),
           so);
  ck_assert_msg(strata_plugin_load_file(path, &plug, err, sizeof err) == 0,
                "%s", err);
  ck_assert_int_eq(plug.desc->kind, STRATA_PLUGIN_SCHEDULER);
  ck_assert_str_eq(plug.desc->name, name);
  const strata_config_node_t *node = strata_config_plugin_node(NULL, &plug);
  if (settings) {
    char cpath[] = "/tmp/strata-fcfs-XXXXXX";
    int fd = mkstemp(cpath);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "plugins: { scheduler: { %s: { %s }; }; };\n", name, settings);
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
  vt = plug.desc->vt.scheduler;
  ck_assert_ptr_nonnull(vt);
  ck_assert_int_eq(vt->create(node, &state, err, sizeof err), 0);
}

/* Without the admission reserve, so that block arithmetic in a test is
 * only what the test spells out (test reserve_keeps_room covers it). */
/* The three builds of fcfs.c: shared object and plugin name. */
static const char *const build_so[] = {"fcfs", "prefix_aware", "affinity_group"};
static const char *const build_name[] = {"fcfs", "prefix-aware", "affinity-group"};

static void load(void) { load_with("fcfs", "fcfs", "reserve_ratio = 0.0;"); }

static void unload(void) {
  vt->destroy(state);
  state = NULL;
  free(plug.path); /* the handle stays open (DESIGN rule 10) */
  plug.path = NULL;
  if (plug_cfg) strata_config_free(plug_cfg);
  plug_cfg = NULL;
}

/* Synthetic blocks_for: each request has one sequence; cached prefix blocks
 * of a waiting request and held blocks of a running one are free. */
static int32_t blocks_for(const struct strata_sched_view *v, uint32_t i,
                          int32_t n_total) {
  const struct strata_sched_req *r = &v->reqs[i];
  int32_t want = (n_total + v->block_size - 1) / v->block_size;
  int32_t have = r->state == STRATA_SCHED_RUNNING ? r->blocks_held
                                                  : r->n_cached / v->block_size;
  return want > have ? (want - have) * r->n_choices : 0;
}

static struct strata_sched_req running_req(uint64_t id, int32_t n_prompt,
                                           int32_t n_computed, int32_t blocks) {
  return (struct strata_sched_req){.id = id,
                                   .state = STRATA_SCHED_RUNNING,
                                   .arrival = (double)id,
                                   .n_prompt = n_prompt,
                                   .n_computed = n_computed,
                                   .n_choices = 1,
                                   .max_tokens = 100,
                                   .blocks_held = blocks};
}

static struct strata_sched_req waiting_req(uint64_t id, int32_t prio,
                                           int32_t n_prompt, int32_t n_cached) {
  return (struct strata_sched_req){.id = id,
                                   .state = STRATA_SCHED_WAITING,
                                   .priority = prio,
                                   .arrival = (double)id,
                                   .n_prompt = n_prompt,
                                   .n_cached = n_cached,
                                   .n_choices = 1,
                                   .max_tokens = 100};
}

/* The view's extras for the next run() (prefix-aware). */
static double view_now;
static const int32_t *view_inflight;
static const uint64_t *view_next;

static int run(struct strata_sched_req *reqs, uint32_t nr, uint32_t nw,
               int32_t budget, int32_t max_running, int32_t free_blocks,
               struct strata_sched_decision *out) {
  struct strata_sched_view v = {.size = sizeof v,
                                .now = view_now,
                                .n_inflight = view_inflight,
                                .next_block = view_next,
                                .max_batch_tokens = budget,
                                .max_running = max_running,
                                .block_size = 16,
                                .free_blocks = free_blocks,
                                .total_blocks = 1000,
                                .reqs = reqs,
                                .n_running = nr,
                                .n_waiting = nw,
                                .blocks_for = blocks_for};
  char err[256] = "";
  int n = vt->schedule(state, &v, out, nr + nw, err, sizeof err);
  ck_assert_msg(n >= 0, "%s", err);
  return n;
}

#define CK_DEC(d, idx, act, n)                                                 \
  do {                                                                         \
    ck_assert_uint_eq((d).index, (idx));                                       \
    ck_assert_int_eq((d).action, (act));                                       \
    if ((act) == STRATA_SCHED_RUN) ck_assert_int_eq((d).n_tokens, (n));        \
  } while (0)

START_TEST(decodes_then_prefill_then_waiting_by_priority) {
  load();
  struct strata_sched_req r[6] = {
      running_req(1, 40, 10, 3), /* prefilling: 30 left */
      running_req(2, 20, 19, 2), /* decoding */
      running_req(3, 33, 32, 2), /* decoding, needs a new block */
      waiting_req(4, 0, 10, 0),
      waiting_req(5, -1, 8, 0), /* higher priority, later arrival */
      waiting_req(6, 0, 12, 0),
  };
  struct strata_sched_decision d[6];
  int n = run(r, 3, 3, 1000, 64, 100, d);
  ck_assert_int_eq(n, 6);
  CK_DEC(d[0], 1, STRATA_SCHED_RUN, 1);
  CK_DEC(d[1], 2, STRATA_SCHED_RUN, 1);
  CK_DEC(d[2], 0, STRATA_SCHED_RUN, 30);
  CK_DEC(d[3], 4, STRATA_SCHED_RUN, 8); /* priority -1 first */
  CK_DEC(d[4], 3, STRATA_SCHED_RUN, 10);
  CK_DEC(d[5], 5, STRATA_SCHED_RUN, 12);
  unload();
}
END_TEST

START_TEST(budget_chunks_prompts) {
  load();
  struct strata_sched_req r[3] = {
      running_req(1, 20, 19, 2),
      waiting_req(2, 0, 500, 0),
      waiting_req(3, 0, 5, 0),
  };
  struct strata_sched_decision d[3];
  int n = run(r, 1, 2, 64, 64, 100, d);
  /* the decode takes 1 token, the long prompt gets the other 63; none left */
  ck_assert_int_eq(n, 2);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 1);
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 63);
  /* the cached prefix is not computed again */
  r[1].n_cached = 480;
  n = run(r, 1, 2, 64, 64, 100, d);
  ck_assert_int_eq(n, 3);
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 20);
  CK_DEC(d[2], 2, STRATA_SCHED_RUN, 5);
  unload();
}
END_TEST

START_TEST(max_running_and_blocks_limit_starts) {
  load();
  struct strata_sched_req r[3] = {
      running_req(1, 20, 19, 2),
      waiting_req(2, 0, 64, 0), /* 4 blocks */
      waiting_req(3, 0, 5, 0),
  };
  struct strata_sched_decision d[3];
  int n = run(r, 1, 2, 1000, 2, 100, d);
  ck_assert_int_eq(n, 2); /* max_running 2: only one starts */
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 64);
  /* two free blocks: the first waiting request's whole prompt needs four,
   * so it does not start, and the next one must not overtake it */
  n = run(r, 1, 2, 1000, 64, 2, d);
  ck_assert_int_eq(n, 1);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 1);
  /* no free block at all: nothing starts */
  n = run(r, 1, 2, 1000, 64, 0, d);
  ck_assert_int_eq(n, 1);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 1);
  unload();
  /* without admit_whole_prompt it gets a 32-token chunk, still in order */
  load_with("fcfs", "fcfs", "reserve_ratio = 0.0; admit_whole_prompt = false;");
  n = run(r, 1, 2, 1000, 64, 2, d);
  ck_assert_int_eq(n, 2);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 1);
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 32);
  unload();
}
END_TEST

START_TEST(whole_prompt_admission) {
  /* A waiting prompt starts only when the blocks of all of it are free
   * (beyond the reserve), unless nothing runs; its cached prefix is not
   * charged. In every build. */
  for (int k = 0; k < 3; k++) {
    load_with(build_so[k], build_name[k], "reserve_ratio = 0.0;");
    struct strata_sched_req r[2] = {
        running_req(1, 20, 19, 2),
        waiting_req(2, 0, 64, 0), /* 4 blocks */
    };
    struct strata_sched_decision d[2];
    int n = run(r, 1, 1, 32, 64, 3, d); /* budget 32: chunked either way */
    ck_assert_int_eq(n, 1);
    n = run(r, 1, 1, 32, 64, 4, d);
    ck_assert_int_eq(n, 2);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 31); /* the decode took 1 of 32 */
    /* nothing running: the chunk that fits starts */
    n = run(r + 1, 0, 1, 1000, 64, 3, d);
    ck_assert_int_eq(n, 1);
    CK_DEC(d[0], 0, STRATA_SCHED_RUN, 48);
    /* 32 tokens cached: the 2 blocks of the rest suffice */
    r[1].n_cached = 32;
    n = run(r, 1, 1, 1000, 64, 2, d);
    ck_assert_int_eq(n, 2);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 32);
    unload();
  }
}
END_TEST

START_TEST(preempts_latest_started) {
  load();
  /* three decoding requests at a block boundary, no free block: the first
   * needs one; the last started (index 2) is preempted for it, then the
   * second fits into what that freed */
  struct strata_sched_req r[4] = {
      running_req(1, 33, 32, 2),
      running_req(2, 33, 32, 2),
      running_req(3, 33, 32, 2),
      waiting_req(4, 0, 5, 0),
  };
  struct strata_sched_decision d[4];
  int n = run(r, 3, 1, 1000, 64, 0, d);
  ck_assert_int_eq(n, 3);
  CK_DEC(d[0], 2, STRATA_SCHED_PREEMPT, 0);
  CK_DEC(d[1], 0, STRATA_SCHED_RUN, 1);
  CK_DEC(d[2], 1, STRATA_SCHED_RUN, 1);
  /* a lower priority (larger value) request goes first even if older */
  r[0].priority = 5;
  n = run(r, 3, 1, 1000, 64, 0, d);
  ck_assert_int_ge(n, 2);
  CK_DEC(d[0], 0, STRATA_SCHED_PREEMPT, 0);
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 1);
  /* alone and out of blocks: it steps back itself */
  n = run(r, 1, 0, 1000, 64, 0, d);
  ck_assert_int_eq(n, 1);
  CK_DEC(d[0], 0, STRATA_SCHED_PREEMPT, 0);
  unload();
}
END_TEST

START_TEST(no_start_in_a_step_that_preempts) {
  /* the last started request holds 4 blocks; preempting it for the first
   * one's new block leaves 2 free after both decodes, enough for the
   * waiting request's 1 block, but a step that had to preempt starts no
   * one (vLLM V1's rule: it would only preempt again next step) */
  for (int k = 0; k < 3; k++) {
    load_with(build_so[k], build_name[k], "reserve_ratio = 0.0;");
    struct strata_sched_req r[4] = {
        running_req(1, 33, 32, 2),
        running_req(2, 33, 32, 2),
        running_req(3, 60, 59, 4),
        waiting_req(4, 0, 5, 0),
    };
    struct strata_sched_decision d[4];
    int n = run(r, 3, 1, 1000, 64, 0, d);
    ck_assert_int_eq(n, 3);
    CK_DEC(d[0], 2, STRATA_SCHED_PREEMPT, 0);
    CK_DEC(d[1], 0, STRATA_SCHED_RUN, 1);
    CK_DEC(d[2], 1, STRATA_SCHED_RUN, 1);
    /* with one block free from the start nobody is preempted, so it starts */
    n = run(r, 3, 1, 1000, 64, 3, d);
    ck_assert_int_eq(n, 4);
    CK_DEC(d[3], 3, STRATA_SCHED_RUN, 5);
    unload();
  }
}
END_TEST

START_TEST(reserve_keeps_room) {
  /* One request decodes (20 tokens, 2 blocks, up to 100 more tokens). At
   * the default ratio 0.7 admission keeps the blocks of 70 more tokens
   * free for it: ceil(90/16) - ceil(20/16) = 4 blocks. */
  for (int k = 0; k < 3; k++) {
    /* the reserve's effect on the chunk that fits (whole_prompt_admission
     * tests the rule that would hold these prompts back) */
    load_with(build_so[k], build_name[k], "admit_whole_prompt = false;");
    struct strata_sched_req r[4] = {
        running_req(1, 20, 19, 2),
        waiting_req(2, 0, 64, 0), /* 4 blocks */
        running_req(3, 33, 32, 2), /* for the preempting step below */
        running_req(4, 60, 59, 4),
    };
    struct strata_sched_decision d[4];
    int n = run(r, 1, 1, 1000, 64, 8, d); /* 8 - 4 free: all of it */
    ck_assert_int_eq(n, 2);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 64);
    n = run(r, 1, 1, 1000, 64, 6, d); /* 6 - 4: a 2-block chunk */
    ck_assert_int_eq(n, 2);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 32);
    n = run(r, 1, 1, 1000, 64, 4, d); /* nothing left beyond the reserve */
    ck_assert_int_eq(n, 1);
    /* a request that will not generate more needs no reserve */
    r[0].n_generated = 100;
    n = run(r, 1, 1, 1000, 64, 4, d);
    ck_assert_int_eq(n, 2);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 64);
    r[0].n_generated = 0;
    /* a step that preempts for blocks raises the ratio to 0.8: 5 blocks */
    struct strata_sched_req p[3] = {r[2], r[2], r[3]};
    p[1].id = 5;
    n = run(p, 3, 0, 1000, 64, 0, d);
    ck_assert_int_ge(n, 1);
    CK_DEC(d[0], 2, STRATA_SCHED_PREEMPT, 0);
    n = run(r, 1, 1, 1000, 64, 8, d); /* 8 - 5: 3 blocks */
    ck_assert_int_eq(n, 2);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 48);
    /* ... and it decays back by 0.001 a step */
    for (int i = 0; i < 120; i++) run(r, 1, 0, 1000, 64, 8, d);
    n = run(r, 1, 1, 1000, 64, 8, d);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 64);
    unload();
    /* reserve_ratio = 0: no reserve */
    load_with(build_so[k], build_name[k], "reserve_ratio = 0.0; admit_whole_prompt = false;");
    n = run(r, 1, 1, 1000, 64, 4, d);
    ck_assert_int_eq(n, 2);
    CK_DEC(d[1], 1, STRATA_SCHED_RUN, 64);
    unload();
  }
}
END_TEST

START_TEST(n_choices_cost_budget) {
  load();
  struct strata_sched_req r[2] = {running_req(1, 20, 19, 6),
                                  waiting_req(2, 0, 100, 0)};
  r[0].n_choices = 3; /* 3 sequences decode: 3 tokens of budget */
  r[1].n_choices = 1;
  struct strata_sched_decision d[2];
  int n = run(r, 1, 1, 10, 64, 100, d);
  ck_assert_int_eq(n, 2);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 1);
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 7);
  unload();
}
END_TEST

/* Which waiting request (index) got a RUN, -1: none. */
static int64_t first_started(const struct strata_sched_decision *d, int n, uint32_t nr) {
  for (int k = 0; k < n; k++)
    if (d[k].action == STRATA_SCHED_RUN && d[k].index >= nr) return d[k].index;
  return -1;
}

START_TEST(prefix_aware_longest_cached_first) {
  struct strata_sched_req r[4] = {
      running_req(1, 20, 19, 2),
      waiting_req(2, 0, 100, 0),
      waiting_req(3, 0, 100, 32),
      waiting_req(4, 0, 100, 64),
  };
  struct strata_sched_decision d[4];
  view_now = 6; /* all have waited less than max_wait (5 s) */
  /* one seat left: fcfs starts the oldest, prefix-aware the best cached */
  load();
  ck_assert_int_eq(first_started(d, run(r, 1, 3, 1000, 2, 100, d), 1), 1);
  unload();
  load_with("prefix_aware", "prefix-aware", NULL);
  ck_assert_int_eq(first_started(d, run(r, 1, 3, 1000, 2, 100, d), 1), 3);
  /* a higher priority still comes first */
  r[1].priority = -1;
  ck_assert_int_eq(first_started(d, run(r, 1, 3, 1000, 2, 100, d), 1), 1);
  unload();
  view_now = 0;
}
END_TEST

/* A request with nothing cached keeps losing to luckier newcomers until it
 * has waited max_wait seconds; then it goes first. */
START_TEST(prefix_aware_no_starvation) {
  load_with("prefix_aware", "prefix-aware", "max_wait = 3.0;");
  struct strata_sched_req r[2];
  struct strata_sched_decision d[2];
  int started_at = -1;
  for (int t = 1; t <= 20 && started_at < 0; t++) {
    view_now = t;
    r[0] = waiting_req(1, 0, 100, 0);
    r[0].arrival = 0.5;
    r[1] = waiting_req(100 + (uint64_t)t, 0, 100, 64); /* a new lucky one each step */
    r[1].arrival = t - 0.1;
    int n = run(r, 0, 2, 1000, 1, 100, d);
    if (first_started(d, n, 0) == 0) started_at = t;
  }
  ck_assert_int_eq(started_at, 4); /* waited 3.5 s > max_wait */
  unload();
  view_now = 0;
}
END_TEST

START_TEST(prefix_aware_waits_for_inflight) {
  load_with("prefix_aware", "prefix-aware", NULL);
  view_now = 1;
  struct strata_sched_req r[4] = {
      running_req(1, 200, 64, 4), /* prefilling a shared document */
      waiting_req(2, 0, 200, 0),  /* its next blocks are in flight */
      waiting_req(3, 0, 50, 0),
      waiting_req(4, 0, 60, 0),
  };
  const int32_t inflight[4] = {0, 128, 0, 0};
  const uint64_t next[4] = {0, 11, 22, 22}; /* 3 and 4 share their first block */
  view_inflight = inflight;
  view_next = next;
  struct strata_sched_decision d[4];
  int n = run(r, 1, 3, 1000, 10, 100, d);
  int ran[4] = {0};
  for (int k = 0; k < n; k++)
    if (d[k].action == STRATA_SCHED_RUN) ran[d[k].index] = 1;
  ck_assert(ran[0]);  /* the running prefill goes on */
  ck_assert(!ran[1]); /* waits for the blocks being computed ... */
  ck_assert(ran[2]);  /* ... without holding back the others */
  ck_assert(!ran[3]); /* shares 2's first uncached block: waits a step */
  /* an aged request does not wait */
  view_now = 100;
  n = run(r, 1, 3, 1000, 10, 100, d);
  memset(ran, 0, sizeof ran);
  for (int k = 0; k < n; k++)
    if (d[k].action == STRATA_SCHED_RUN) ran[d[k].index] = 1;
  ck_assert(ran[1] && ran[2] && ran[3]);
  view_inflight = NULL;
  view_next = NULL;
  view_now = 0;
  unload();
}
END_TEST

START_TEST(priority_preemption) {
  struct strata_sched_req r[3] = {
      running_req(1, 30, 29, 2),
      running_req(2, 30, 29, 2),
      waiting_req(3, -5, 20, 0), /* more urgent than both */
  };
  r[0].priority = 0;
  r[1].priority = 3;
  struct strata_sched_decision d[3];
  /* off by default: the seat stays taken */
  load();
  int n = run(r, 2, 1, 1000, 2, 100, d);
  for (int k = 0; k < n; k++) ck_assert_int_eq(d[k].action, STRATA_SCHED_RUN);
  ck_assert_int_eq(first_started(d, n, 2), -1);
  unload();
  for (int pa = 0; pa < 2; pa++) {
    if (pa)
      load_with("prefix_aware", "prefix-aware", "priority_preemption = true;");
    else
      load_with("fcfs", "fcfs", "priority_preemption = true;");
    n = run(r, 2, 1, 1000, 2, 100, d);
    ck_assert_int_ge(n, 2);
    CK_DEC(d[0], 1, STRATA_SCHED_PREEMPT, 0); /* the lowest priority goes */
    ck_assert_int_eq(first_started(d, n, 2), 2);
    for (int k = 0; k < n; k++) ck_assert(!(d[k].index == 0 && d[k].action == STRATA_SCHED_PREEMPT));
    /* an equal priority never preempts */
    r[2].priority = 3;
    n = run(r, 2, 1, 1000, 2, 100, d);
    for (int k = 0; k < n; k++) ck_assert_int_eq(d[k].action, STRATA_SCHED_RUN);
    r[2].priority = -5;
    unload();
  }
}
END_TEST

START_TEST(affinity_group_admits_together) {
  struct strata_sched_decision d[4];
  /* a group's members start together: A then C (pulled), not B */
  struct strata_sched_req w[3] = {waiting_req(2, 0, 20, 0), waiting_req(3, 0, 20, 0),
                                  waiting_req(4, 0, 20, 0)};
  w[0].group = 9;
  w[2].group = 9;
  load();
  int n = run(w, 0, 3, 1000, 2, 100, d);
  ck_assert_int_eq(n, 2);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 20);
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 20);
  unload();
  load_with("affinity_group", "affinity-group", NULL);
  n = run(w, 0, 3, 1000, 2, 100, d);
  ck_assert_int_eq(n, 2);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 20);
  CK_DEC(d[1], 2, STRATA_SCHED_RUN, 20);
  /* a group with running members goes first */
  struct strata_sched_req r[3] = {running_req(1, 30, 29, 2), waiting_req(2, 0, 20, 0),
                                  waiting_req(3, 0, 20, 0)};
  r[0].group = 5;
  r[2].group = 5;
  n = run(r, 1, 2, 1000, 2, 100, d);
  ck_assert_int_eq(first_started(d, n, 1), 2);
  /* but never ahead of a higher priority */
  r[1].priority = -1;
  n = run(r, 1, 2, 1000, 2, 100, d);
  ck_assert_int_eq(first_started(d, n, 1), 1);
  unload();
}
END_TEST

int main(void) {
  Suite *s = suite_create("fcfs");
  TCase *tc = tcase_create("decisions");
  tcase_add_test(tc, decodes_then_prefill_then_waiting_by_priority);
  tcase_add_test(tc, budget_chunks_prompts);
  tcase_add_test(tc, max_running_and_blocks_limit_starts);
  tcase_add_test(tc, preempts_latest_started);
  tcase_add_test(tc, no_start_in_a_step_that_preempts);
  tcase_add_test(tc, reserve_keeps_room);
  tcase_add_test(tc, whole_prompt_admission);
  tcase_add_test(tc, n_choices_cost_budget);
  tcase_add_test(tc, prefix_aware_longest_cached_first);
  tcase_add_test(tc, prefix_aware_no_starvation);
  tcase_add_test(tc, prefix_aware_waits_for_inflight);
  tcase_add_test(tc, priority_preemption);
  tcase_add_test(tc, affinity_group_admits_together);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
