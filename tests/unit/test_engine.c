/* The serving engine on stories260K: greedy answers equal the independent
 * reference, batching/chunking/preemption/forking never change an answer,
 * stop strings and limits finish choices correctly, cancel and release
 * return every KV block, prefix caching reports cached tokens, and submit
 * refuses what it must (EFULL, EINVAL). */
#include "config.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "engine_util.h"
#include "runtime.h"
#include "refs.h"
#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

static void load_refs(void) { load_refs_with(0); }

static void expect_ref(const struct coll *c, const struct ref *r) {
  ck_assert_int_eq(c->n_toks[0], r->n_greedy);
  for (int i = 0; i < r->n_greedy; i++)
    ck_assert_msg(c->toks[0][i] == r->greedy[i],
                  "prompt '%s': token %d is %d, want %d", r->prompt, i,
                  c->toks[0][i], r->greedy[i]);
  ck_assert_msg(strcmp(c->text[0], r->greedy_text) == 0,
                "prompt '%s':\n got: %s\nwant: %s", r->prompt, c->text[0],
                r->greedy_text);
}

/* ---- tests
 * ---------------------------------------------------------------------------
 */

START_TEST(greedy_equals_reference) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static struct coll c[16];
  for (int i = 0; i < n_refs; i++) {
    coll_init(&c[i]);
    struct strata_request_params p = greedy_params(
        refs[i].prompt_tokens, refs[i].n_prompt, refs[i].n_greedy);
    submit(&p, &c[i]);
    finish(&c[i]);
    expect_ref(&c[i], &refs[i]);
    /* the reference stops at an end token (finish "stop") or at its length */
    int ended =
        refs[i].greedy[refs[i].n_greedy - 1] == strata_tokenizer_bos(rt.tok) ||
        refs[i].greedy[refs[i].n_greedy - 1] == strata_tokenizer_eos(rt.tok);
    ck_assert_int_eq(c[i].fin[0],
                     ended ? STRATA_FINISH_STOP : STRATA_FINISH_LENGTH);
    ck_assert_int_eq(c[i].prompt_tokens, refs[i].n_prompt);
    ck_assert_int_eq(c[i].completion_tokens, refs[i].n_greedy);
  }
  /* all together */
  for (int i = 0; i < n_refs; i++) {
    coll_init(&c[i]);
    struct strata_request_params p = greedy_params(
        refs[i].prompt_tokens, refs[i].n_prompt, refs[i].n_greedy);
    submit(&p, &c[i]);
  }
  for (int i = 0; i < n_refs; i++) {
    finish(&c[i]);
    expect_ref(&c[i], &refs[i]);
  }
  check_no_leak();
  struct strata_engine_metrics m;
  strata_engine_get_metrics(eng, &m);
  ck_assert_uint_eq(m.requests_finished[STRATA_FINISH_STOP] +
                        m.requests_finished[STRATA_FINISH_LENGTH],
                    2 * (uint64_t)n_refs);
  ck_assert_uint_eq(m.ttft.count, 2 * (uint64_t)n_refs);
  ck_assert_uint_eq(m.e2e.count, 2 * (uint64_t)n_refs);
  ck_assert_uint_eq(m.queue.count, 2 * (uint64_t)n_refs);
  ck_assert_uint_gt(m.itl.count, 0);
  ck_assert_uint_eq(m.scheduler_refusals_total, 0);
  uint64_t gen = 0;
  for (int i = 0; i < n_refs; i++)
    gen += 2 * (uint64_t)refs[i].n_greedy;
  ck_assert_uint_eq(m.generation_tokens_total, gen);
  stop();
}
END_TEST

/* 32 prompts: reference prompts extended by k of their greedy tokens, with
 * different lengths and a few sampled with a seed. */
#define NCONC 32
static int32_t conc_prompt[NCONC][300];
static int conc_n[NCONC], conc_max[NCONC];

static struct strata_request_params conc_params(int j) {
  const struct ref *r = &refs[j % n_refs];
  int k = (j * 7) % 40;
  memcpy(conc_prompt[j], r->prompt_tokens,
         sizeof(int32_t) * (size_t)r->n_prompt);
  memcpy(conc_prompt[j] + r->n_prompt, r->greedy, sizeof(int32_t) * (size_t)k);
  conc_n[j] = r->n_prompt + k;
  conc_max[j] = 8 + (j * 13) % 60;
  struct strata_request_params p =
      greedy_params(conc_prompt[j], conc_n[j], conc_max[j]);
  if (j % 5 == 0) {
    p.sampling.temperature = 0.7f;
    p.sampling.seed = 1000 + (uint64_t)j;
  }
  return p;
}

/* Asks the cache stats in a loop while the engine runs (any thread, any
 * time: ASan and the block-sum invariant catch a race). */
static atomic_int hammer_stop;
static void *stats_hammer(void *arg) {
  const struct ref *r = arg;
  long calls = 0;
  while (!atomic_load(&hammer_stop)) {
    struct strata_cache_stats cs = {.size = sizeof cs};
    ck_assert_int_eq(strata_cache_stats(eng, r->prompt_tokens, (size_t)r->n_prompt, &cs), 0);
    ck_assert_int_le(cs.cached_tokens, r->n_prompt - 1);
    ck_assert_int_eq(cs.free_blocks + cs.used_blocks + cs.evictable_blocks, cs.total_blocks);
    calls++;
  }
  return (void *)calls;
}

static void run_concurrent(const struct strata_engine_config *cfg,
                           int check_preempt) {
  start(cfg);
  static struct coll solo[NCONC], all[NCONC];
  for (int j = 0; j < NCONC; j++) {
    coll_init(&solo[j]);
    struct strata_request_params p = conc_params(j);
    submit(&p, &solo[j]);
    finish(&solo[j]);
    ck_assert_int_ge(solo[j].n_toks[0], 1);
  }
  check_no_leak();
  pthread_t hammer;
  atomic_store(&hammer_stop, 0);
  ck_assert_int_eq(pthread_create(&hammer, NULL, stats_hammer, &refs[0]), 0);
  for (int j = 0; j < NCONC; j++) {
    coll_init(&all[j]);
    struct strata_request_params p = conc_params(j);
    submit(&p, &all[j]);
  }
  for (int j = 0; j < NCONC; j++) {
    finish(&all[j]);
    ck_assert_int_eq(all[j].n_toks[0], solo[j].n_toks[0]);
    for (int t = 0; t < solo[j].n_toks[0]; t++)
      ck_assert_msg(all[j].toks[0][t] == solo[j].toks[0][t],
                    "request %d token %d: %d, solo %d", j, t, all[j].toks[0][t],
                    solo[j].toks[0][t]);
    ck_assert_str_eq(all[j].text[0], solo[j].text[0]);
    ck_assert_int_eq(all[j].fin[0], solo[j].fin[0]);
  }
  atomic_store(&hammer_stop, 1);
  void *calls;
  pthread_join(hammer, &calls);
  ck_assert_int_gt((long)calls, 0);
  check_no_leak();
  struct strata_engine_metrics m;
  strata_engine_get_metrics(eng, &m);
  if (check_preempt) ck_assert_uint_gt(m.preemptions_total, 0);
  fprintf(stderr, "concurrent: %llu steps, %llu preemptions, %llu refusals\n",
          (unsigned long long)m.steps_total,
          (unsigned long long)m.preemptions_total,
          (unsigned long long)m.scheduler_refusals_total);
  stop();
}

START_TEST(concurrent_equal_solo) {
  struct strata_engine_config cfg = defaults();
  run_concurrent(&cfg, 0);
}
END_TEST

/* Another policy reorders and defers, never changes an answer. */
START_TEST(concurrent_prefix_aware) {
  struct strata_engine_config cfg = defaults();
  cfg.scheduler = "prefix-aware";
  cfg.max_batch_tokens = 64; /* prefills span steps: in-flight blocks exist */
  run_concurrent(&cfg, 0);
}
END_TEST

START_TEST(concurrent_without_prefix_caching) {
  struct strata_engine_config cfg = defaults();
  cfg.prefix_caching = 0;
  run_concurrent(&cfg, 0);
}
END_TEST

START_TEST(tiny_cache_preempts_same_answers) {
  struct strata_engine_config cfg = defaults();
  cfg.block_size = 4;
  cfg.kv_tokens = 4 * 40; /* 40 blocks: a few requests at a time */
  run_concurrent(&cfg, 1);
}
END_TEST

START_TEST(chunked_prefill_same_tokens) {
  struct strata_engine_config cfg = defaults();
  cfg.max_batch_tokens = 7;
  cfg.block_size = 4;
  start(&cfg);
  static struct coll c[16];
  /* long prompts: reference prompt + 30 greedy tokens, answer checked
   * against the rest of the reference */
  for (int i = 0; i < n_refs; i++) {
    coll_init(&c[i]);
    static int32_t pr[16][300];
    int k = 30;
    memcpy(pr[i], refs[i].prompt_tokens,
           sizeof(int32_t) * (size_t)refs[i].n_prompt);
    memcpy(pr[i] + refs[i].n_prompt, refs[i].greedy,
           sizeof(int32_t) * (size_t)k);
    struct strata_request_params p =
        greedy_params(pr[i], refs[i].n_prompt + k, refs[i].n_greedy - k);
    p.ignore_eos = 1;
    submit(&p, &c[i]);
  }
  for (int i = 0; i < n_refs; i++) {
    finish(&c[i]);
    ck_assert_int_eq(c[i].n_toks[0], refs[i].n_greedy - 30);
    for (int t = 0; t < c[i].n_toks[0]; t++)
      ck_assert_int_eq(c[i].toks[0][t], refs[i].greedy[30 + t]);
    ck_assert_int_eq(c[i].fin[0], STRATA_FINISH_LENGTH);
  }
  check_no_leak();
  stop();
}
END_TEST

START_TEST(n_choices_equal_seeded_solo) {
  struct strata_engine_config cfg = defaults();
  cfg.block_size = 4; /* a prompt of 5 leaves a partial block to copy */
  start(&cfg);
  const struct ref *r = &refs[0];
  static struct coll multi, solo[3];
  coll_init(&multi);
  struct strata_request_params p =
      greedy_params(r->prompt_tokens, r->n_prompt, 40);
  p.sampling.temperature = 1.0f;
  p.sampling.seed = 42;
  p.n = 3;
  p.ignore_eos = 1;
  submit(&p, &multi);
  finish(&multi);
  ck_assert_int_eq(multi.completion_tokens, 120);
  int differ = 0;
  for (int i = 0; i < 3; i++) {
    coll_init(&solo[i]);
    struct strata_request_params q = p;
    q.n = 1;
    q.sampling.seed = 42 + (uint64_t)i;
    submit(&q, &solo[i]);
    finish(&solo[i]);
    ck_assert_int_eq(multi.n_toks[i], 40);
    ck_assert_int_eq(solo[i].n_toks[0], 40);
    for (int t = 0; t < 40; t++)
      ck_assert_msg(multi.toks[i][t] == solo[i].toks[0][t],
                    "choice %d token %d: %d, solo %d", i, t, multi.toks[i][t],
                    solo[i].toks[0][t]);
    ck_assert_str_eq(multi.text[i], solo[i].text[0]);
    ck_assert_int_eq(multi.fin[i], STRATA_FINISH_LENGTH);
    if (i && memcmp(multi.toks[i], multi.toks[0], sizeof(int32_t) * 40) != 0)
      differ = 1;
  }
  ck_assert_msg(differ, "three sampled choices came out identical");
  check_no_leak();
  stop();
}
END_TEST

/* n = 2 requests competing for a tiny cache: forks fail or get preempted
 * and recomputed, and every choice still equals its seeded solo run. */
START_TEST(n_choices_under_preemption) {
  struct strata_engine_config cfg = defaults();
  cfg.block_size = 4;
  cfg.kv_tokens = 4 * 30;
  start(&cfg);
  enum { NR = 4 };
  static struct coll multi[NR], solo[NR][2];
  struct strata_request_params p[NR];
  for (int j = 0; j < NR; j++) {
    const struct ref *r = &refs[j % n_refs];
    p[j] = greedy_params(r->prompt_tokens, r->n_prompt, 30 + 5 * j);
    p[j].sampling.temperature = 1.0f;
    p[j].sampling.seed = 7 + 100 * (uint64_t)j;
    p[j].n = 2;
    p[j].ignore_eos = 1;
    coll_init(&multi[j]);
    submit(&p[j], &multi[j]);
  }
  for (int j = 0; j < NR; j++)
    finish(&multi[j]);
  check_no_leak();
  struct strata_engine_metrics m;
  strata_engine_get_metrics(eng, &m);
  ck_assert_uint_gt(m.preemptions_total, 0);
  for (int j = 0; j < NR; j++)
    for (int i = 0; i < 2; i++) {
      coll_init(&solo[j][i]);
      struct strata_request_params q = p[j];
      q.n = 1;
      q.sampling.seed = p[j].sampling.seed + (uint64_t)i;
      submit(&q, &solo[j][i]);
      finish(&solo[j][i]);
      ck_assert_int_eq(multi[j].n_toks[i], p[j].max_tokens);
      ck_assert_int_eq(solo[j][i].n_toks[0], p[j].max_tokens);
      for (int t = 0; t < p[j].max_tokens; t++)
        ck_assert_msg(multi[j].toks[i][t] == solo[j][i].toks[0][t],
                      "request %d choice %d token %d: %d, solo %d", j, i, t,
                      multi[j].toks[i][t], solo[j][i].toks[0][t]);
      ck_assert_str_eq(multi[j].text[i], solo[j][i].text[0]);
    }
  check_no_leak();
  stop();
}
END_TEST

/* The text of the reference's greedy tokens up to the first occurrence of
 * stop (which must occur). */
static void check_stop(const struct ref *r, const char *stop_str) {
  const char *hit = strstr(r->greedy_text, stop_str);
  ck_assert_ptr_nonnull(hit);
  size_t want = (size_t)(hit - r->greedy_text);
  struct coll c;
  coll_init(&c);
  struct strata_request_params p =
      greedy_params(r->prompt_tokens, r->n_prompt, r->n_greedy);
  const char *stops[2] = {"@@never@@", stop_str};
  p.stop = stops;
  p.n_stop = 2;
  submit(&p, &c);
  finish(&c);
  ck_assert_int_eq(c.fin[0], STRATA_FINISH_STOP);
  ck_assert_msg(c.n_text[0] == want &&
                    memcmp(c.text[0], r->greedy_text, want) == 0,
                "stop '%s': got '%s', want '%.*s'", stop_str, c.text[0],
                (int)want, r->greedy_text);
  /* the tokens are a prefix of the reference */
  ck_assert_int_le(c.n_toks[0], r->n_greedy);
  for (int t = 0; t < c.n_toks[0]; t++)
    ck_assert_int_eq(c.toks[0][t], r->greedy[t]);
}

START_TEST(stop_strings) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  const struct ref *r = &refs[0];
  /* a stop string spanning a token boundary: the end of one token's piece
   * and the start of the next */
  char a[256], b[256], stop_str[16];
  int found = 0;
  for (int j = 3; j + 1 < r->n_greedy && !found; j++) {
    size_t na = strata_token_to_piece(rt.tok, r->greedy[j], 0, a, sizeof a);
    size_t nb = strata_token_to_piece(rt.tok, r->greedy[j + 1], 0, b, sizeof b);
    if (na >= 3 && nb >= 3 && na < sizeof a && nb < sizeof b &&
        a[na - 2] != ' ' && b[0] != ' ' && (unsigned char)a[na - 2] < 0x80 &&
        (unsigned char)b[1] < 0x80) {
      snprintf(stop_str, sizeof stop_str, "%c%c%c%c", a[na - 2], a[na - 1],
               b[0], b[1]);
      found = strstr(r->greedy_text, stop_str) != NULL;
    }
  }
  ck_assert(found);
  check_stop(r, stop_str);
  check_stop(r, ".");
  check_stop(&refs[1], " box");
  /* a stop token id */
  struct coll c;
  coll_init(&c);
  struct strata_request_params p =
      greedy_params(r->prompt_tokens, r->n_prompt, r->n_greedy);
  int32_t sid = r->greedy[10];
  p.stop_token_ids = &sid;
  p.n_stop_token_ids = 1;
  submit(&p, &c);
  finish(&c);
  int first = 0;
  while (r->greedy[first] != sid)
    first++;
  ck_assert_int_eq(c.fin[0], STRATA_FINISH_STOP);
  ck_assert_int_eq(c.n_toks[0], first + 1);
  check_no_leak();
  stop();
}
END_TEST

START_TEST(max_tokens_length) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  struct coll c;
  coll_init(&c);
  struct strata_request_params p =
      greedy_params(refs[0].prompt_tokens, refs[0].n_prompt, 5);
  submit(&p, &c);
  finish(&c);
  ck_assert_int_eq(c.fin[0], STRATA_FINISH_LENGTH);
  ck_assert_int_eq(c.n_toks[0], 5);
  ck_assert_int_eq(c.completion_tokens, 5);
  for (int t = 0; t < 5; t++)
    ck_assert_int_eq(c.toks[0][t], refs[0].greedy[t]);
  check_no_leak();
  stop();
}
END_TEST

START_TEST(cancel_returns_blocks) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  struct coll c;
  coll_init(&c);
  struct strata_request_params p =
      greedy_params(refs[0].prompt_tokens, refs[0].n_prompt, 400);
  p.ignore_eos = 1;
  c.cancel_after = 10;
  submit(&p, &c);
  finish(&c);
  ck_assert_int_eq(c.fin[0], STRATA_FINISH_ABORT);
  ck_assert_int_ge(c.n_toks[0], 10);
  ck_assert_int_lt(c.n_toks[0], 400);
  check_no_leak();
  struct strata_engine_metrics m;
  strata_engine_get_metrics(eng, &m);
  ck_assert_uint_eq(m.requests_finished[STRATA_FINISH_ABORT], 1);

  /* cancel from another thread, and releasing early (no callback after) */
  struct coll d, e2;
  coll_init(&d);
  coll_init(&e2);
  submit(&p, &d);
  submit(&p, &e2);
  for (;;) {
    pthread_mutex_lock(&d.mu);
    int n = d.n_toks[0];
    pthread_mutex_unlock(&d.mu);
    if (n >= 3) break;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  strata_engine_cancel(d.req);
  strata_engine_cancel(d.req); /* idempotent */
  strata_engine_release(e2.req);
  finish(&d);
  ck_assert_int_eq(d.fin[0], STRATA_FINISH_ABORT);
  check_no_leak();
  /* n > 1 cancelled while waiting or running: every choice aborts */
  struct coll f;
  coll_init(&f);
  struct strata_request_params q = p;
  q.n = 3;
  q.has_seed = 0;
  q.sampling.temperature = 1.0f;
  f.cancel_after = 2;
  submit(&q, &f);
  finish(&f);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(f.fin[i], STRATA_FINISH_ABORT);
  check_no_leak();
  stop();
}
END_TEST

START_TEST(prefix_cache_hit) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static int32_t pr[300];
  const struct ref *r = &refs[3];
  memcpy(pr, r->prompt_tokens, sizeof(int32_t) * (size_t)r->n_prompt);
  memcpy(pr + r->n_prompt, r->greedy, sizeof(int32_t) * 100);
  int n = r->n_prompt + 100;
  struct coll a, b;
  coll_init(&a);
  coll_init(&b);
  struct strata_request_params p = greedy_params(pr, n, 20);
  p.ignore_eos = 1;
  struct strata_cache_stats cs = {.size = sizeof cs};
  ck_assert_int_eq(strata_cache_stats(eng, pr, (size_t)n, &cs), 0);
  ck_assert_int_eq(cs.cached_tokens, 0);
  ck_assert_int_eq(cs.prompt_tokens, n);
  submit(&p, &a);
  finish(&a);
  ck_assert_int_eq(a.cached_tokens, 0);
  /* the stats predict what the next request gets */
  ck_assert_int_eq(strata_cache_stats(eng, pr, (size_t)n, &cs), 0);
  ck_assert_int_eq(cs.cached_tokens, (n - 1) / 16 * 16);
  ck_assert_int_eq(cs.cached_blocks * 16, cs.cached_tokens);
  ck_assert_int_eq(cs.free_blocks + cs.used_blocks + cs.evictable_blocks, cs.total_blocks);
  ck_assert_int_eq(strata_cache_stats_salt(eng, pr, (size_t)n, "tenant-b", &cs), 0);
  ck_assert_int_eq(cs.cached_tokens, 0);
  /* a caller that knows an older, shorter struct gets only that part */
  struct strata_cache_stats small;
  memset(&small, 0xab, sizeof small);
  small.size = (uint32_t)offsetof(struct strata_cache_stats, cached_blocks);
  ck_assert_int_eq(strata_cache_stats(eng, pr, (size_t)n, &small), 0);
  ck_assert_int_eq(small.cached_tokens, (n - 1) / 16 * 16);
  ck_assert_int_eq(small.total_blocks, (int32_t)0xabababab);
  submit(&p, &b);
  finish(&b);
  ck_assert_int_eq(b.cached_tokens, (n - 1) / 16 * 16);
  ck_assert_int_gt(b.cached_tokens, 0);
  ck_assert_int_eq(b.n_toks[0], 20);
  for (int t = 0; t < 20; t++) {
    ck_assert_int_eq(b.toks[0][t], a.toks[0][t]);
    ck_assert_int_eq(b.toks[0][t], r->greedy[100 + t]);
  }
  /* a different salt shares nothing */
  struct coll s;
  coll_init(&s);
  p.cache_salt = "tenant-b";
  submit(&p, &s);
  finish(&s);
  ck_assert_int_eq(s.cached_tokens, 0);
  check_no_leak();
  struct strata_engine_metrics m;
  strata_engine_get_metrics(eng, &m);
  ck_assert_uint_gt(m.kv.hits, 0);
  stop();
}
END_TEST

START_TEST(queue_full) {
  struct strata_engine_config cfg = defaults();
  cfg.max_waiting = 0;
  start(&cfg);
  char err[256];
  strata_engine_req_t *r = NULL;
  struct coll c;
  coll_init(&c);
  struct strata_request_params p =
      greedy_params(refs[0].prompt_tokens, refs[0].n_prompt, 5);
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EFULL);
  ck_assert_ptr_null(r);
  ck_assert_ptr_nonnull(strstr(err, "full"));
  stop();
}
END_TEST

START_TEST(invalid_params) {
  struct strata_engine_config cfg = defaults();
  start(&cfg);
  char err[256];
  strata_engine_req_t *r = NULL;
  struct coll c;
  coll_init(&c);
  int32_t ctx = strata_engine_context_length(eng);
  struct strata_request_params p =
      greedy_params(refs[0].prompt_tokens, refs[0].n_prompt, ctx);
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  char num[32];
  snprintf(num, sizeof num, "%d", refs[0].n_prompt);
  ck_assert_msg(strstr(err, num), "%s", err);
  snprintf(num, sizeof num, "%d", ctx);
  ck_assert_msg(strstr(err, num), "%s", err);
  p.max_tokens = 0;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  p.max_tokens = 5;
  p.n = 0;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  p.n = 129;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  p.n = 1;
  p.sampling.temperature = -1;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "temperature"));
  p.sampling.temperature = 0;
  p.n_prompt = 0;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  int32_t bad = 100000;
  p.prompt = &bad;
  p.n_prompt = 1;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  p = greedy_params(refs[0].prompt_tokens, refs[0].n_prompt, 5);
  const char *stops[1] = {""};
  p.stop = stops;
  p.n_stop = 1;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  p.n_stop = 0;
  p.n_stop_token_ids = 1;
  p.stop_token_ids = &bad;
  ck_assert_int_eq(
      strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
      STRATA_ENGINE_EINVAL);
  ck_assert_ptr_null(r);
  /* a valid request still works afterwards */
  p.n_stop_token_ids = 0;
  submit(&p, &c);
  finish(&c);
  ck_assert_int_eq(c.n_toks[0], 5);
  stop();
  /* stopped: the engine is gone; a fresh one refuses nothing valid */

  /* more choices than tokens in a step could never decode: refused, not
   * left hanging */
  cfg.max_batch_tokens = 4;
  start(&cfg);
  p = greedy_params(refs[0].prompt_tokens, refs[0].n_prompt, 5);
  p.n = 5;
  ck_assert_int_eq(strata_engine_submit(eng, &p, on_event, &c, &r, err, sizeof err),
                   STRATA_ENGINE_EINVAL);
  ck_assert_msg(strstr(err, "max_batch_tokens (4)"), "%s", err);
  ck_assert_ptr_null(r);
  p.n = 4;
  struct coll c4;
  coll_init(&c4);
  submit(&p, &c4);
  finish(&c4);
  for (int i = 0; i < 4; i++) ck_assert_int_eq(c4.n_toks[i], 5);
  stop();
}
END_TEST

START_TEST(stop_aborts_pending) {
  struct strata_engine_config cfg = defaults();
  cfg.max_running = 1;
  start(&cfg);
  static struct coll c[3];
  struct strata_request_params p =
      greedy_params(refs[0].prompt_tokens, refs[0].n_prompt, 400);
  p.ignore_eos = 1;
  for (int i = 0; i < 3; i++) {
    coll_init(&c[i]);
    submit(&p, &c[i]);
  }
  strata_engine_stop(eng);
  eng = NULL;
  for (int i = 0; i < 3; i++) {
    ck_assert(c[i].done);
    ck_assert_int_eq(c[i].fin[0], STRATA_FINISH_ABORT);
    strata_engine_cancel(c[i].req); /* a no-op after stop */
    strata_engine_release(c[i].req);
  }
  strata_runtime_close(&rt);
}
END_TEST

/* A finished request of a group keeps its cached blocks through eviction
 * pressure for engine.kv_cache.group_ttl; without a group LRU evicts them
 * first; affinity "release" makes them go before anything else. */
static int32_t cached_after_flood_keep(const char *sched, double ttl, uint64_t group,
                                      int affinity, double keep_ttl) {
  struct strata_engine_config cfg = defaults();
  cfg.kv_tokens = 40 * 16; /* 40 blocks */
  cfg.scheduler = sched;
  cfg.group_ttl = ttl;
  start(&cfg);
  static int32_t doc[200], flood[3][320];
  uint64_t x = 12345;
  for (int i = 0; i < 200; i++) doc[i] = 3 + (int32_t)((x = x * 6364136223846793005ull + 1) >> 33) % 500;
  for (int f = 0; f < 3; f++)
    for (int i = 0; i < 320; i++)
      flood[f][i] = 3 + (int32_t)((x = x * 6364136223846793005ull + 1) >> 33) % 500;
  struct coll a, b, fl[3];
  coll_init(&a);
  struct strata_request_params p = greedy_params(doc, 200, 4);
  p.ignore_eos = 1;
  p.group = group;
  p.affinity = affinity;
  p.keep_ttl = keep_ttl;
  submit(&p, &a);
  finish(&a);
  for (int f = 0; f < 3; f++) {
    coll_init(&fl[f]);
    struct strata_request_params q = greedy_params(flood[f], 320, 4);
    q.ignore_eos = 1;
    submit(&q, &fl[f]);
    finish(&fl[f]);
  }
  coll_init(&b);
  p.group = 0;
  p.affinity = 0;
  p.keep_ttl = 0;
  submit(&p, &b);
  finish(&b);
  check_no_leak();
  stop();
  return b.cached_tokens;
}

static int32_t cached_after_flood(const char *sched, double ttl, uint64_t group, int affinity) {
  return cached_after_flood_keep(sched, ttl, group, affinity, 0);
}

START_TEST(group_blocks_survive_eviction) {
  int32_t full = 199 / 16 * 16;
  int32_t grouped = cached_after_flood("fcfs", 30, 77, STRATA_AFFINITY_DEFAULT);
  int32_t plain = cached_after_flood("fcfs", 30, 0, STRATA_AFFINITY_DEFAULT);
  int32_t kept = cached_after_flood("fcfs", 30, 0, STRATA_AFFINITY_KEEP);
  int32_t released = cached_after_flood("fcfs", 30, 77, STRATA_AFFINITY_RELEASE);
  /* off by default under fcfs; the affinity-group scheduler keeps groups */
  int32_t fcfs_off = cached_after_flood("fcfs", 0, 77, STRATA_AFFINITY_DEFAULT);
  int32_t affinity = cached_after_flood("affinity-group", 0, 77, STRATA_AFFINITY_DEFAULT);
  ck_assert_int_lt(fcfs_off, full);
  ck_assert_int_eq(affinity, full);
  ck_assert_int_lt(released, full);
  ck_assert_int_eq(grouped, full);
  ck_assert_int_eq(kept, full);
  ck_assert_int_lt(plain, full);
}
END_TEST

/* A request's keep_ttl (a cache hint's prefill) protects its blocks whatever
 * its group and affinity say; strata_engine_cache_hint protects and
 * releases a prompt's cached blocks, a release leaving protected blocks
 * alone unless forced. */
START_TEST(cache_hints) {
  int32_t full = 199 / 16 * 16;
  ck_assert_int_eq(cached_after_flood_keep("fcfs", 0, 0, STRATA_AFFINITY_DEFAULT, 30), full);
  ck_assert_int_eq(cached_after_flood_keep("fcfs", 0, 77, STRATA_AFFINITY_RELEASE, 30), full);
  ck_assert_int_lt(cached_after_flood_keep("fcfs", 0, 0, STRATA_AFFINITY_DEFAULT, 0), full);

  struct strata_engine_config cfg = defaults();
  start(&cfg);
  static int32_t doc[200];
  for (int i = 0; i < 200; i++) doc[i] = 3 + (i * 37) % 500;
  struct strata_cache_hint_result res;
  /* nothing cached yet */
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 200, NULL, STRATA_CACHE_HINT_KEEP, 60, 0, &res), 0);
  ck_assert_int_eq(res.prompt_tokens, 200);
  ck_assert_int_eq(res.blocks, 0);
  ck_assert_int_eq(res.cached_tokens, 0);
  struct coll a;
  coll_init(&a);
  struct strata_request_params p = greedy_params(doc, 200, 1);
  char err[256];
  strata_engine_req_t *r = NULL;
  p.keep_ttl = -1;
  ck_assert_int_eq(strata_engine_submit(eng, &p, on_event, &a, &r, err, sizeof err),
                   STRATA_ENGINE_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "keep_ttl"));
  p.keep_ttl = 0.0 / 0.0;
  ck_assert_int_eq(strata_engine_submit(eng, &p, on_event, &a, &r, err, sizeof err),
                   STRATA_ENGINE_EINVAL);
  p.keep_ttl = 60;
  submit(&p, &a);
  finish(&a);
  check_no_leak();
  struct strata_engine_metrics m;
  strata_engine_get_metrics(eng, &m);
  ck_assert_int_eq(m.kv.n_protected, 12); /* the 12 full blocks of 200 tokens */
  /* the salt makes other hashes: nothing to do */
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 200, "s", STRATA_CACHE_HINT_RELEASE, 0, 1, &res), 0);
  ck_assert_int_eq(res.blocks, 0);
  ck_assert_int_eq(res.cached_tokens, 0);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 200, NULL, STRATA_CACHE_HINT_RELEASE, 0, 0, &res), 0);
  ck_assert_int_eq(res.blocks, 0);
  ck_assert_int_eq(res.kept_blocks, 12);
  ck_assert_int_eq(res.cached_tokens, full);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 200, NULL, STRATA_CACHE_HINT_RELEASE, 0, 1, &res), 0);
  ck_assert_int_eq(res.blocks, 12);
  ck_assert_int_eq(res.kept_blocks, 0);
  strata_engine_get_metrics(eng, &m);
  ck_assert_int_eq(m.kv.n_protected, 0);
  ck_assert_int_eq(m.kv.n_hinted, 12);
  /* a shorter prefix: its 3 full blocks (48 tokens: 47 count as cached) */
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 48, NULL, STRATA_CACHE_HINT_KEEP, 5, 0, &res), 0);
  ck_assert_int_eq(res.blocks, 3);
  ck_assert_int_eq(res.cached_tokens, 32);
  strata_engine_get_metrics(eng, &m);
  ck_assert_int_eq(m.kv.n_protected, 3);
  ck_assert_int_eq(m.kv.n_hinted, 9);
  /* refusals */
  int32_t ctx = strata_engine_context_length(eng);
  int32_t *big = calloc((size_t)ctx + 1, sizeof *big);
  ck_assert_ptr_nonnull(big);
  ck_assert_int_eq(strata_engine_cache_hint(eng, big, (size_t)ctx + 1, NULL, STRATA_CACHE_HINT_RELEASE, 0, 0, &res), -1);
  ck_assert_int_eq(strata_engine_cache_hint(eng, big, (size_t)ctx, NULL, STRATA_CACHE_HINT_RELEASE, 0, 0, &res), 0);
  free(big);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 0, NULL, STRATA_CACHE_HINT_KEEP, 5, 0, &res), -1);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 10, NULL, STRATA_CACHE_HINT_KEEP, 0, 0, &res), -1);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 10, NULL, STRATA_CACHE_HINT_KEEP, 86401, 0, &res), -1);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 10, NULL, (enum strata_cache_hint_action)3, 5, 0, &res), -1);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 10, NULL, STRATA_CACHE_HINT_KEEP, 5, 0, NULL), -1);
  ck_assert_int_eq(strata_engine_prefix_caching(eng), 1);
  stop();
  cfg.prefix_caching = 0;
  start(&cfg);
  ck_assert_int_eq(strata_engine_prefix_caching(eng), 0);
  ck_assert_int_eq(strata_engine_cache_hint(eng, doc, 200, NULL, STRATA_CACHE_HINT_KEEP, 5, 0, &res), -2);
  stop();
}
END_TEST

START_TEST(config_and_sizing) {
  struct strata_engine_config c;
  strata_engine_config_from(NULL, &c);
  ck_assert_int_eq(c.max_batch_tokens, 2048);
  ck_assert_int_eq(c.max_running, 64);
  ck_assert_int_eq(c.max_waiting, 1024);
  ck_assert_int_eq(c.block_size, 16);
  ck_assert_int_eq(c.prefix_caching, 1);
  ck_assert_str_eq(c.scheduler, "fcfs");
  char *model = test_shared_path("models/stories260K.gguf");
  struct strata_model_opts mo = {0};
  char err[256];
  ck_assert_int_eq(strata_engine_model_opts(&c, model, 0, &mo, err, sizeof err),
                   0);
  ck_assert_int_eq(mo.max_tokens, 2048);
  ck_assert_int_eq(mo.block_size, 16);
  ck_assert_int_eq(mo.n_blocks,
                   64 * 512 / 16); /* 64 full contexts, well under 1 GiB */
  c.kv_tokens = 1000;
  ck_assert_int_eq(strata_engine_model_opts(&c, model, 0, &mo, err, sizeof err),
                   0);
  ck_assert_int_eq(mo.n_blocks, 63);
  /* f16 entries: the same memory holds twice the tokens */
  c.kv_tokens = 0;
  c.kv_memory = 1 << 20;
  ck_assert_int_eq(strata_engine_model_opts(&c, model, 0, &mo, err, sizeof err), 0);
  const int32_t nb32 = mo.n_blocks;
  ck_assert_int_eq(mo.kv_f16, 0);
  c.kv_f16 = 1;
  ck_assert_int_eq(strata_engine_model_opts(&c, model, 0, &mo, err, sizeof err), 0);
  ck_assert_int_eq(mo.kv_f16, 1);
  ck_assert_int_eq(mo.n_blocks, 2 * nb32);
  c.kv_memory = 1; /* not even one block */
  ck_assert_int_eq(strata_engine_model_opts(&c, model, 0, &mo, err, sizeof err),
                   -1);
  ck_assert_ptr_nonnull(strstr(err, "memory"));
  free(model);
}
END_TEST

int main(void) {
  load_refs();
  Suite *s = suite_create("engine");
  TCase *tc = tcase_create("stories260K");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, config_and_sizing);
  tcase_add_test(tc, greedy_equals_reference);
  tcase_add_test(tc, concurrent_equal_solo);
  tcase_add_test(tc, concurrent_without_prefix_caching);
  tcase_add_test(tc, concurrent_prefix_aware);
  tcase_add_test(tc, tiny_cache_preempts_same_answers);
  tcase_add_test(tc, chunked_prefill_same_tokens);
  tcase_add_test(tc, n_choices_equal_seeded_solo);
  tcase_add_test(tc, n_choices_under_preemption);
  tcase_add_test(tc, stop_strings);
  tcase_add_test(tc, max_tokens_length);
  tcase_add_test(tc, cancel_returns_blocks);
  tcase_add_test(tc, prefix_cache_hit);
  tcase_add_test(tc, queue_full);
  tcase_add_test(tc, invalid_params);
  tcase_add_test(tc, stop_aborts_pending);
  tcase_add_test(tc, group_blocks_survive_eviction);
  tcase_add_test(tc, cache_hints);
  suite_add_tcase(s, tc);
  return test_run_suite(s);
}
