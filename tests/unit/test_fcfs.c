/* The fcfs scheduler plugin on synthetic views (no model): it loads as a
 * scheduler plugin, decodes before prefills, starts waiting requests in
 * (priority, arrival) order within the token budget, max_running and the
 * free blocks, chunks long prompts, and preempts the latest-started request
 * when blocks run out. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <strata/scheduler.h>

#include "conf.h"
#include "plugin_loader.h"
#include "testutil.h"

static struct strata_plugin plug;
static const struct strata_scheduler_vtable *vt;
static void *state;

static void load(void) {
  char path[4096], err[1024];
  snprintf(path, sizeof path,
           "%s/plugins/scheduler/fcfs/.libs/scheduler_fcfs.so",
           test_builddir());
  ck_assert_msg(strata_plugin_load_file(path, &plug, err, sizeof err) == 0,
                "%s", err);
  ck_assert_int_eq(plug.desc->kind, STRATA_PLUGIN_SCHEDULER);
  ck_assert_str_eq(plug.desc->name, "fcfs");
  ck_assert_int_eq(strata_plugin_init(&plug, NULL, err, sizeof err), 0);
  vt = plug.desc->vt.scheduler;
  ck_assert_ptr_nonnull(vt);
  ck_assert_int_eq(vt->create(strata_config_plugin_node(NULL, &plug), &state,
                              err, sizeof err),
                   0);
}

static void unload(void) {
  vt->destroy(state);
  state = NULL;
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

static int run(struct strata_sched_req *reqs, uint32_t nr, uint32_t nw,
               int32_t budget, int32_t max_running, int32_t free_blocks,
               struct strata_sched_decision *out) {
  struct strata_sched_view v = {.size = sizeof v,
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
  /* two free blocks: the first waiting request gets a 32-token chunk and
   * the next one must not overtake it */
  n = run(r, 1, 2, 1000, 64, 2, d);
  ck_assert_int_eq(n, 2);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 1);
  CK_DEC(d[1], 1, STRATA_SCHED_RUN, 32);
  /* no free block at all: nothing starts */
  n = run(r, 1, 2, 1000, 64, 0, d);
  ck_assert_int_eq(n, 1);
  CK_DEC(d[0], 0, STRATA_SCHED_RUN, 1);
  unload();
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

int main(void) {
  Suite *s = suite_create("fcfs");
  TCase *tc = tcase_create("decisions");
  tcase_add_test(tc, decodes_then_prefill_then_waiting_by_priority);
  tcase_add_test(tc, budget_chunks_prompts);
  tcase_add_test(tc, max_running_and_blocks_limit_starts);
  tcase_add_test(tc, preempts_latest_started);
  tcase_add_test(tc, n_choices_cost_budget);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
