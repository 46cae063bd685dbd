#include "config.h"

#include "kv_cache.h"

#include <float.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* XXH3_state_t on the stack (streaming hash for very large blocks). */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "util.h"

/* Lists a block can be on. Referenced blocks are on none. The evictable
 * tiers are evicted in enum order: hinted, normal, protected. */
enum { L_FREE, L_HINT, L_NORMAL, L_PROT, N_LISTS, L_NONE = 255 };

struct kv_block {
  struct strata_kv_hash hash; /* valid while cached */
  double protect_until;       /* clock time; 0: not protected */
  int32_t ref;                /* block tables holding it */
  int32_t prev, next;         /* links in its list (indices into kv->b) */
  int32_t hnext;              /* next block in its hash bucket, -1 ends */
  uint8_t list;               /* L_* */
  uint8_t cached;             /* in the hash table */
  uint8_t hint;               /* evict first once unreferenced */
};

struct strata_kv {
  pthread_mutex_t mu;
  int32_t bs, n;
  int caching;
  double (*clock)(void *ud);
  void *clock_ud;
  strata_kv_event_fn on_event;
  void *event_ud;
  /* [n + N_LISTS]: blocks, then one sentinel per list so that list
   * operations need no special cases. */
  struct kv_block *b;
  int32_t count[N_LISTS];
  int32_t *buckets; /* [mask + 1] heads of the hash chains, -1 empty */
  uint32_t mask;
  int32_t n_cached;
  /* A lower bound on protect_until over the protected tier: the tier is
   * only scanned for lapsed protections once the clock passes it. */
  double prot_min;
  uint64_t queries, hits, requests, evictions;
};

#define HASH_SEED UINT64_C(0x7374726174614b56) /* "strataKV" */
#define MAX_BLOCK_SIZE 65536

/* ---- sizing ------------------------------------------------------------- */

static uint64_t mul_sat0(uint64_t a, uint64_t b) {
  /* 0 on overflow, which every caller treats as "invalid". */
  if (a && b > UINT64_MAX / a) return 0;
  return a * b;
}

uint64_t strata_kv_bytes_per_token(int32_t n_layers, int32_t n_kv_heads,
                                   int32_t head_dim, int32_t elem_bytes) {
  if (n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || elem_bytes <= 0)
    return 0;
  uint64_t v = mul_sat0(2, (uint64_t)n_layers);
  v = mul_sat0(v, (uint64_t)n_kv_heads);
  v = mul_sat0(v, (uint64_t)head_dim);
  return mul_sat0(v, (uint64_t)elem_bytes);
}

/* Slots are int32 in the batch (block * bs + offset), so the pool may not
 * hold more than INT32_MAX slots; the list sentinels take N_LISTS ids. */
static int64_t max_blocks(int32_t block_size) {
  int64_t m = INT32_MAX / block_size;
  return m < INT32_MAX - N_LISTS ? m : INT32_MAX - N_LISTS;
}

int32_t strata_kv_blocks_for_bytes(uint64_t budget, uint64_t bytes_per_token,
                                   int32_t block_size) {
  if (block_size <= 0 || block_size > MAX_BLOCK_SIZE) return 0;
  uint64_t per_block = mul_sat0(bytes_per_token, (uint64_t)block_size);
  if (!per_block) return 0;
  uint64_t n = budget / per_block;
  int64_t m = max_blocks(block_size);
  return (int32_t)(n > (uint64_t)m ? (uint64_t)m : n);
}

int32_t strata_kv_blocks_for_tokens(int64_t n_tokens, int32_t block_size) {
  if (n_tokens <= 0 || block_size <= 0) return 0;
  int64_t n = (n_tokens + block_size - 1) / block_size;
  return (int32_t)(n > INT32_MAX ? INT32_MAX : n);
}

/* ---- hashing ------------------------------------------------------------ */

static struct strata_kv_hash from_xxh(XXH128_hash_t h) {
  return (struct strata_kv_hash){.lo = h.low64, .hi = h.high64};
}

static void put_le64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* Little-endian bytes of n token ids: the hash must not depend on the host,
 * since routers on other machines compute the same identities. */
static void put_tokens(unsigned char *p, const int32_t *t, int32_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, t, (size_t)n * 4);
#else
  for (int32_t i = 0; i < n; i++) {
    uint32_t v = (uint32_t)t[i];
    for (int k = 0; k < 4; k++)
      p[4 * i + k] = (unsigned char)(v >> (8 * k));
  }
#endif
}

struct strata_kv_hash strata_kv_hash_root(const char *salt) {
  size_t len = salt ? strlen(salt) : 0;
  return from_xxh(XXH3_128bits_withSeed(len ? salt : "", len, HASH_SEED));
}

struct strata_kv_hash strata_kv_hash_block(struct strata_kv_hash parent,
                                           const int32_t *tokens,
                                           int32_t block_size) {
  enum { CHUNK = 256 }; /* tokens per pass; typical blocks hash in one shot */
  unsigned char buf[16 + 4 * CHUNK];
  put_le64(buf, parent.lo);
  put_le64(buf + 8, parent.hi);
  if (block_size <= CHUNK) {
    put_tokens(buf + 16, tokens, block_size);
    return from_xxh(XXH3_128bits(buf, 16 + (size_t)block_size * 4));
  }
  /* The streaming digest equals the one-shot digest of the same bytes. */
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  XXH3_128bits_update(&st, buf, 16);
  for (int32_t i = 0; i < block_size; i += CHUNK) {
    int32_t m = block_size - i < CHUNK ? block_size - i : CHUNK;
    put_tokens(buf, tokens + i, m);
    XXH3_128bits_update(&st, buf, (size_t)m * 4);
  }
  return from_xxh(XXH3_128bits_digest(&st));
}

int32_t strata_kv_hash_chain(const int32_t *tokens, int32_t n_tokens,
                             int32_t block_size, const char *salt,
                             struct strata_kv_hash *out) {
  if (block_size <= 0 || n_tokens < block_size) return 0;
  int32_t n = n_tokens / block_size;
  struct strata_kv_hash h = strata_kv_hash_root(salt);
  for (int32_t i = 0; i < n; i++) {
    h = strata_kv_hash_block(h, tokens + (size_t)i * block_size, block_size);
    out[i] = h;
  }
  return n;
}

/* ---- lists -------------------------------------------------------------- */

static int32_t head_of(const strata_kv_t *kv, int l) {
  return kv->n + l;
}

static void list_unlink(strata_kv_t *kv, int32_t i) {
  struct kv_block *b = kv->b;
  b[b[i].prev].next = b[i].next;
  b[b[i].next].prev = b[i].prev;
  kv->count[b[i].list]--;
  b[i].list = L_NONE;
  b[i].prev = b[i].next = -1;
}

static void list_insert_after(strata_kv_t *kv, int l, int32_t at, int32_t i) {
  struct kv_block *b = kv->b;
  b[i].prev = at;
  b[i].next = b[at].next;
  b[b[at].next].prev = i;
  b[at].next = i;
  b[i].list = (uint8_t)l;
  kv->count[l]++;
}

static void push_tail(strata_kv_t *kv, int l, int32_t i) {
  list_insert_after(kv, l, kv->b[head_of(kv, l)].prev, i);
}

static void push_head(strata_kv_t *kv, int l, int32_t i) {
  list_insert_after(kv, l, head_of(kv, l), i);
}

static int32_t first_of(const strata_kv_t *kv, int l) {
  return kv->count[l] ? kv->b[head_of(kv, l)].next : -1;
}

/* ---- hash table --------------------------------------------------------- */

static uint32_t bucket_of(const strata_kv_t *kv, struct strata_kv_hash h) {
  return (uint32_t)h.lo & kv->mask; /* XXH3 output bits are uniform */
}

static int32_t ht_find(const strata_kv_t *kv, struct strata_kv_hash h) {
  for (int32_t i = kv->buckets[bucket_of(kv, h)]; i >= 0; i = kv->b[i].hnext)
    if (strata_kv_hash_eq(kv->b[i].hash, h)) return i;
  return -1;
}

static void ht_insert(strata_kv_t *kv, int32_t i, struct strata_kv_hash h) {
  struct kv_block *b = &kv->b[i];
  uint32_t k = bucket_of(kv, h);
  b->hash = h;
  b->hnext = kv->buckets[k];
  kv->buckets[k] = i;
  b->cached = 1;
  kv->n_cached++;
}

static void ht_remove(strata_kv_t *kv, int32_t i) {
  int32_t *p = &kv->buckets[bucket_of(kv, kv->b[i].hash)];
  while (*p != i)
    p = &kv->b[*p].hnext;
  *p = kv->b[i].hnext;
  kv->b[i].hnext = -1;
  kv->b[i].cached = 0;
  kv->n_cached--;
}

/* ---- block states ------------------------------------------------------- */

static double now_of(const strata_kv_t *kv) {
  return kv->clock ? kv->clock(kv->clock_ud) : strata_now();
}

static void emit(strata_kv_t *kv, enum strata_kv_event_type type, int32_t i,
                 struct strata_kv_hash parent, const int32_t *tokens) {
  if (!kv->on_event) return;
  struct strata_kv_event ev = {
      .type = type,
      .hash = kv->b[i].hash,
      .parent = parent,
      .block = i,
      .tokens = tokens,
      .n_tokens = tokens ? kv->bs : 0,
  };
  kv->on_event(kv->event_ud, &ev);
}

static void uncache(strata_kv_t *kv, int32_t i) {
  ht_remove(kv, i);
  emit(kv, STRATA_KV_EVENT_REMOVED, i, (struct strata_kv_hash){0, 0}, NULL);
  kv->b[i].hint = 0;
  kv->b[i].protect_until = 0;
}

static void protect_tail(strata_kv_t *kv, int32_t i) {
  push_tail(kv, L_PROT, i);
  if (kv->b[i].protect_until < kv->prot_min)
    kv->prot_min = kv->b[i].protect_until;
}

/* A block nobody references any more: the free list if it holds nothing
 * reusable, else the tail (most recently released end) of its tier. */
static void place(strata_kv_t *kv, int32_t i) {
  struct kv_block *b = &kv->b[i];
  if (!b->cached)
    push_tail(kv, L_FREE, i);
  else if (b->hint)
    push_tail(kv, L_HINT, i);
  else if (b->protect_until > 0 && b->protect_until > now_of(kv))
    protect_tail(kv, i);
  else {
    b->protect_until = 0;
    push_tail(kv, L_NORMAL, i);
  }
}

/* Moves lapsed protections to the head of the normal tier (first to go),
 * keeping their relative order. Runs only once the clock passes prot_min,
 * which is then recomputed exactly, so the scan is rare. */
static void expire(strata_kv_t *kv) {
  if (!kv->count[L_PROT]) {
    kv->prot_min = DBL_MAX;
    return;
  }
  double now = now_of(kv);
  if (now < kv->prot_min) return;
  double min = DBL_MAX;
  int32_t h = head_of(kv, L_PROT);
  for (int32_t i = kv->b[h].prev, prev; i != h; i = prev) {
    prev = kv->b[i].prev;
    if (kv->b[i].protect_until <= now) {
      list_unlink(kv, i);
      kv->b[i].protect_until = 0;
      push_head(kv, L_NORMAL, i);
    } else if (kv->b[i].protect_until < min) {
      min = kv->b[i].protect_until;
    }
  }
  kv->prot_min = min;
}

/* Takes the least valuable evictable block out of the cache. */
static int32_t evict_one(strata_kv_t *kv) {
  int32_t i = first_of(kv, L_HINT);
  if (i < 0) {
    expire(kv);
    i = first_of(kv, L_NORMAL);
  }
  if (i < 0) i = first_of(kv, L_PROT);
  if (i < 0) return -1;
  list_unlink(kv, i);
  uncache(kv, i);
  kv->evictions++;
  return i;
}

static int32_t available(const strata_kv_t *kv) {
  return kv->count[L_FREE] + kv->count[L_HINT] + kv->count[L_NORMAL] +
         kv->count[L_PROT];
}

/* A block for new K/V; the caller checked available(). */
static int32_t take_block(strata_kv_t *kv) {
  int32_t i = first_of(kv, L_FREE);
  if (i >= 0)
    list_unlink(kv, i);
  else
    i = evict_one(kv);
  kv->b[i].ref = 1;
  return i;
}

/* Another table holds block i (a cache hit or a fork). */
static void touch(strata_kv_t *kv, int32_t i) {
  struct kv_block *b = &kv->b[i];
  if (b->ref == 0) list_unlink(kv, i);
  b->ref++;
  b->hint = 0; /* reuse proves the hint wrong */
}

static void release(strata_kv_t *kv, int32_t i) {
  if (--kv->b[i].ref == 0) place(kv, i);
}

/* ---- manager ------------------------------------------------------------ */

int strata_kv_create(const struct strata_kv_config *cfg, strata_kv_t **out,
                     char *err, size_t errlen) {
  *out = NULL;
  if (cfg->block_size < 1 || cfg->block_size > MAX_BLOCK_SIZE)
    return strata_errf(err, errlen, "kv cache: block_size %d is not in 1..%d",
                       cfg->block_size, MAX_BLOCK_SIZE);
  if (cfg->n_blocks < 1 || cfg->n_blocks > max_blocks(cfg->block_size))
    return strata_errf(
        err, errlen,
        "kv cache: n_blocks %d is not in 1..%lld for block_size %d",
        cfg->n_blocks, (long long)max_blocks(cfg->block_size), cfg->block_size);
  strata_kv_t *kv = strata_calloc(1, sizeof *kv);
  if (!kv) return strata_errf(err, errlen, "kv cache: out of memory");
  kv->bs = cfg->block_size;
  kv->n = cfg->n_blocks;
  kv->caching = cfg->prefix_caching != 0;
  kv->clock = cfg->clock;
  kv->clock_ud = cfg->clock_ud;
  kv->on_event = cfg->on_event;
  kv->event_ud = cfg->event_ud;
  kv->prot_min = DBL_MAX;
  kv->b = strata_calloc((size_t)kv->n + N_LISTS, sizeof *kv->b);
  if (kv->caching) {
    /* Load factor <= 1: a power of two >= n_blocks. */
    uint64_t nb = 16;
    while (nb < (uint64_t)kv->n)
      nb <<= 1;
    kv->mask = (uint32_t)(nb - 1);
    kv->buckets = strata_calloc((size_t)nb, sizeof *kv->buckets);
    if (kv->buckets)
      memset(kv->buckets, 0xff, (size_t)nb * sizeof *kv->buckets);
  }
  if (!kv->b || (kv->caching && !kv->buckets) ||
      pthread_mutex_init(&kv->mu, NULL)) {
    free(kv->b);
    free(kv->buckets);
    free(kv);
    return strata_errf(err, errlen, "kv cache: out of memory for %d blocks",
                       cfg->n_blocks);
  }
  for (int l = 0; l < N_LISTS; l++) {
    struct kv_block *h = &kv->b[head_of(kv, l)];
    h->prev = h->next = head_of(kv, l);
    h->list = (uint8_t)l;
  }
  for (int32_t i = 0; i < kv->n; i++) {
    kv->b[i].hnext = -1;
    push_tail(kv, L_FREE, i);
  }
  *out = kv;
  return 0;
}

void strata_kv_destroy(strata_kv_t *kv) {
  if (!kv) return;
  pthread_mutex_destroy(&kv->mu);
  free(kv->b);
  free(kv->buckets);
  free(kv);
}

int32_t strata_kv_block_size(const strata_kv_t *kv) {
  return kv->bs;
}

/* ---- sequences ---------------------------------------------------------- */

void strata_kv_seq_init(struct strata_kv_seq *seq) {
  memset(seq, 0, sizeof *seq);
}

void strata_kv_seq_clear(struct strata_kv_seq *seq) {
  free(seq->blocks);
  free(seq->hashes);
  strata_kv_seq_init(seq);
}

static int32_t grow_cap(int32_t cap, int32_t need) {
  int64_t c = cap < 8 ? 8 : cap;
  while (c < need)
    c *= 2;
  return (int32_t)(c > INT32_MAX ? INT32_MAX : c);
}

/* Capacity for nb table entries and nh hashes; geometric, so appending one
 * token at a time costs amortized O(1) and no per-token malloc. */
static int seq_reserve(struct strata_kv_seq *s, int32_t nb, int32_t nh) {
  if (nb > s->cap_blocks) {
    int32_t c = grow_cap(s->cap_blocks, nb);
    int32_t *p = strata_reallocarray(s->blocks, (size_t)c, sizeof *p);
    if (!p) return -1;
    s->blocks = p;
    s->cap_blocks = c;
  }
  if (nh > s->cap_hashes) {
    int32_t c = grow_cap(s->cap_hashes, nh);
    struct strata_kv_hash *p =
        strata_reallocarray(s->hashes, (size_t)c, sizeof *p);
    if (!p) return -1;
    s->hashes = p;
    s->cap_hashes = c;
  }
  return 0;
}

static int32_t blocks_for(int64_t n_tokens, int32_t bs) {
  return (int32_t)((n_tokens + bs - 1) / bs);
}

/* Walks the chain from block 0 and stops at the first miss. Writes the
 * hashes and block ids of the hits when asked. */
static int32_t match_prefix(const strata_kv_t *kv, struct strata_kv_hash root,
                            const int32_t *tokens, int32_t max_hits,
                            struct strata_kv_hash *hashes, int32_t *ids) {
  struct strata_kv_hash h = root;
  int32_t n = 0;
  for (; n < max_hits; n++) {
    h = strata_kv_hash_block(h, tokens + (size_t)n * kv->bs, kv->bs);
    int32_t id = ht_find(kv, h);
    if (id < 0) break;
    if (hashes) hashes[n] = h;
    if (ids) ids[n] = id;
  }
  return n;
}

int32_t strata_kv_alloc_prefix(strata_kv_t *kv, struct strata_kv_seq *seq,
                               const int32_t *tokens, int32_t n_tokens,
                               const char *salt, int32_t n_compute) {
  if (!kv || !seq || seq->started || seq->n_blocks || !tokens || n_tokens < 1 ||
      n_compute < 0)
    return STRATA_KV_EFAIL;
  pthread_mutex_lock(&kv->mu);
  int32_t bs = kv->bs, hits = 0, reclaim = 0;
  int32_t full = n_tokens / bs;
  int32_t rc;
  if (seq_reserve(seq, blocks_for(n_tokens, bs), kv->caching ? full : 0)) {
    rc = STRATA_KV_EFAIL;
    goto fail;
  }
  if (kv->caching) {
    seq->root = strata_kv_hash_root(salt);
    /* Never the whole prompt: the last token must run to give logits. */
    hits = match_prefix(kv, seq->root, tokens, (n_tokens - 1) / bs, seq->hashes,
                        seq->blocks);
    for (int32_t i = 0; i < hits; i++)
      reclaim += kv->b[seq->blocks[i]].ref == 0;
  }
  int32_t cached = hits * bs;
  int32_t want = n_compute < n_tokens - cached ? n_compute : n_tokens - cached;
  int32_t need = blocks_for((int64_t)cached + want, bs) - hits;
  /* Attaching an evictable hit takes it out of the pool that new blocks
   * come from. */
  if (need > available(kv) - reclaim) {
    rc = STRATA_KV_ENOBLOCKS;
    goto fail;
  }
  for (int32_t i = 0; i < hits; i++)
    touch(kv, seq->blocks[i]);
  for (int32_t i = 0; i < need; i++)
    seq->blocks[hits + i] = take_block(kv);
  seq->n_blocks = hits + need;
  seq->n_slots = cached + want;
  seq->n_computed = cached;
  seq->n_cached = cached;
  seq->n_hashes = hits;
  seq->n_registered = hits;
  seq->started = 1;
  if (kv->caching) {
    kv->queries += (uint64_t)n_tokens;
    kv->hits += (uint64_t)cached;
    kv->requests++;
  }
  pthread_mutex_unlock(&kv->mu);
  return cached;
fail:
  pthread_mutex_unlock(&kv->mu);
  strata_kv_seq_clear(seq);
  return rc;
}

int strata_kv_append_slots(strata_kv_t *kv, struct strata_kv_seq *seq,
                           int32_t n_new) {
  if (!kv || !seq || !seq->started || n_new < 0 ||
      n_new > INT32_MAX - seq->n_slots)
    return STRATA_KV_EFAIL;
  pthread_mutex_lock(&kv->mu);
  int rc = 0;
  int32_t target = seq->n_slots + n_new;
  int32_t nb = blocks_for(target, kv->bs);
  int32_t need = nb - seq->n_blocks;
  if (need > 0) {
    if (seq_reserve(seq, nb, 0)) {
      rc = STRATA_KV_EFAIL;
      goto out;
    }
    if (need > available(kv)) {
      rc = STRATA_KV_ENOBLOCKS;
      goto out;
    }
    for (int32_t i = 0; i < need; i++)
      seq->blocks[seq->n_blocks + i] = take_block(kv);
    seq->n_blocks = nb;
  }
  seq->n_slots = target;
out:
  pthread_mutex_unlock(&kv->mu);
  return rc;
}

int strata_kv_commit(strata_kv_t *kv, struct strata_kv_seq *seq,
                     const int32_t *tokens, int32_t n_total) {
  if (!kv || !seq || !seq->started || n_total < seq->n_computed ||
      n_total > seq->n_slots)
    return STRATA_KV_EFAIL;
  int32_t bs = kv->bs, full = n_total / bs;
  if (kv->caching && full > seq->n_registered && !tokens)
    return STRATA_KV_EFAIL;
  int rc = 0;
  pthread_mutex_lock(&kv->mu);
  if (kv->caching && full > seq->n_registered) {
    if (seq_reserve(seq, 0, full)) {
      rc = STRATA_KV_EFAIL;
      goto out;
    }
    for (int32_t i = seq->n_registered; i < full; i++) {
      struct strata_kv_hash parent = i ? seq->hashes[i - 1] : seq->root;
      const int32_t *t = tokens + (size_t)i * bs;
      if (i >= seq->n_hashes) {
        seq->hashes[i] = strata_kv_hash_block(parent, t, bs);
        seq->n_hashes = i + 1;
      }
      int32_t id = seq->blocks[i];
      /* A duplicate of a cached block stays private: one entry per hash. */
      if (!kv->b[id].cached && ht_find(kv, seq->hashes[i]) < 0) {
        ht_insert(kv, id, seq->hashes[i]);
        emit(kv, STRATA_KV_EVENT_STORED, id, parent, t);
      }
    }
    seq->n_registered = full;
  }
  seq->n_computed = n_total;
out:
  pthread_mutex_unlock(&kv->mu);
  return rc;
}

void strata_kv_free_seq(strata_kv_t *kv, struct strata_kv_seq *seq) {
  if (!seq) return;
  if (kv && seq->n_blocks) {
    pthread_mutex_lock(&kv->mu);
    /* Tail first: the tail reaches the evictable tiers first, so it is
     * evicted before the head that other requests are likelier to share. */
    for (int32_t i = seq->n_blocks - 1; i >= 0; i--)
      release(kv, seq->blocks[i]);
    pthread_mutex_unlock(&kv->mu);
  }
  strata_kv_seq_clear(seq);
}

int strata_kv_fork(strata_kv_t *kv, const struct strata_kv_seq *parent,
                   struct strata_kv_seq *child, struct strata_kv_copy *copy) {
  if (!kv || !parent || !child || parent == child || !parent->started ||
      child->started || child->n_blocks)
    return STRATA_KV_EFAIL;
  int32_t bs = kv->bs, nc = parent->n_computed;
  int32_t full = nc / bs, part = nc % bs;
  int32_t nh = parent->n_hashes < full ? parent->n_hashes : full;
  int rc = 0;
  pthread_mutex_lock(&kv->mu);
  if (seq_reserve(child, full + (part > 0), nh)) {
    rc = STRATA_KV_EFAIL;
    goto fail;
  }
  if (part && available(kv) < 1) {
    rc = STRATA_KV_ENOBLOCKS;
    goto fail;
  }
  for (int32_t i = 0; i < full; i++) {
    child->blocks[i] = parent->blocks[i];
    touch(kv, parent->blocks[i]);
  }
  struct strata_kv_copy c = {.src = -1, .dst = -1, .n_rows = 0};
  if (part) {
    /* The partial block will diverge: the child writes its own next token
     * into it, so it gets a private copy instead of copy-on-write. */
    c = (struct strata_kv_copy){
        .src = parent->blocks[full], .dst = take_block(kv), .n_rows = part};
    child->blocks[full] = c.dst;
  }
  if (nh)
    memcpy(child->hashes, parent->hashes, (size_t)nh * sizeof *child->hashes);
  child->n_blocks = full + (part > 0);
  child->n_slots = nc;
  child->n_computed = nc;
  child->n_cached = parent->n_cached < nc ? parent->n_cached : nc;
  child->n_hashes = nh;
  child->n_registered =
      parent->n_registered < full ? parent->n_registered : full;
  child->root = parent->root;
  child->started = 1;
  pthread_mutex_unlock(&kv->mu);
  if (copy) *copy = c;
  return 0;
fail:
  pthread_mutex_unlock(&kv->mu);
  strata_kv_seq_clear(child);
  return rc;
}

/* ---- queries ------------------------------------------------------------ */

int32_t strata_kv_cached_tokens(strata_kv_t *kv, const int32_t *tokens,
                                int32_t n_tokens, const char *salt) {
  if (!kv || !tokens || n_tokens < kv->bs || !kv->caching) return 0;
  struct strata_kv_hash root = strata_kv_hash_root(salt);
  pthread_mutex_lock(&kv->mu);
  int32_t hits = match_prefix(kv, root, tokens, n_tokens / kv->bs, NULL, NULL);
  pthread_mutex_unlock(&kv->mu);
  return hits * kv->bs;
}

/* The cached prefix of a chain (see strata_kv_cached_prefix); with keep,
 * also moves its idle ordinary-tier blocks to the most recently used end,
 * each one just before the block moved before it, so the chain's first
 * block ends up last in line. One walk, under the lock. */
static int32_t cached_prefix(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n,
                             int32_t max_idle, int32_t *n_idle, int keep) {
  if (n_idle) *n_idle = 0;
  if (!kv || !hashes || n <= 0 || !kv->caching) return 0;
  pthread_mutex_lock(&kv->mu);
  int32_t i = 0, idle = 0, moved = -1;
  for (int32_t b; i < n && (b = ht_find(kv, hashes[i])) >= 0; i++) {
    if (i < max_idle && kv->b[b].ref == 0) idle++;
    if (keep && kv->b[b].list == L_NORMAL) {
      list_unlink(kv, b);
      if (moved < 0)
        push_tail(kv, L_NORMAL, b);
      else
        list_insert_after(kv, L_NORMAL, kv->b[moved].prev, b);
      moved = b;
    }
  }
  pthread_mutex_unlock(&kv->mu);
  if (n_idle) *n_idle = idle;
  return i;
}

int32_t strata_kv_cached_prefix(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n,
                                int32_t max_idle, int32_t *n_idle) {
  return cached_prefix(kv, hashes, n, max_idle, n_idle, 0);
}

int32_t strata_kv_keep_prefix(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n,
                              int32_t max_idle, int32_t *n_idle) {
  return cached_prefix(kv, hashes, n, max_idle, n_idle, 1);
}

int32_t strata_kv_cached_blocks(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n) {
  return strata_kv_cached_prefix(kv, hashes, n, 0, NULL);
}

int strata_kv_contains(strata_kv_t *kv, struct strata_kv_hash hash) {
  if (!kv || !kv->caching) return 0;
  pthread_mutex_lock(&kv->mu);
  int found = ht_find(kv, hash) >= 0;
  pthread_mutex_unlock(&kv->mu);
  return found;
}

int32_t strata_kv_list_cached(strata_kv_t *kv, struct strata_kv_hash *out, int32_t cap,
                              void (*locked)(void *ud), void *ud) {
  pthread_mutex_lock(&kv->mu);
  int32_t n = 0;
  for (int32_t i = 0; i < kv->n && n < cap; i++)
    if (kv->b[i].cached) out[n++] = kv->b[i].hash;
  if (locked) locked(ud);
  pthread_mutex_unlock(&kv->mu);
  return n;
}

void strata_kv_get_stats(strata_kv_t *kv, struct strata_kv_stats *out) {
  pthread_mutex_lock(&kv->mu);
  int32_t ev = kv->count[L_HINT] + kv->count[L_NORMAL] + kv->count[L_PROT];
  *out = (struct strata_kv_stats){
      .block_size = kv->bs,
      .n_blocks = kv->n,
      .n_free = kv->count[L_FREE],
      .n_used = kv->n - kv->count[L_FREE] - ev,
      .n_evictable = ev,
      .n_protected = kv->count[L_PROT],
      .n_hinted = kv->count[L_HINT],
      .n_cached = kv->n_cached,
      .usage = (double)(kv->n - kv->count[L_FREE] - ev) / (double)kv->n,
      .queries = kv->queries,
      .hits = kv->hits,
      .requests = kv->requests,
      .evictions = kv->evictions,
  };
  pthread_mutex_unlock(&kv->mu);
}

/* ---- eviction priority hooks -------------------------------------------- */

int32_t strata_kv_protect(strata_kv_t *kv, const struct strata_kv_hash *hashes,
                          int32_t n, double ttl) {
  if (!kv || !kv->caching || !hashes || n <= 0) return 0;
  pthread_mutex_lock(&kv->mu);
  double until = ttl > 0 ? now_of(kv) + ttl : 0;
  int32_t affected = 0;
  for (int32_t j = 0; j < n; j++) {
    /* Keep the chain's tail first in line: protecting appends to the
     * protected tier's tail, so walk backwards; lifting pushes onto the
     * normal tier's head, so walk forwards. */
    int32_t k = until > 0 ? n - 1 - j : j;
    int32_t i = ht_find(kv, hashes[k]);
    if (i < 0) continue;
    struct kv_block *b = &kv->b[i];
    affected++;
    if (until > 0) {
      b->hint = 0;
      b->protect_until = until;
      if (b->list != L_NONE) {
        list_unlink(kv, i);
        protect_tail(kv, i);
      }
    } else {
      b->protect_until = 0;
      if (b->list == L_PROT) {
        list_unlink(kv, i);
        push_head(kv, L_NORMAL, i);
      }
    }
  }
  pthread_mutex_unlock(&kv->mu);
  return affected;
}

/* keep_protected: blocks whose protection has not lapsed are left alone
 * (counted in *n_kept). */
static int32_t release_hint(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n,
                            int keep_protected, int32_t *n_kept) {
  if (n_kept) *n_kept = 0;
  if (!kv || !kv->caching || !hashes || n <= 0) return 0;
  pthread_mutex_lock(&kv->mu);
  double now = keep_protected ? now_of(kv) : 0;
  int32_t affected = 0, kept = 0;
  for (int32_t k = n - 1; k >= 0; k--) {
    int32_t i = ht_find(kv, hashes[k]);
    if (i < 0) continue;
    struct kv_block *b = &kv->b[i];
    if (keep_protected && b->protect_until > now) {
      kept++;
      continue;
    }
    affected++;
    b->hint = 1;
    b->protect_until = 0;
    if (b->list != L_NONE) {
      list_unlink(kv, i);
      push_tail(kv, L_HINT, i);
    }
  }
  pthread_mutex_unlock(&kv->mu);
  if (n_kept) *n_kept = kept;
  return affected;
}

int32_t strata_kv_release_hint(strata_kv_t *kv,
                               const struct strata_kv_hash *hashes, int32_t n) {
  return release_hint(kv, hashes, n, 0, NULL);
}

int32_t strata_kv_release_unprotected(strata_kv_t *kv, const struct strata_kv_hash *hashes,
                                      int32_t n, int32_t *n_kept) {
  return release_hint(kv, hashes, n, 1, n_kept);
}

int32_t strata_kv_reset_cache(strata_kv_t *kv) {
  if (!kv || !kv->caching) return 0;
  pthread_mutex_lock(&kv->mu);
  int32_t dropped = 0;
  for (int32_t i = 0; i < kv->n; i++) {
    if (!kv->b[i].cached) continue;
    if (kv->b[i].list != L_NONE) list_unlink(kv, i);
    uncache(kv, i);
    if (kv->b[i].ref == 0) push_tail(kv, L_FREE, i);
    dropped++;
  }
  kv->prot_min = DBL_MAX;
  pthread_mutex_unlock(&kv->mu);
  return dropped;
}

/* ---- introspection ------------------------------------------------------ */

int32_t strata_kv_block_ref(strata_kv_t *kv, int32_t block) {
  if (!kv || block < 0 || block >= kv->n) return -1;
  pthread_mutex_lock(&kv->mu);
  int32_t r = kv->b[block].ref;
  pthread_mutex_unlock(&kv->mu);
  return r;
}

int strata_kv_block_hash(strata_kv_t *kv, int32_t block,
                         struct strata_kv_hash *hash) {
  if (!kv || block < 0 || block >= kv->n) return 0;
  pthread_mutex_lock(&kv->mu);
  int cached = kv->b[block].cached;
  if (cached && hash) *hash = kv->b[block].hash;
  pthread_mutex_unlock(&kv->mu);
  return cached;
}

static int check_locked(strata_kv_t *kv, char *err, size_t errlen) {
  const struct kv_block *b = kv->b;
  int32_t seen[N_LISTS] = {0};
  for (int l = 0; l < N_LISTS; l++) {
    int32_t h = head_of(kv, l), prev = h;
    for (int32_t i = b[h].next; i != h; prev = i, i = b[i].next) {
      if (i < 0 || i >= kv->n)
        return strata_errf(err, errlen, "list %d: bad link %d", l, i);
      if (b[i].prev != prev)
        return strata_errf(err, errlen, "block %d: bad prev link", i);
      if (b[i].list != l)
        return strata_errf(err, errlen, "block %d on list %d says %d", i, l,
                           b[i].list);
      if (b[i].ref != 0)
        return strata_errf(err, errlen, "block %d listed with ref %d", i,
                           b[i].ref);
      if ((l == L_FREE) == (b[i].cached != 0))
        return strata_errf(err, errlen, "block %d on list %d with cached=%d", i,
                           l, b[i].cached);
      if (++seen[l] > kv->n)
        return strata_errf(err, errlen, "list %d: cycle", l);
    }
    if (b[h].prev != prev)
      return strata_errf(err, errlen, "list %d: bad tail", l);
    if (seen[l] != kv->count[l])
      return strata_errf(err, errlen, "list %d holds %d, count says %d", l,
                         seen[l], kv->count[l]);
  }
  int32_t n_cached = 0;
  for (int32_t i = 0; i < kv->n; i++) {
    if (b[i].ref < 0)
      return strata_errf(err, errlen, "block %d: ref %d", i, b[i].ref);
    if ((b[i].ref > 0) != (b[i].list == L_NONE))
      return strata_errf(err, errlen, "block %d: ref %d but list %d", i,
                         b[i].ref, b[i].list);
    if (!b[i].cached && (b[i].hint || b[i].protect_until != 0))
      return strata_errf(err, errlen, "block %d: priority on an uncached block",
                         i);
    if (b[i].list == L_HINT && !b[i].hint)
      return strata_errf(err, errlen, "block %d: hinted tier without hint", i);
    if (b[i].list == L_PROT && b[i].protect_until <= 0)
      return strata_errf(err, errlen,
                         "block %d: protected tier without protection", i);
    if (b[i].list == L_PROT && b[i].protect_until < kv->prot_min)
      return strata_errf(err, errlen, "block %d: protection below prot_min", i);
    if (b[i].cached) {
      n_cached++;
      if (!kv->caching)
        return strata_errf(err, errlen, "block %d cached with caching off", i);
      if (ht_find(kv, b[i].hash) != i)
        return strata_errf(err, errlen,
                           "block %d: its hash finds another block", i);
    }
  }
  if (n_cached != kv->n_cached)
    return strata_errf(err, errlen, "%d cached blocks, n_cached says %d",
                       n_cached, kv->n_cached);
  if (kv->caching) {
    int32_t in_table = 0;
    for (uint64_t k = 0; k <= kv->mask; k++)
      for (int32_t i = kv->buckets[k]; i >= 0; i = b[i].hnext) {
        if (i >= kv->n || !b[i].cached || bucket_of(kv, b[i].hash) != k)
          return strata_errf(err, errlen, "bucket %llu: stray entry %d",
                             (unsigned long long)k, i);
        if (++in_table > n_cached)
          return strata_errf(err, errlen, "hash table: too many entries");
      }
    if (in_table != n_cached)
      return strata_errf(err, errlen, "hash table holds %d, %d blocks cached",
                         in_table, n_cached);
  }
  return 0;
}

int strata_kv_check(strata_kv_t *kv, char *err, size_t errlen) {
  pthread_mutex_lock(&kv->mu);
  int rc = check_locked(kv, err, errlen);
  pthread_mutex_unlock(&kv->mu);
  return rc;
}
