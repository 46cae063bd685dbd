/* KV block manager: allocation, prefix reuse by chained hashes, LRU eviction
 * (tail before head), atomic failure, fork, counters, priority hooks, events,
 * and a randomized run against a reference model of refcounts and of the
 * K/V contents every block holds. */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "kv_cache.h"
#include "kv_events.h"
#include "testutil.h"

/* ---- fixtures ----------------------------------------------------------- */

static double fake_now = 1000.0;
static double fake_clock(void *ud) {
  (void)ud;
  return fake_now;
}

#define MAX_EVENTS 4096
static struct strata_kv_event events[MAX_EVENTS];
static int n_events;
static void record(void *ud, const struct strata_kv_event *ev) {
  (void)ud;
  ck_assert_int_lt(n_events, MAX_EVENTS);
  events[n_events] = *ev;
  events[n_events].tokens = NULL; /* only valid during the call */
  n_events++;
}

static strata_kv_t *mk(int32_t n_blocks, int32_t bs, int caching) {
  struct strata_kv_config c = STRATA_KV_CONFIG_DEFAULTS;
  c.n_blocks = n_blocks;
  c.block_size = bs;
  c.prefix_caching = caching;
  c.clock = fake_clock;
  c.on_event = record;
  fake_now = 1000.0;
  n_events = 0;
  strata_kv_t *kv = NULL;
  char err[256] = "";
  ck_assert_msg(strata_kv_create(&c, &kv, err, sizeof err) == 0, "%s", err);
  return kv;
}

static void check(strata_kv_t *kv) {
  char err[256] = "";
  ck_assert_msg(strata_kv_check(kv, err, sizeof err) == 0, "%s", err);
}

static struct strata_kv_stats stats(strata_kv_t *kv) {
  struct strata_kv_stats s;
  strata_kv_get_stats(kv, &s);
  return s;
}

/* tokens base, base+1, ... */
static void ramp(int32_t *t, int32_t n, int32_t base) {
  for (int32_t i = 0; i < n; i++)
    t[i] = base + i;
}

/* Starts seq with the whole prompt reserved and computed. */
static int32_t run_prompt(strata_kv_t *kv, struct strata_kv_seq *s,
                          const int32_t *t, int32_t n, const char *salt) {
  strata_kv_seq_init(s);
  int32_t c = strata_kv_alloc_prefix(kv, s, t, n, salt, n);
  ck_assert_int_ge(c, 0);
  ck_assert_int_eq(s->n_slots, n);
  ck_assert_int_eq(strata_kv_commit(kv, s, t, n), 0);
  check(kv);
  return c;
}

/* Block ids of the REMOVED events since event index from. */
static int removed_since(int from, int32_t *ids, int cap) {
  int k = 0;
  for (int i = from; i < n_events; i++)
    if (events[i].type == STRATA_KV_EVENT_REMOVED && k < cap)
      ids[k++] = events[i].block;
  return k;
}

/* ---- basics ------------------------------------------------------------- */

START_TEST(alloc_free_returns_every_block) {
  for (int caching = 0; caching <= 1; caching++) {
    strata_kv_t *kv = mk(32, 16, caching);
    struct strata_kv_seq s[4];
    int32_t t[100];
    for (int i = 0; i < 4; i++) {
      ramp(t, 100, 1000 * i);
      run_prompt(kv, &s[i], t, 37 + i, NULL);
      ck_assert_int_eq(s[i].n_blocks, 3);
      ck_assert_int_eq(strata_kv_append_slots(kv, &s[i], 30), 0);
      ck_assert_int_eq(s[i].n_blocks, (37 + i + 30 + 15) / 16);
      ck_assert_int_eq(strata_kv_slot(&s[i], 16, 20), s[i].blocks[1] * 16 + 4);
      check(kv);
    }
    struct strata_kv_stats st = stats(kv);
    ck_assert_int_eq(st.n_used, 4 * 5);
    ck_assert_int_eq(st.n_free, 32 - 20);
    ck_assert(st.usage > 0.62 && st.usage < 0.63);
    for (int i = 0; i < 4; i++) {
      strata_kv_free_seq(kv, &s[i]);
      ck_assert_ptr_null(s[i].blocks);
      ck_assert_int_eq(s[i].started, 0);
      check(kv);
    }
    st = stats(kv);
    ck_assert_int_eq(st.n_used, 0);
    ck_assert_int_eq(st.n_free + st.n_evictable, 32);
    ck_assert_int_eq(st.n_evictable,
                     caching ? 4 * 2 : 0); /* 2 full prompt blocks each */
    ck_assert(st.usage == 0.0);
    strata_kv_destroy(kv);
  }
}
END_TEST

START_TEST(prefix_reuse_shares_full_blocks) {
  strata_kv_t *kv = mk(16, 4, 1);
  int32_t t[14];
  ramp(t, 14, 7);
  struct strata_kv_seq a, b;
  ck_assert_int_eq(run_prompt(kv, &a, t, 14, NULL), 0);
  ck_assert_int_eq(stats(kv).n_cached, 3); /* the partial 4th block is not */
  ck_assert_int_eq(run_prompt(kv, &b, t, 14, NULL), 12);
  ck_assert_int_eq(b.n_cached, 12);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(a.blocks[i], b.blocks[i]);
    ck_assert_int_eq(strata_kv_block_ref(kv, a.blocks[i]), 2);
  }
  ck_assert_int_ne(a.blocks[3], b.blocks[3]);
  ck_assert_int_eq(strata_kv_block_ref(kv, a.blocks[3]), 1);
  ck_assert_int_eq(strata_kv_block_hash(kv, a.blocks[3], NULL), 0);
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(whole_prompt_never_cached) {
  strata_kv_t *kv = mk(16, 4, 1);
  int32_t t[12];
  ramp(t, 12, 1);
  struct strata_kv_seq a, b;
  run_prompt(kv, &a, t, 12, NULL);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 12, NULL), 12);
  /* All 3 blocks are cached, yet the last block must be recomputed. */
  strata_kv_seq_init(&b);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &b, t, 12, NULL, 100), 8);
  ck_assert_int_eq(b.n_slots, 12);
  ck_assert_int_eq(b.n_computed, 8);
  ck_assert_int_ne(b.blocks[2], a.blocks[2]);
  /* Its recomputed last block duplicates a cached one: it stays private. */
  int before = n_events;
  ck_assert_int_eq(strata_kv_commit(kv, &b, t, 12), 0);
  ck_assert_int_eq(n_events, before);
  ck_assert_int_eq(strata_kv_block_hash(kv, b.blocks[2], NULL), 0);
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  check(kv);
  ck_assert_int_eq(stats(kv).n_evictable, 3);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(partial_block_never_shared) {
  strata_kv_t *kv = mk(16, 4, 1);
  int32_t t[20];
  ramp(t, 20, 50);
  struct strata_kv_seq a, b;
  run_prompt(kv, &a, t, 14, NULL);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 20, NULL), 12);
  /* Decoding fills block 3; only once written and committed is it shared. */
  ck_assert_int_eq(strata_kv_append_slots(kv, &a, 2), 0);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 20, NULL), 12);
  ck_assert_int_eq(strata_kv_commit(kv, &a, t, 16), 0);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 20, NULL), 16);
  ck_assert_int_eq(run_prompt(kv, &b, t, 20, NULL), 16);
  ck_assert_int_eq(b.blocks[3], a.blocks[3]);
  ck_assert_int_ne(b.blocks[4], a.blocks[3]);
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(salt_separates_caches) {
  strata_kv_t *kv = mk(32, 4, 1);
  int32_t t[13];
  ramp(t, 13, 3);
  struct strata_kv_seq a, b, c, d, e;
  ck_assert_int_eq(run_prompt(kv, &a, t, 13, "alice"), 0);
  ck_assert_int_eq(run_prompt(kv, &b, t, 13, "bob"), 0);
  ck_assert_int_eq(run_prompt(kv, &c, t, 13, NULL), 0);
  ck_assert_int_eq(run_prompt(kv, &d, t, 13, ""), 12); /* "" is no salt */
  ck_assert_int_eq(run_prompt(kv, &e, t, 13, "alice"), 12);
  ck_assert_int_eq(e.blocks[0], a.blocks[0]);
  ck_assert_int_ne(b.blocks[0], a.blocks[0]);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 13, "carol"), 0);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 13, "bob"), 12);
  struct strata_kv_seq *all[] = {&a, &b, &c, &d, &e};
  for (int i = 0; i < 5; i++)
    strata_kv_free_seq(kv, all[i]);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(disabled_caching_shares_nothing) {
  strata_kv_t *kv = mk(16, 4, 0);
  int32_t t[13];
  ramp(t, 13, 3);
  struct strata_kv_seq a, b;
  ck_assert_int_eq(run_prompt(kv, &a, t, 13, NULL), 0);
  ck_assert_int_eq(run_prompt(kv, &b, t, 13, NULL), 0);
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++)
      ck_assert_int_ne(a.blocks[i], b.blocks[j]);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 13, NULL), 0);
  ck_assert_int_eq(strata_kv_commit(kv, &a, NULL, 13), 0); /* tokens optional */
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  struct strata_kv_stats st = stats(kv);
  ck_assert_int_eq(st.n_free, 16);
  ck_assert_int_eq(st.n_cached, 0);
  ck_assert_uint_eq(st.queries, 0);
  ck_assert_uint_eq(st.requests, 0);
  ck_assert_int_eq(n_events, 0);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

/* ---- eviction ----------------------------------------------------------- */

START_TEST(lru_evicts_oldest_and_tail_first) {
  /* 8 blocks of 2. A and B each leave 2 cached blocks, A first. */
  strata_kv_t *kv = mk(8, 2, 1);
  int32_t ta[5] = {1, 2, 3, 4, 99}, tb[5] = {5, 6, 7, 8, 99}, tx[16];
  struct strata_kv_seq a, b, x, y;
  run_prompt(kv, &a, ta, 4, NULL);
  run_prompt(kv, &b, tb, 4, NULL);
  int32_t a0 = a.blocks[0], a1 = a.blocks[1], b0 = b.blocks[0],
          b1 = b.blocks[1];
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  ck_assert_int_eq(stats(kv).n_evictable, 4);
  /* The free list goes first: no eviction for the first 4 blocks. */
  ramp(tx, 16, 100);
  int from = n_events;
  strata_kv_seq_init(&x);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &x, tx, 8, NULL, 8), 0);
  ck_assert_int_eq(removed_since(from, NULL, 0), 0);
  ck_assert_uint_eq(stats(kv).evictions, 0);
  /* Then A (older) tail first, then B tail first. */
  int32_t ids[8];
  ck_assert_int_eq(strata_kv_append_slots(kv, &x, 6), 0);
  ck_assert_int_eq(removed_since(from, ids, 8), 3);
  ck_assert_int_eq(ids[0], a1);
  ck_assert_int_eq(ids[1], a0);
  ck_assert_int_eq(ids[2], b1);
  ck_assert_uint_eq(stats(kv).evictions, 3);
  /* Evicted blocks are no longer found; b0 still is. */
  ck_assert_int_eq(strata_kv_cached_tokens(kv, ta, 4, NULL), 0);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, tb, 4, NULL), 2);
  ck_assert_int_eq(strata_kv_block_hash(kv, b0, NULL), 1);
  strata_kv_seq_init(&y);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &y, ta, 5, NULL, 5),
                   STRATA_KV_ENOBLOCKS);
  strata_kv_free_seq(kv, &x);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(reuse_refreshes_lru) {
  strata_kv_t *kv = mk(4, 2, 1);
  int32_t ta[5] = {1, 2, 3, 4, 9}, tb[4] = {5, 6, 7, 8},
          tx[8] = {20, 21, 22, 23};
  struct strata_kv_seq a, b, e, x;
  run_prompt(kv, &a, ta, 4, NULL);
  run_prompt(kv, &b, tb, 4, NULL);
  int32_t a0 = a.blocks[0], a1 = a.blocks[1], b0 = b.blocks[0],
          b1 = b.blocks[1];
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  /* E hits A's first block only (n_compute 0: nothing new reserved). */
  strata_kv_seq_init(&e);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &e, ta, 3, NULL, 0), 2);
  ck_assert_int_eq(e.blocks[0], a0);
  ck_assert_int_eq(e.n_blocks, 1);
  strata_kv_free_seq(kv, &e);
  /* LRU now: a1, b1, b0, a0. */
  int from = n_events;
  int32_t ids[4];
  strata_kv_seq_init(&x);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &x, tx, 4, NULL, 4), 0);
  ck_assert_int_eq(removed_since(from, ids, 4), 2);
  ck_assert_int_eq(ids[0], a1);
  ck_assert_int_eq(ids[1], b1);
  ck_assert_int_eq(strata_kv_append_slots(kv, &x, 1), 0);
  ck_assert_int_eq(removed_since(from, ids, 4), 3);
  ck_assert_int_eq(ids[2], b0);
  strata_kv_free_seq(kv, &x);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(pure_lookup_changes_nothing) {
  strata_kv_t *kv = mk(4, 2, 1);
  int32_t ta[4] = {1, 2, 3, 4}, tb[4] = {5, 6, 7, 8}, tx[8] = {20, 21, 22, 23};
  struct strata_kv_seq a, b, x;
  run_prompt(kv, &a, ta, 4, NULL);
  run_prompt(kv, &b, tb, 4, NULL);
  int32_t a0 = a.blocks[0], a1 = a.blocks[1];
  struct strata_kv_hash ha1 = a.hashes[1];
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  struct strata_kv_stats s0 = stats(kv);
  /* Looking A up (it is the LRU victim) must not refresh it. */
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(strata_kv_cached_tokens(kv, ta, 4, NULL), 4);
  ck_assert(strata_kv_contains(kv, ha1));
  ck_assert(!strata_kv_contains(kv, strata_kv_hash_root("x")));
  struct strata_kv_stats s1 = stats(kv);
  ck_assert_uint_eq(s1.queries, s0.queries);
  ck_assert_uint_eq(s1.hits, s0.hits);
  ck_assert_uint_eq(s1.requests, s0.requests);
  ck_assert_int_eq(s1.n_evictable, s0.n_evictable);
  int from = n_events;
  int32_t ids[4];
  strata_kv_seq_init(&x);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &x, tx, 4, NULL, 4), 0);
  ck_assert_int_eq(removed_since(from, ids, 4), 2);
  ck_assert_int_eq(ids[0], a1);
  ck_assert_int_eq(ids[1], a0);
  strata_kv_free_seq(kv, &x);
  strata_kv_destroy(kv);
}
END_TEST

/* The cached prefix from precomputed hashes, and how much of it only the
 * cache holds (what a waiting request would take out of the free pool). */
START_TEST(cached_prefix_counts_idle_blocks) {
  strata_kv_t *kv = mk(8, 2, 1); /* 8 blocks of 2 tokens */
  int32_t t[12];
  ramp(t, 12, 50);
  struct strata_kv_hash h[6];
  ck_assert_int_eq(strata_kv_hash_chain(t, 12, 2, NULL, h), 6);
  int32_t idle = -1;
  ck_assert_int_eq(strata_kv_cached_prefix(kv, h, 6, 6, &idle), 0);
  ck_assert_int_eq(idle, 0);
  struct strata_kv_seq a;
  run_prompt(kv, &a, t, 8, NULL); /* blocks 0..3 cached and held */
  ck_assert_int_eq(strata_kv_cached_prefix(kv, h, 6, 6, &idle), 4);
  ck_assert_int_eq(idle, 0);
  ck_assert_int_eq(strata_kv_cached_blocks(kv, h, 6), 4);
  strata_kv_free_seq(kv, &a); /* now only the cache holds them */
  ck_assert_int_eq(strata_kv_cached_prefix(kv, h, 6, 6, &idle), 4);
  ck_assert_int_eq(idle, 4);
  ck_assert_int_eq(strata_kv_cached_prefix(kv, h, 6, 3, &idle), 4);
  ck_assert_int_eq(idle, 3); /* counted within max_idle only */
  struct strata_kv_seq b;
  run_prompt(kv, &b, t, 5, NULL); /* attaches cached blocks 0 and 1 again */
  ck_assert_int_eq(strata_kv_cached_prefix(kv, h, 6, 6, &idle), 4);
  ck_assert_int_eq(idle, 2);
  strata_kv_free_seq(kv, &b);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

/* A queued request's cached prefix is not least recently used: without
 * keep_prefix the older of two released prompts is evicted first, with it
 * the other one is; it counts the cached prefix as cached_prefix does. */
START_TEST(keep_prefix_moves_to_recent_end) {
  for (int keep = 0; keep < 2; keep++) {
    strata_kv_t *kv = mk(8, 2, 1); /* 8 blocks of 2 tokens */
    int32_t ta[4], tb[4], tc[12];
    ramp(ta, 4, 100);
    ramp(tb, 4, 200);
    ramp(tc, 12, 300);
    struct strata_kv_hash ha[2], hb[2];
    ck_assert_int_eq(strata_kv_hash_chain(ta, 4, 2, NULL, ha), 2);
    ck_assert_int_eq(strata_kv_hash_chain(tb, 4, 2, NULL, hb), 2);
    struct strata_kv_seq a, b, c;
    run_prompt(kv, &a, ta, 4, NULL);
    run_prompt(kv, &b, tb, 4, NULL);
    strata_kv_free_seq(kv, &a); /* released first: least recently used */
    strata_kv_free_seq(kv, &b);
    if (keep) ck_assert_int_eq(strata_kv_keep_prefix(kv, ha, 2, 0, NULL), 2);
    check(kv);
    run_prompt(kv, &c, tc, 12, NULL); /* 6 blocks: 4 free + 2 evicted */
    ck_assert_int_eq(strata_kv_cached_blocks(kv, ha, 2), keep ? 2 : 0);
    ck_assert_int_eq(strata_kv_cached_blocks(kv, hb, 2), keep ? 0 : 2);
    strata_kv_free_seq(kv, &c);
    ck_assert_int_eq(strata_kv_keep_prefix(kv, NULL, 2, 0, NULL), 0); /* no-ops */
    ck_assert_int_eq(strata_kv_keep_prefix(kv, ha, 0, 0, NULL), 0);
    check(kv);
    strata_kv_destroy(kv);
  }
}
END_TEST

/* ---- failure is atomic -------------------------------------------------- */

static void assert_same_stats(struct strata_kv_stats a,
                              struct strata_kv_stats b) {
  ck_assert_int_eq(a.n_free, b.n_free);
  ck_assert_int_eq(a.n_used, b.n_used);
  ck_assert_int_eq(a.n_evictable, b.n_evictable);
  ck_assert_int_eq(a.n_cached, b.n_cached);
  ck_assert_uint_eq(a.queries, b.queries);
  ck_assert_uint_eq(a.hits, b.hits);
  ck_assert_uint_eq(a.requests, b.requests);
  ck_assert_uint_eq(a.evictions, b.evictions);
}

START_TEST(out_of_blocks_changes_nothing) {
  strata_kv_t *kv = mk(4, 4, 1);
  int32_t t[32];
  ramp(t, 32, 1);
  struct strata_kv_seq a, b, c;
  run_prompt(kv, &a, t, 13, NULL); /* 3 full + 1 partial = all 4 blocks */
  strata_kv_free_seq(kv, &a);      /* 3 evictable, 1 free */
  struct strata_kv_stats s0 = stats(kv);
  int ev0 = n_events;
  /* B hits the 3 cached blocks and needs 2 more: attaching the hits removes
   * them from the pool, so only 1 is available. */
  strata_kv_seq_init(&b);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &b, t, 17, NULL, 17),
                   STRATA_KV_ENOBLOCKS);
  ck_assert_int_eq(b.started, 0);
  ck_assert_int_eq(b.n_blocks, 0);
  ck_assert_ptr_null(b.blocks);
  assert_same_stats(s0, stats(kv));
  ck_assert_int_eq(n_events, ev0);
  check(kv);
  /* A smaller first chunk fits. */
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &b, t, 17, NULL, 4), 12);
  ck_assert_int_eq(b.n_slots, 16);
  ck_assert_int_eq(b.n_blocks, 4);
  check(kv);
  s0 = stats(kv);
  ck_assert_int_eq(strata_kv_append_slots(kv, &b, 1), STRATA_KV_ENOBLOCKS);
  ck_assert_int_eq(b.n_slots, 16);
  ck_assert_int_eq(b.n_blocks, 4);
  assert_same_stats(s0, stats(kv));
  ck_assert_int_eq(strata_kv_append_slots(kv, &b, 0), 0);
  /* Fork of a partial block needs one: none left. */
  ck_assert_int_eq(strata_kv_commit(kv, &b, t, 14), 0);
  strata_kv_seq_init(&c);
  struct strata_kv_copy cp = {7, 7, 7};
  ck_assert_int_eq(strata_kv_fork(kv, &b, &c, &cp), STRATA_KV_ENOBLOCKS);
  ck_assert_int_eq(cp.n_rows, 7);
  ck_assert_int_eq(c.started, 0);
  ck_assert_ptr_null(c.blocks);
  assert_same_stats(s0, stats(kv));
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(strata_kv_block_ref(kv, b.blocks[i]), 1);
  check(kv);
  /* Misuse fails without change too. */
  ck_assert_int_eq(strata_kv_commit(kv, &b, t, 17),
                   STRATA_KV_EFAIL); /* > n_slots */
  ck_assert_int_eq(strata_kv_commit(kv, &b, t, 13),
                   STRATA_KV_EFAIL); /* backwards */
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &b, t, 4, NULL, 4),
                   STRATA_KV_EFAIL);
  ck_assert_int_eq(strata_kv_append_slots(kv, &c, 1),
                   STRATA_KV_EFAIL); /* not started */
  ck_assert_int_eq(strata_kv_commit(kv, &c, t, 0), STRATA_KV_EFAIL);
  ck_assert_int_eq(strata_kv_fork(kv, &c, &c, &cp), STRATA_KV_EFAIL);
  ck_assert_int_eq(strata_kv_fork(kv, &b, &b, &cp), STRATA_KV_EFAIL);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &c, t, 0, NULL, 1),
                   STRATA_KV_EFAIL);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &c, t, 4, NULL, -1),
                   STRATA_KV_EFAIL);
  strata_kv_free_seq(kv, &b);
  strata_kv_free_seq(kv, &c); /* empty: fine */
  ck_assert_int_eq(stats(kv).n_used, 0);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

/* ---- fork --------------------------------------------------------------- */

START_TEST(fork_shares_full_blocks_copies_partial) {
  strata_kv_t *kv = mk(16, 4, 1);
  int32_t t[16];
  ramp(t, 16, 1);
  struct strata_kv_seq p, c, d;
  run_prompt(kv, &p, t, 10, NULL);
  ck_assert_int_eq(strata_kv_append_slots(kv, &p, 1),
                   0); /* reserved, not computed */
  strata_kv_seq_init(&c);
  struct strata_kv_copy cp;
  ck_assert_int_eq(strata_kv_fork(kv, &p, &c, &cp), 0);
  ck_assert_int_eq(c.n_slots, 10);
  ck_assert_int_eq(c.n_computed, 10);
  ck_assert_int_eq(c.n_blocks, 3);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(c.blocks[i], p.blocks[i]);
    ck_assert_int_eq(strata_kv_block_ref(kv, p.blocks[i]), 2);
  }
  ck_assert_int_eq(cp.src, p.blocks[2]);
  ck_assert_int_eq(cp.dst, c.blocks[2]);
  ck_assert_int_ne(cp.dst, cp.src);
  ck_assert_int_eq(cp.n_rows, 2);
  ck_assert_int_eq(strata_kv_block_ref(kv, p.blocks[2]), 1);
  check(kv);
  /* The child diverges in its own blocks. */
  ck_assert_int_eq(strata_kv_append_slots(kv, &c, 3), 0);
  ck_assert_int_eq(c.n_blocks, 4);
  int32_t u[16];
  memcpy(u, t, 13 * sizeof *u);
  u[10] = 500, u[11] = 501, u[12] = 502;
  ck_assert_int_eq(strata_kv_commit(kv, &c, u, 13), 0);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, u, 13, NULL), 12);
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 13, NULL), 8);
  /* A fork at a block boundary copies nothing. */
  strata_kv_seq_init(&d);
  ck_assert_int_eq(strata_kv_fork(kv, &c, &d, &cp), 0);
  ck_assert_int_eq(cp.n_rows, 1); /* 13 % 4 */
  ck_assert_int_eq(d.n_blocks, 4);
  strata_kv_free_seq(kv, &d);
  ck_assert_int_eq(strata_kv_append_slots(kv, &c, 3), 0);
  for (int i = 13; i < 16; i++)
    u[i] = 600 + i;
  ck_assert_int_eq(strata_kv_commit(kv, &c, u, 16), 0);
  strata_kv_seq_init(&d);
  ck_assert_int_eq(strata_kv_fork(kv, &c, &d, &cp), 0);
  ck_assert_int_eq(cp.n_rows, 0);
  ck_assert_int_eq(cp.src, -1);
  ck_assert_int_eq(d.n_blocks, 4);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(d.blocks[i], c.blocks[i]);
  ck_assert_int_eq(strata_kv_block_ref(kv, c.blocks[0]), 3);
  strata_kv_free_seq(kv, &p);
  strata_kv_free_seq(kv, &c);
  strata_kv_free_seq(kv, &d);
  check(kv);
  ck_assert_int_eq(stats(kv).n_used, 0);
  strata_kv_destroy(kv);
}
END_TEST

/* ---- counters ----------------------------------------------------------- */

START_TEST(counters_exact) {
  strata_kv_t *kv = mk(8, 4, 1);
  int32_t t[10], f[32];
  ramp(t, 10, 1);
  ramp(f, 32, 100);
  struct strata_kv_seq a, b, c, d, e;
  ck_assert_int_eq(run_prompt(kv, &a, t, 10, NULL), 0);
  ck_assert_int_eq(run_prompt(kv, &b, t, 10, NULL), 8);
  ck_assert_int_eq(run_prompt(kv, &c, t, 9, NULL), 8);
  ck_assert_int_eq(run_prompt(kv, &d, t, 8, NULL), 4); /* (8 - 1) / 4 blocks */
  struct strata_kv_stats s = stats(kv);
  ck_assert_uint_eq(s.queries, 10 + 10 + 9 + 8);
  ck_assert_uint_eq(s.hits, 0 + 8 + 8 + 4);
  ck_assert_uint_eq(s.requests, 4);
  ck_assert_int_eq(s.n_used, 3 + 1 + 1 + 1);
  ck_assert_int_eq(s.n_cached, 2);
  strata_kv_free_seq(kv, &a);
  strata_kv_free_seq(kv, &b);
  strata_kv_free_seq(kv, &c);
  strata_kv_free_seq(kv, &d);
  s = stats(kv);
  ck_assert_int_eq(s.n_evictable, 2);
  ck_assert_int_eq(s.n_free, 6);
  ck_assert_uint_eq(s.evictions, 0);
  ck_assert_int_eq(run_prompt(kv, &e, f, 32, NULL), 0);
  s = stats(kv);
  ck_assert_uint_eq(s.evictions, 2);
  ck_assert_uint_eq(s.queries, 37 + 32);
  ck_assert_uint_eq(s.hits, 20);
  ck_assert_uint_eq(s.requests, 5);
  ck_assert_int_eq(s.n_used, 8);
  ck_assert(s.usage == 1.0);
  strata_kv_free_seq(kv, &e);
  strata_kv_destroy(kv);
}
END_TEST

/* ---- priority hooks ----------------------------------------------------- */

/* Three 2-block sequences A, B, C released in that order into a 6-block
 * pool; returns their block ids [seq][i] and hashes. */
static strata_kv_t *three(int32_t ids[3][2], struct strata_kv_hash hs[3][2]) {
  strata_kv_t *kv = mk(6, 2, 1);
  for (int k = 0; k < 3; k++) {
    int32_t t[4];
    ramp(t, 4, 10 * (k + 1));
    struct strata_kv_seq s;
    run_prompt(kv, &s, t, 4, NULL);
    for (int i = 0; i < 2; i++)
      ids[k][i] = s.blocks[i], hs[k][i] = s.hashes[i];
    strata_kv_free_seq(kv, &s);
  }
  return kv;
}

/* Takes n blocks for a fresh sequence; expects n_removed evictions and
 * writes their block ids. */
static void evict_n(strata_kv_t *kv, int n, int n_removed, int32_t *out,
                    struct strata_kv_seq *x) {
  static int32_t base = 1000;
  int32_t t[64];
  ramp(t, 64, base);
  base += 100;
  int from = n_events;
  strata_kv_seq_init(x);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, x, t, 2 * n, NULL, 2 * n), 0);
  ck_assert_int_eq(removed_since(from, out, n_removed), n_removed);
  check(kv);
}

START_TEST(protect_and_hint_order_eviction) {
  int32_t ids[3][2], got[6];
  struct strata_kv_hash hs[3][2];
  struct strata_kv_seq x;
  strata_kv_t *kv = three(ids, hs);
  /* Plain LRU would be a1 a0 b1 b0 c1 c0. Protect A, hint C. */
  ck_assert_int_eq(strata_kv_protect(kv, hs[0], 2, 10.0), 2);
  ck_assert_int_eq(strata_kv_release_hint(kv, hs[2], 2), 2);
  struct strata_kv_stats s = stats(kv);
  ck_assert_int_eq(s.n_protected, 2);
  ck_assert_int_eq(s.n_hinted, 2);
  check(kv);
  evict_n(kv, 6, 6, got, &x);
  int32_t want[6] = {ids[2][1], ids[2][0], ids[1][1],
                     ids[1][0], ids[0][1], ids[0][0]};
  for (int i = 0; i < 6; i++)
    ck_assert_int_eq(got[i], want[i]);
  strata_kv_free_seq(kv, &x);
  strata_kv_destroy(kv);

  /* Protection lapses: A becomes the first normal block to go. */
  kv = three(ids, hs);
  ck_assert_int_eq(strata_kv_protect(kv, hs[0], 2, 10.0), 2);
  ck_assert_int_eq(strata_kv_protect(kv, hs[2], 2, 20.0), 2);
  fake_now += 15;
  evict_n(kv, 4, 4, got, &x);
  int32_t want2[4] = {ids[0][1], ids[0][0], ids[1][1], ids[1][0]};
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(got[i], want2[i]);
  ck_assert_int_eq(stats(kv).n_protected, 2);
  strata_kv_free_seq(kv, &x);
  strata_kv_destroy(kv);

  /* ttl <= 0 lifts a protection. */
  kv = three(ids, hs);
  ck_assert_int_eq(strata_kv_protect(kv, hs[0], 2, 10.0), 2);
  ck_assert_int_eq(strata_kv_protect(kv, hs[0], 2, 0), 2);
  ck_assert_int_eq(stats(kv).n_protected, 0);
  evict_n(kv, 2, 2, got, &x);
  ck_assert_int_eq(got[0], ids[0][1]);
  ck_assert_int_eq(got[1], ids[0][0]);
  strata_kv_free_seq(kv, &x);
  strata_kv_destroy(kv);
}
END_TEST

/* release_unprotected hints only blocks whose protection has lapsed (or
 * that had none): a shared prefix another hint keeps stays protected. */
START_TEST(release_unprotected_skips_protected) {
  int32_t ids[3][2], got[6];
  struct strata_kv_hash hs[3][2];
  struct strata_kv_seq x;
  strata_kv_t *kv = three(ids, hs);
  /* A protected, then release A, B and C: only B and C are hinted. */
  ck_assert_int_eq(strata_kv_protect(kv, hs[0], 2, 10.0), 2);
  int32_t kept = -1;
  struct strata_kv_hash all[6] = {hs[0][0], hs[0][1], hs[1][0], hs[1][1], hs[2][0], hs[2][1]};
  ck_assert_int_eq(strata_kv_release_unprotected(kv, all, 6, &kept), 4);
  ck_assert_int_eq(kept, 2);
  struct strata_kv_stats s = stats(kv);
  ck_assert_int_eq(s.n_protected, 2);
  ck_assert_int_eq(s.n_hinted, 4);
  check(kv);
  /* the hinted ones first, from the end of the list given (C1 C0 B1 B0),
   * then protected A */
  evict_n(kv, 6, 6, got, &x);
  int32_t want[6] = {ids[2][1], ids[2][0], ids[1][1], ids[1][0], ids[0][1], ids[0][0]};
  for (int i = 0; i < 6; i++) ck_assert_int_eq(got[i], want[i]);
  strata_kv_free_seq(kv, &x);
  strata_kv_destroy(kv);

  /* Once the protection lapses the block is released like any other. */
  kv = three(ids, hs);
  ck_assert_int_eq(strata_kv_protect(kv, hs[1], 2, 10.0), 2);
  fake_now += 9.5;
  ck_assert_int_eq(strata_kv_release_unprotected(kv, hs[1], 2, &kept), 0);
  ck_assert_int_eq(kept, 2);
  ck_assert_int_eq(stats(kv).n_hinted, 0);
  ck_assert_int_eq(stats(kv).n_protected, 2);
  fake_now += 1.0; /* lapsed, though still in the protected tier */
  ck_assert_int_eq(strata_kv_release_unprotected(kv, hs[1], 2, NULL), 2);
  ck_assert_int_eq(stats(kv).n_hinted, 2);
  ck_assert_int_eq(stats(kv).n_protected, 0);
  check(kv);
  evict_n(kv, 2, 2, got, &x); /* B goes first, ahead of LRU A */
  ck_assert_int_eq(got[0], ids[1][1]);
  ck_assert_int_eq(got[1], ids[1][0]);
  strata_kv_free_seq(kv, &x);
  /* the plain release hint overrides a protection */
  ck_assert_int_eq(strata_kv_protect(kv, hs[2], 2, 10.0), 2);
  ck_assert_int_eq(strata_kv_release_hint(kv, hs[2], 2), 2);
  ck_assert_int_eq(stats(kv).n_protected, 0);
  ck_assert_int_eq(stats(kv).n_hinted, 2);
  check(kv);
  strata_kv_destroy(kv);

  /* Protected while referenced: skipped too, and keeps its protection on
   * release. Unknown hashes and no caching affect nothing. */
  kv = mk(6, 2, 1);
  int32_t ta[4] = {1, 2, 3, 4};
  struct strata_kv_seq a;
  run_prompt(kv, &a, ta, 4, NULL);
  ck_assert_int_eq(strata_kv_protect(kv, a.hashes, 1, 10.0), 1);
  ck_assert_int_eq(strata_kv_release_unprotected(kv, a.hashes, 2, &kept), 1);
  ck_assert_int_eq(kept, 1);
  strata_kv_free_seq(kv, &a);
  ck_assert_int_eq(stats(kv).n_protected, 1);
  ck_assert_int_eq(stats(kv).n_hinted, 1);
  check(kv);
  ck_assert_int_eq(
      strata_kv_release_unprotected(kv, &(struct strata_kv_hash){1, 2}, 1, &kept), 0);
  ck_assert_int_eq(kept, 0);
  strata_kv_destroy(kv);
  kv = mk(6, 2, 0);
  ck_assert_int_eq(strata_kv_release_unprotected(kv, hs[0], 2, &kept), 0);
  ck_assert_int_eq(kept, 0);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(priorities_set_while_referenced) {
  strata_kv_t *kv = mk(6, 2, 1);
  int32_t ta[5] = {1, 2, 3, 4, 5}, tb[4] = {6, 7, 8, 9}, got[6];
  struct strata_kv_seq a, b, e, x;
  run_prompt(kv, &a, ta, 4, NULL);
  run_prompt(kv, &b, tb, 4, NULL);
  int32_t a0 = a.blocks[0], a1 = a.blocks[1], b0 = b.blocks[0],
          b1 = b.blocks[1];
  /* Hinted while in use: applies on release. Protected likewise. */
  ck_assert_int_eq(strata_kv_release_hint(kv, b.hashes, 2), 2);
  ck_assert_int_eq(strata_kv_protect(kv, a.hashes, 2, 100), 2);
  strata_kv_free_seq(kv, &a); /* A first: plain LRU would evict it first */
  strata_kv_free_seq(kv, &b);
  ck_assert_int_eq(stats(kv).n_hinted, 2);
  ck_assert_int_eq(stats(kv).n_protected, 2);
  /* A cache hit clears B's hint: B goes back to the normal tier. */
  strata_kv_seq_init(&e);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &e, tb, 4, NULL, 0), 2);
  strata_kv_free_seq(kv, &e);
  ck_assert_int_eq(stats(kv).n_hinted, 1);
  evict_n(kv, 6, 4, got,
          &x); /* 2 free, then b1 (hinted), b0, then protected A */
  ck_assert_int_eq(got[0], b1);
  ck_assert_int_eq(got[1], b0);
  ck_assert_int_eq(got[2], a1);
  ck_assert_int_eq(got[3], a0);
  strata_kv_free_seq(kv, &x);
  /* Unknown hashes affect nothing. */
  ck_assert_int_eq(strata_kv_protect(kv, &(struct strata_kv_hash){1, 2}, 1, 5),
                   0);
  ck_assert_int_eq(
      strata_kv_release_hint(kv, &(struct strata_kv_hash){1, 2}, 1), 0);
  strata_kv_destroy(kv);
}
END_TEST

/* ---- events, reset, hashing --------------------------------------------- */

START_TEST(events_for_stored_and_removed) {
  strata_kv_t *kv = mk(8, 4, 1);
  int32_t t[9];
  ramp(t, 9, 40);
  struct strata_kv_seq a;
  run_prompt(kv, &a, t, 9, "s");
  ck_assert_int_eq(n_events, 2);
  struct strata_kv_hash chain[2];
  ck_assert_int_eq(strata_kv_hash_chain(t, 9, 4, "s", chain), 2);
  ck_assert_int_eq(events[0].type, STRATA_KV_EVENT_STORED);
  ck_assert(strata_kv_hash_eq(events[0].hash, chain[0]));
  ck_assert(strata_kv_hash_eq(events[0].parent, strata_kv_hash_root("s")));
  ck_assert_int_eq(events[0].block, a.blocks[0]);
  ck_assert_int_eq(events[0].n_tokens, 4);
  ck_assert(strata_kv_hash_eq(events[1].hash, chain[1]));
  ck_assert(strata_kv_hash_eq(events[1].parent, chain[0]));
  ck_assert(strata_kv_hash_eq(a.hashes[1], chain[1]));
  ck_assert(strata_kv_contains(kv, chain[1]));
  /* reset: referenced blocks stay with A but leave the cache */
  ck_assert_int_eq(strata_kv_reset_cache(kv), 2);
  ck_assert_int_eq(n_events, 4);
  ck_assert_int_eq(events[2].type, STRATA_KV_EVENT_REMOVED);
  ck_assert_int_eq(events[3].type, STRATA_KV_EVENT_REMOVED);
  ck_assert(!strata_kv_contains(kv, chain[1]));
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 9, "s"), 0);
  check(kv);
  strata_kv_free_seq(kv, &a);
  ck_assert_int_eq(stats(kv).n_free, 8);
  /* eviction */
  run_prompt(kv, &a, t, 9, "s");
  strata_kv_free_seq(kv, &a);
  struct strata_kv_seq x;
  int32_t f[32];
  ramp(f, 32, 900);
  n_events = 0;
  run_prompt(kv, &x, f, 32, NULL);
  int removed = 0;
  for (int i = 0; i < n_events; i++)
    if (events[i].type == STRATA_KV_EVENT_REMOVED) {
      ck_assert(strata_kv_hash_eq(events[i].hash, chain[1 - removed]));
      removed++;
    }
  ck_assert_int_eq(removed, 2);
  strata_kv_free_seq(kv, &x);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

struct snap_ctx {
  strata_kv_events_t *log;
  uint64_t seq;
};
static void snap_locked(void *ud) {
  struct snap_ctx *c = ud;
  c->seq = strata_kv_events_next(c->log);
}

/* The event log a subscriber (GET /v1/cache/events) reads: a snapshot plus
 * the events after it rebuilds exactly what the manager holds; a reader
 * that falls out of the ring is told; hashes survive hex. */
START_TEST(event_log_replays_to_the_cache) {
  strata_kv_events_t *log = strata_kv_events_create(20); /* rounds to 32 */
  ck_assert_ptr_nonnull(log);
  struct strata_kv_config c = STRATA_KV_CONFIG_DEFAULTS;
  c.n_blocks = 6;
  c.block_size = 4;
  c.on_event = strata_kv_events_append;
  c.event_ud = log;
  strata_kv_t *kv = NULL;
  char err[256] = "";
  ck_assert_msg(strata_kv_create(&c, &kv, err, sizeof err) == 0, "%s", err);
  int32_t t[13];
  ramp(t, 13, 7);
  struct strata_kv_seq a;
  run_prompt(kv, &a, t, 13, NULL); /* 3 full blocks stored */
  strata_kv_free_seq(kv, &a);
  struct strata_kv_hash snap[6];
  struct snap_ctx sc = {log, 0};
  int32_t n = strata_kv_list_cached(kv, snap, 6, snap_locked, &sc);
  ck_assert_int_eq(n, 3);
  ck_assert_uint_eq(sc.seq, 3);
  /* more traffic: new prompts evict the first one's blocks */
  int32_t u[21];
  ramp(u, 21, 500);
  run_prompt(kv, &a, u, 21, NULL);
  strata_kv_free_seq(kv, &a);
  struct strata_kv_evrec ev[64];
  long m = strata_kv_events_read(log, sc.seq, ev, 64);
  ck_assert_int_gt(m, 0);
  /* replay onto the snapshot */
  struct strata_kv_hash set[32];
  int32_t ns = n;
  memcpy(set, snap, (size_t)n * sizeof *snap);
  int removed = 0;
  for (long i = 0; i < m; i++) {
    ck_assert_uint_eq(ev[i].seq, sc.seq + (uint64_t)i);
    if (ev[i].type == STRATA_KV_EVENT_STORED) {
      set[ns++] = ev[i].hash;
    } else {
      removed++;
      int found = 0;
      for (int32_t k = 0; k < ns; k++)
        if (strata_kv_hash_eq(set[k], ev[i].hash)) {
          set[k] = set[--ns];
          found = 1;
          break;
        }
      ck_assert_msg(found, "removed a block the replay did not hold");
    }
  }
  ck_assert_int_gt(removed, 0);
  struct strata_kv_hash now[6];
  int32_t nn = strata_kv_list_cached(kv, now, 6, NULL, NULL);
  ck_assert_int_eq(nn, ns);
  for (int32_t k = 0; k < ns; k++) ck_assert(strata_kv_contains(kv, set[k]));
  /* nothing new: 0; from the future or the distant past: -1 */
  ck_assert_int_eq(strata_kv_events_read(log, sc.seq + (uint64_t)m, ev, 64), 0);
  ck_assert_int_eq(strata_kv_events_read(log, sc.seq + (uint64_t)m + 1, ev, 64), -1);
  for (int r = 0; r < 6; r++) {
    ramp(u, 21, 1000 + 100 * r);
    run_prompt(kv, &a, u, 21, NULL);
    strata_kv_free_seq(kv, &a);
  }
  ck_assert_uint_gt(strata_kv_events_next(log), 32);
  ck_assert_int_eq(strata_kv_events_read(log, 0, ev, 64), -1);
  ck_assert_int_eq(strata_kv_events_read(log, strata_kv_events_next(log) - 32, ev, 64), 32);
  /* hex */
  char hex[33];
  struct strata_kv_hash h = {0x0123456789abcdefULL, 0xfedcba9876543210ULL}, back;
  strata_kv_hash_hex(h, hex);
  ck_assert_str_eq(hex, "fedcba98765432100123456789abcdef");
  ck_assert_int_eq(strata_kv_hash_parse(hex, 32, &back), 0);
  ck_assert(strata_kv_hash_eq(h, back));
  ck_assert_int_eq(strata_kv_hash_parse("FEDCBA98765432100123456789ABCDEF", 32, &back), 0);
  ck_assert(strata_kv_hash_eq(h, back));
  ck_assert_int_eq(strata_kv_hash_parse(hex, 31, &back), -1);
  ck_assert_int_eq(strata_kv_hash_parse("fedcba98765432100123456789abcdeg", 32, &back), -1);
  ck_assert_int_eq(strata_kv_hash_parse("fedcba9876543210 123456789abcdef", 32, &back), -1);
  ck_assert_int_eq(strata_kv_hash_parse(NULL, 32, &back), -1);
  strata_kv_destroy(kv);
  strata_kv_events_destroy(log);
}
END_TEST

START_TEST(hash_functions) {
  int32_t t[600];
  for (int i = 0; i < 600; i++)
    t[i] = i * 7919 - 300000;
  ck_assert(
      strata_kv_hash_eq(strata_kv_hash_root(NULL), strata_kv_hash_root("")));
  ck_assert(
      !strata_kv_hash_eq(strata_kv_hash_root("a"), strata_kv_hash_root("b")));
  /* Definition: XXH3-128 of parent (lo, hi) then the ids, all little-endian;
   * large blocks take the streaming path, which must agree. */
  for (int32_t bs = 1; bs <= 600; bs += 299) {
    struct strata_kv_hash p = {UINT64_C(0x0102030405060708),
                               UINT64_C(0x1112131415161718)};
    unsigned char *buf = malloc(16 + 4 * (size_t)bs);
    for (int i = 0; i < 8; i++) {
      buf[i] = (unsigned char)(p.lo >> (8 * i));
      buf[8 + i] = (unsigned char)(p.hi >> (8 * i));
    }
    for (int32_t i = 0; i < bs; i++)
      for (int k = 0; k < 4; k++)
        buf[16 + 4 * i + k] = (unsigned char)((uint32_t)t[i] >> (8 * k));
    XXH128_hash_t ref = XXH3_128bits(buf, 16 + 4 * (size_t)bs);
    struct strata_kv_hash h = strata_kv_hash_block(p, t, bs);
    ck_assert(h.lo == ref.low64 && h.hi == ref.high64);
    free(buf);
  }
  /* The chain is what the manager stores. */
  strata_kv_t *kv = mk(64, 8, 1);
  struct strata_kv_seq s;
  run_prompt(kv, &s, t, 50, "z");
  struct strata_kv_hash c[6];
  ck_assert_int_eq(strata_kv_hash_chain(t, 50, 8, "z", c), 6);
  for (int i = 0; i < 6; i++) {
    struct strata_kv_hash h;
    ck_assert(strata_kv_block_hash(kv, s.blocks[i], &h));
    ck_assert(strata_kv_hash_eq(h, c[i]));
  }
  /* A differing token changes every later hash. */
  t[9] ^= 1;
  struct strata_kv_hash c2[6];
  strata_kv_hash_chain(t, 50, 8, "z", c2);
  ck_assert(strata_kv_hash_eq(c[0], c2[0]));
  for (int i = 1; i < 6; i++)
    ck_assert(!strata_kv_hash_eq(c[i], c2[i]));
  ck_assert_int_eq(strata_kv_cached_tokens(kv, t, 50, "z"), 8);
  strata_kv_free_seq(kv, &s);
  strata_kv_destroy(kv);
}
END_TEST

START_TEST(sizing_and_config) {
  uint64_t bpt = strata_kv_bytes_per_token(22, 4, 64, 2);
  ck_assert_uint_eq(bpt, 2u * 22 * 4 * 64 * 2);
  ck_assert_int_eq(strata_kv_blocks_for_bytes(UINT64_C(2) << 30, bpt, 16),
                   (int32_t)((UINT64_C(2) << 30) / (bpt * 16)));
  ck_assert_int_eq(strata_kv_blocks_for_bytes(bpt * 16 - 1, bpt, 16), 0);
  ck_assert_int_eq(strata_kv_blocks_for_bytes(UINT64_MAX, 1, 16),
                   INT32_MAX / 16);
  ck_assert_int_eq(strata_kv_blocks_for_bytes(100, 0, 16), 0);
  ck_assert_uint_eq(strata_kv_bytes_per_token(0, 4, 64, 2), 0);
  ck_assert_uint_eq(
      strata_kv_bytes_per_token(INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX), 0);
  ck_assert_int_eq(strata_kv_blocks_for_tokens(33, 16), 3);
  ck_assert_int_eq(strata_kv_blocks_for_tokens(32, 16), 2);
  ck_assert_int_eq(strata_kv_blocks_for_tokens(0, 16), 0);

  struct strata_kv_config c = STRATA_KV_CONFIG_DEFAULTS;
  strata_kv_t *kv = NULL;
  char err[256];
  c.n_blocks = 0;
  ck_assert_int_eq(strata_kv_create(&c, &kv, err, sizeof err), -1);
  ck_assert_ptr_nonnull(strstr(err, "n_blocks"));
  c.n_blocks = INT32_MAX / 16 + 1;
  ck_assert_int_eq(strata_kv_create(&c, &kv, err, sizeof err), -1);
  c.n_blocks = 10;
  c.block_size = 0;
  ck_assert_int_eq(strata_kv_create(&c, &kv, err, sizeof err), -1);
  ck_assert_ptr_nonnull(strstr(err, "block_size"));
  ck_assert_ptr_null(kv);
  c.block_size = 16; /* default clock (strata_now), no events */
  ck_assert_int_eq(strata_kv_create(&c, &kv, err, sizeof err), 0);
  ck_assert_int_eq(strata_kv_block_size(kv), 16);
  struct strata_kv_seq s;
  int32_t t[40];
  ramp(t, 40, 0);
  strata_kv_seq_init(&s);
  ck_assert_int_eq(strata_kv_alloc_prefix(kv, &s, t, 40, NULL, 40), 0);
  ck_assert_int_eq(strata_kv_commit(kv, &s, t, 40), 0);
  ck_assert_int_eq(strata_kv_protect(kv, s.hashes, 2, 60), 2);
  strata_kv_free_seq(kv, &s);
  ck_assert_int_eq(stats(kv).n_protected, 2);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

/* ---- threads ---------------------------------------------------------- */

struct reader {
  strata_kv_t *kv;
  atomic_int stop;
  long reads;
};

/* The HTTP thread's view: every snapshot is consistent. */
static void *read_loop(void *arg) {
  struct reader *r = arg;
  int32_t t[64];
  ramp(t, 64, 0);
  while (!atomic_load(&r->stop)) {
    struct strata_kv_stats st = stats(r->kv);
    if (st.n_free + st.n_used + st.n_evictable != st.n_blocks) abort();
    if (st.hits > st.queries) abort();
    int32_t c = strata_kv_cached_tokens(r->kv, t, 64, NULL);
    if (c < 0 || c > 64 || c % 4) abort();
    r->reads++;
  }
  return NULL;
}

START_TEST(stats_and_lookup_from_another_thread) {
  struct strata_kv_config c = STRATA_KV_CONFIG_DEFAULTS;
  c.n_blocks = 32;
  c.block_size = 4;
  strata_kv_t *kv = NULL;
  ck_assert_int_eq(strata_kv_create(&c, &kv, NULL, 0), 0);
  struct reader r = {.kv = kv};
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, read_loop, &r), 0);
  int32_t t[64];
  ramp(t, 64, 0);
  for (int i = 0; i < 3000; i++) {
    struct strata_kv_seq s;
    strata_kv_seq_init(&s);
    int32_t n = 1 + i % 64;
    if (strata_kv_alloc_prefix(kv, &s, t, n, NULL, n) >= 0)
      ck_assert_int_eq(strata_kv_commit(kv, &s, t, n), 0);
    strata_kv_free_seq(kv, &s);
  }
  atomic_store(&r.stop, 1);
  pthread_join(th, NULL);
  check(kv);
  strata_kv_destroy(kv);
}
END_TEST

/* ---- randomized model check --------------------------------------------- */

#define MAXS 12 /* live sequences */
#define MAXT 96 /* tokens per sequence */

struct mseq {
  int live;
  struct strata_kv_seq s;
  int32_t tok[MAXT]; /* the sequence's tokens, known up to n_tok */
  int32_t n_tok;
  int salt; /* 0: none, 1: "x" */
};

static uint64_t rng_state;
static uint32_t rnd(uint32_t n) {
  rng_state =
      rng_state * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
  return (uint32_t)(rng_state >> 33) % n;
}

static const char *salt_str(int s) {
  return s ? "x" : NULL;
}

/* Shadow K/V: what each slot holds (token id and salt), written the way a
 * forward pass would write K/V rows. */
static int32_t *sh_tok, *sh_salt;

/* Model hash set from the events. */
static struct strata_kv_hash mset[4096];
static int n_mset;

static int mset_find(struct strata_kv_hash h) {
  for (int i = 0; i < n_mset; i++)
    if (strata_kv_hash_eq(mset[i], h)) return i;
  return -1;
}

static void apply_events(int from) {
  for (int i = from; i < n_events; i++) {
    int k = mset_find(events[i].hash);
    if (events[i].type == STRATA_KV_EVENT_STORED) {
      ck_assert_int_lt(k, 0);
      mset[n_mset++] = events[i].hash;
    } else {
      ck_assert_int_ge(k, 0);
      mset[k] = mset[--n_mset];
    }
  }
  n_events = 0;
}

static void model_check(strata_kv_t *kv, struct mseq *m, int32_t nb, int32_t bs,
                        int caching) {
  check(kv);
  int32_t *ref = calloc((size_t)nb, sizeof *ref);
  for (int k = 0; k < MAXS; k++) {
    if (!m[k].live) continue;
    struct strata_kv_seq *s = &m[k].s;
    ck_assert_int_eq(s->n_blocks, (s->n_slots + bs - 1) / bs);
    ck_assert_int_le(s->n_computed, s->n_slots);
    ck_assert_int_le(s->n_slots, m[k].n_tok);
    for (int32_t i = 0; i < s->n_blocks; i++) {
      for (int32_t j = 0; j < i; j++)
        ck_assert_int_ne(s->blocks[i], s->blocks[j]);
      ref[s->blocks[i]]++;
    }
  }
  int32_t used = 0, cached_free = 0, n_cached = 0;
  for (int32_t b = 0; b < nb; b++) {
    ck_assert_int_eq(strata_kv_block_ref(kv, b), ref[b]);
    struct strata_kv_hash h;
    int c = strata_kv_block_hash(kv, b, &h);
    if (c) {
      ck_assert(caching);
      ck_assert_int_ge(mset_find(h), 0);
      n_cached++;
    }
    used += ref[b] > 0;
    cached_free += ref[b] == 0 && c;
  }
  struct strata_kv_stats st = stats(kv);
  ck_assert_int_eq(st.n_used, used);
  ck_assert_int_eq(st.n_evictable, cached_free);
  ck_assert_int_eq(st.n_free, nb - used - cached_free);
  ck_assert_int_eq(st.n_cached, n_cached);
  ck_assert_int_eq(n_mset, n_cached);
  free(ref);
}

/* A sequence writes K/V only into blocks it holds alone. */
static void write_kv(strata_kv_t *kv, struct mseq *m, int32_t bs,
                     int32_t upto) {
  struct strata_kv_seq *s = &m->s;
  for (int32_t p = s->n_computed; p < upto; p++) {
    ck_assert_int_eq(strata_kv_block_ref(kv, s->blocks[p / bs]), 1);
    int32_t slot = strata_kv_slot(s, bs, p);
    sh_tok[slot] = m->tok[p];
    sh_salt[slot] = m->salt;
  }
}

static void verify_prefix(struct mseq *m, int32_t bs, int32_t n) {
  for (int32_t p = 0; p < n; p++) {
    int32_t slot = strata_kv_slot(&m->s, bs, p);
    ck_assert_int_eq(sh_tok[slot], m->tok[p]);
    ck_assert_int_eq(sh_salt[slot], m->salt);
  }
}

static void stress(int32_t nb, int32_t bs, int caching, uint64_t seed,
                   int n_ops) {
  rng_state = seed;
  strata_kv_t *kv = mk(nb, bs, caching);
  n_mset = 0;
  sh_tok = calloc((size_t)nb * bs, sizeof *sh_tok);
  sh_salt = calloc((size_t)nb * bs, sizeof *sh_salt);
  for (int32_t i = 0; i < nb * bs; i++)
    sh_tok[i] = sh_salt[i] = -1;
  static struct mseq m[MAXS];
  memset(m, 0, sizeof m);
  int32_t bases[3][48];
  for (int b = 0; b < 3; b++)
    for (int i = 0; i < 48; i++)
      bases[b][i] = (int32_t)rnd(4);
  int n_hits = 0, n_fail = 0;
  for (int op = 0; op < n_ops; op++) {
    int k = (int)rnd(MAXS);
    struct mseq *q = &m[k];
    uint32_t what = rnd(100);
    if (!q->live && what < 70) what = 0; /* mostly start on free slots */
    struct strata_kv_stats before = stats(kv);
    if (!q->live && what < 30) {
      /* new sequence: a shared base prefix and a random tail */
      int32_t *bp = bases[rnd(3)];
      int32_t n = 1 + (int32_t)rnd(48), extra = (int32_t)rnd(12);
      for (int32_t i = 0; i < n; i++)
        q->tok[i] = bp[i];
      for (int32_t i = 0; i < extra; i++)
        q->tok[n + i] = (int32_t)rnd(4);
      q->n_tok = n + extra;
      q->salt = rnd(4) == 0;
      int32_t n_compute =
          rnd(3) == 0 ? (int32_t)rnd((uint32_t)q->n_tok + 1) : INT32_MAX;
      strata_kv_seq_init(&q->s);
      int32_t peek =
          strata_kv_cached_tokens(kv, q->tok, q->n_tok, salt_str(q->salt));
      int32_t c = strata_kv_alloc_prefix(kv, &q->s, q->tok, q->n_tok,
                                         salt_str(q->salt), n_compute);
      if (c == STRATA_KV_ENOBLOCKS) {
        n_fail++;
        ck_assert_int_eq(q->s.started, 0);
        ck_assert_ptr_null(q->s.blocks);
        assert_same_stats(before, stats(kv));
      } else {
        ck_assert_int_ge(c, 0);
        ck_assert_int_eq(c % bs, 0);
        ck_assert_int_lt(c, q->n_tok);
        /* what the pure lookup saw, capped to leave one token */
        int32_t cap = (q->n_tok - 1) / bs * bs;
        ck_assert_int_eq(c, peek < cap ? peek : cap);
        ck_assert_uint_eq(stats(kv).hits - before.hits,
                          caching ? (uint64_t)c : 0);
        n_hits += c > 0;
        verify_prefix(q, bs, c); /* the cache gave exactly these tokens' K/V */
        q->live = 1;
      }
    } else if (!q->live) {
      /* a pure lookup changes nothing */
      int32_t n = 1 + (int32_t)rnd(48);
      (void)strata_kv_cached_tokens(kv, bases[rnd(3)], n, NULL);
      assert_same_stats(before, stats(kv));
    } else if (what < 35) {
      /* grow: more prompt, or newly sampled tokens */
      int32_t n_new = (int32_t)rnd(9);
      if (q->s.n_slots + n_new > MAXT) n_new = MAXT - q->s.n_slots;
      int32_t old_slots = q->s.n_slots, old_blocks = q->s.n_blocks;
      int rc = strata_kv_append_slots(kv, &q->s, n_new);
      if (rc == STRATA_KV_ENOBLOCKS) {
        n_fail++;
        ck_assert_int_eq(q->s.n_slots, old_slots);
        ck_assert_int_eq(q->s.n_blocks, old_blocks);
        assert_same_stats(before, stats(kv));
      } else {
        ck_assert_int_eq(rc, 0);
        while (q->n_tok < q->s.n_slots)
          q->tok[q->n_tok++] = (int32_t)rnd(4);
      }
    } else if (what < 65) {
      /* the forward pass wrote some of the reserved slots */
      int32_t lo = q->s.n_computed, hi = q->s.n_slots;
      int32_t n_total = lo + (int32_t)rnd((uint32_t)(hi - lo + 1));
      write_kv(kv, q, bs, n_total);
      ck_assert_int_eq(strata_kv_commit(kv, &q->s, q->tok, n_total), 0);
      ck_assert_int_eq(q->s.n_computed, n_total);
    } else if (what < 80) {
      strata_kv_free_seq(kv, &q->s);
      q->live = 0;
    } else if (what < 88) {
      /* fork into a free slot */
      int j = -1;
      for (int i = 0; i < MAXS; i++)
        if (!m[i].live) j = i;
      if (j >= 0) {
        struct mseq *ch = &m[j];
        strata_kv_seq_init(&ch->s);
        struct strata_kv_copy cp;
        int rc = strata_kv_fork(kv, &q->s, &ch->s, &cp);
        if (rc == STRATA_KV_ENOBLOCKS) {
          n_fail++;
          assert_same_stats(before, stats(kv));
        } else {
          ck_assert_int_eq(rc, 0);
          ck_assert_int_eq(cp.n_rows, q->s.n_computed % bs);
          for (int32_t r = 0; r < cp.n_rows; r++) {
            sh_tok[cp.dst * bs + r] = sh_tok[cp.src * bs + r];
            sh_salt[cp.dst * bs + r] = sh_salt[cp.src * bs + r];
          }
          memcpy(ch->tok, q->tok, sizeof ch->tok);
          ch->n_tok = ch->s.n_computed;
          ch->salt = q->salt;
          ch->live = 1;
          verify_prefix(ch, bs, ch->s.n_computed);
        }
      }
    } else if (what < 94) {
      int32_t n = q->s.n_hashes;
      uint32_t how = rnd(3);
      if (how == 0)
        strata_kv_protect(kv, q->s.hashes, n, rnd(3) ? (double)rnd(20) : -1.0);
      else if (how == 1)
        strata_kv_release_hint(kv, q->s.hashes, n);
      else
        strata_kv_release_unprotected(kv, q->s.hashes, n, NULL);
      fake_now += rnd(5);
    } else if (what < 99) {
      /* preemption: free and start over from the same tokens */
      int32_t n = q->n_tok;
      strata_kv_free_seq(kv, &q->s);
      q->live = 0;
      if (n == 0) { /* a fork of a parent with nothing computed yet */
        ck_assert_int_eq(strata_kv_alloc_prefix(kv, &q->s, q->tok, 0, NULL, 1),
                         STRATA_KV_EFAIL);
        goto next;
      }
      int32_t c = strata_kv_alloc_prefix(kv, &q->s, q->tok, n,
                                         salt_str(q->salt), INT32_MAX);
      if (c < 0) {
        ck_assert_int_eq(c, STRATA_KV_ENOBLOCKS);
      } else {
        verify_prefix(q, bs, c);
        q->live = 1;
      }
    } else {
      strata_kv_reset_cache(kv);
    }
  next:
    apply_events(0);
    model_check(kv, m, nb, bs, caching);
  }
  for (int k = 0; k < MAXS; k++)
    if (m[k].live) strata_kv_free_seq(kv, &m[k].s);
  apply_events(0);
  model_check(kv, m, nb, bs, caching);
  struct strata_kv_stats st = stats(kv);
  ck_assert_int_eq(st.n_free + st.n_evictable, nb);
  /* the scenario really exercised hits, evictions and failures */
  if (caching) {
    ck_assert_int_gt(n_hits, 10);
    ck_assert_uint_gt(st.evictions, 10);
  }
  ck_assert_int_gt(n_fail, 10);
  free(sh_tok);
  free(sh_salt);
  strata_kv_destroy(kv);
}

static const struct {
  int32_t nb, bs;
  int caching;
} stress_cfg[] = {
    {64, 4, 1}, {40, 1, 1}, {48, 3, 1}, {20, 8, 1}, {64, 4, 0},
};

START_TEST(randomized_against_model) {
  stress(stress_cfg[_i].nb, stress_cfg[_i].bs, stress_cfg[_i].caching,
         UINT64_C(0x9e3779b97f4a7c15) + (uint64_t)_i, 4000);
}
END_TEST

int main(void) {
  Suite *s = suite_create("kv_cache");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, alloc_free_returns_every_block);
  tcase_add_test(tc, prefix_reuse_shares_full_blocks);
  tcase_add_test(tc, whole_prompt_never_cached);
  tcase_add_test(tc, partial_block_never_shared);
  tcase_add_test(tc, salt_separates_caches);
  tcase_add_test(tc, disabled_caching_shares_nothing);
  tcase_add_test(tc, lru_evicts_oldest_and_tail_first);
  tcase_add_test(tc, reuse_refreshes_lru);
  tcase_add_test(tc, pure_lookup_changes_nothing);
  tcase_add_test(tc, cached_prefix_counts_idle_blocks);
  tcase_add_test(tc, keep_prefix_moves_to_recent_end);
  tcase_add_test(tc, out_of_blocks_changes_nothing);
  tcase_add_test(tc, fork_shares_full_blocks_copies_partial);
  tcase_add_test(tc, counters_exact);
  tcase_add_test(tc, protect_and_hint_order_eviction);
  tcase_add_test(tc, release_unprotected_skips_protected);
  tcase_add_test(tc, priorities_set_while_referenced);
  tcase_add_test(tc, events_for_stored_and_removed);
  tcase_add_test(tc, event_log_replays_to_the_cache);
  tcase_add_test(tc, hash_functions);
  tcase_add_test(tc, sizing_and_config);
  tcase_add_test(tc, stats_and_lookup_from_another_thread);
  suite_add_tcase(s, tc);
  TCase *tr = tcase_create("random");
  tcase_set_timeout(tr, 300);
  tcase_add_loop_test(tr, randomized_against_model, 0,
                      (int)(sizeof stress_cfg / sizeof stress_cfg[0]));
  suite_add_tcase(s, tr);
  return test_run_suite(s);
}
