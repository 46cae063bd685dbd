/* KV block manager with automatic prefix caching.
 *
 * The KV cache is a pool of n_blocks fixed-size blocks of block_size token
 * slots. A sequence (one request, or one of its n samples) holds a block
 * table; token position p lives in slot table[p / bs] * bs + p % bs.
 *
 * Prefix caching (as vLLM's automatic prefix caching): every FULL block whose
 * K/V have been written is identified by a chained 128-bit XXH3 hash of
 * (parent block's hash, its block_size token ids); the parent of block 0 is a
 * root hash derived from the request's cache_salt, so different salts never
 * share. A new sequence attaches every cached block of its prefix, walking
 * the chain from block 0 and stopping at the first miss. 128-bit hashes make
 * an accidental collision negligible (about 2^-65 after 2^32 distinct
 * blocks), so hits are not re-verified against token ids. XXH3 is not a
 * cryptographic hash: against tenants crafting collisions on purpose, give
 * each tenant a secret cache_salt (its root is then unknown to others).
 *
 * Each block is exactly one of:
 *   free       - no data worth keeping, on the free list;
 *   referenced - in at least one block table (refcount > 0);
 *   evictable  - cached (in the hash table) but in no block table; kept for
 *                reuse and evicted, least recently released first, only when
 *                the free list is empty.
 * A finishing sequence releases its blocks tail-first, so a sequence's tail
 * is evicted before its head (a later request can still reuse the head).
 * Evictable blocks sit in three tiers, evicted in this order:
 *   hinted (strata_kv_release_hint), normal, protected (strata_kv_protect,
 *   until its time-to-live lapses).
 *
 * Engine protocol for one sequence:
 *   seq_init -> alloc_prefix (attach cached prefix, reserve the first chunk)
 *   -> [forward pass over the reserved slots] -> commit(n_computed)
 *   -> append_slots(next chunk or 1 decode token) -> forward -> commit ...
 *   -> free_seq. On -1 (STRATA_KV_ENOBLOCKS) nothing changed: the scheduler
 *   preempts someone (free_seq) and retries, or waits.
 *
 * Threads: the engine loop owns the manager and its sequences. Every
 * function taking a strata_kv_t * (but create/destroy/block_size) holds the
 * manager's one mutex for its whole duration; it guards the blocks, lists,
 * hash table and counters. So strata_kv_cached_tokens, strata_kv_contains
 * and strata_kv_get_stats may be called from any thread (the HTTP thread) at
 * any time, and protect/release_hint from a router-facing thread. struct
 * strata_kv_seq is NOT guarded: only the engine thread touches sequences. */
#ifndef STRATA_KV_CACHE_H
#define STRATA_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct strata_kv strata_kv_t;

/* A block's identity in the prefix cache. */
struct strata_kv_hash {
  uint64_t lo, hi;
};

/* Return codes (besides >= 0 for success). */
#define STRATA_KV_ENOBLOCKS (-1) /* not enough free + evictable blocks */
#define STRATA_KV_EFAIL (-2)     /* out of memory or misuse; nothing changed */

enum strata_kv_event_type {
  STRATA_KV_EVENT_STORED,  /* a full block entered the prefix cache */
  STRATA_KV_EVENT_REMOVED, /* a block left it (eviction or reset) */
};

struct strata_kv_event {
  enum strata_kv_event_type type;
  struct strata_kv_hash hash;
  struct strata_kv_hash parent; /* STORED only: the chain's previous hash */
  int32_t block;                /* block id */
  /* STORED only: the block's block_size ids, valid during the call */
  const int32_t *tokens;
  int32_t n_tokens;
};

/* Called from inside the manager's functions, on the calling (engine)
 * thread, with the manager's mutex held: it must not call back into the
 * manager. Copy what you need (tokens points into the caller's buffer). */
typedef void (*strata_kv_event_fn)(void *ud, const struct strata_kv_event *ev);

struct strata_kv_config {
  int32_t block_size; /* tokens per block, 1..65536 */
  int32_t n_blocks;   /* blocks in the pool, >= 1 */
  /* 0: no hashing; released blocks go straight to the free list */
  int prefix_caching;
  /* Time in seconds for protection lifetimes; NULL: strata_now (monotonic). */
  double (*clock)(void *ud);
  void *clock_ud;
  strata_kv_event_fn on_event; /* NULL: no events */
  void *event_ud;
};

#define STRATA_KV_CONFIG_DEFAULTS                                              \
  ((struct strata_kv_config){                                                  \
      .block_size = 16, .n_blocks = 0, .prefix_caching = 1})

/* A sequence's view of the cache. Embed it in the request; read the fields,
 * change them only through strata_kv_* functions. */
struct strata_kv_seq {
  int32_t *blocks; /* [n_blocks] the block table */
  int32_t n_blocks;
  int32_t n_slots; /* tokens with a reserved slot (n_blocks * bs >= n_slots) */
  int32_t n_computed; /* tokens whose K/V are written, as told by commit */
  int32_t n_cached; /* tokens attached from the prefix cache by alloc_prefix */
  /* chain hashes of the first n_hashes full blocks (prefix caching only) */
  struct strata_kv_hash *hashes;
  int32_t n_hashes;
  int32_t n_registered; /* leading full blocks already offered to the cache */
  struct strata_kv_hash root; /* parent of block 0 (from the salt) */
  int started;
  int32_t cap_blocks, cap_hashes;
};

/* One K/V copy the engine must do on the backend: rows [0, n_rows) of block
 * src into block dst (for every layer's K and V). */
struct strata_kv_copy {
  int32_t src, dst, n_rows;
};

struct strata_kv_stats {
  int32_t block_size;
  int32_t n_blocks;    /* pool size */
  int32_t n_free;      /* on the free list */
  int32_t n_used;      /* referenced by some block table */
  int32_t n_evictable; /* cached, unreferenced (all tiers) */
  int32_t n_protected; /* evictable blocks in the protected tier */
  int32_t n_hinted;    /* evictable blocks in the release-hint tier */
  int32_t n_cached;    /* blocks in the hash table (referenced or evictable) */
  double usage;        /* n_used / n_blocks, as vLLM's kv_cache_usage_perc */
  /* Cumulative; queries and hits count TOKENS like vLLM's
   * prefix_cache_queries_total / prefix_cache_hits_total. */
  uint64_t queries;   /* prompt tokens of sequences started with caching on */
  uint64_t hits;      /* of those, tokens attached from the cache */
  uint64_t requests;  /* sequences started with caching on */
  uint64_t evictions; /* cached blocks evicted to make room */
};

/* ---- sizing ------------------------------------------------------------- */

/* Bytes of K and V for one token: 2 * n_layers * n_kv_heads * head_dim *
 * elem_bytes. 0 on overflow or a non-positive argument. */
uint64_t strata_kv_bytes_per_token(int32_t n_layers, int32_t n_kv_heads,
                                   int32_t head_dim, int32_t elem_bytes);
/* Blocks that fit in a byte budget (engine.kv_cache.memory); 0 if not even
 * one fits or an argument is 0; capped to what a block id can address. */
int32_t strata_kv_blocks_for_bytes(uint64_t budget, uint64_t bytes_per_token,
                                   int32_t block_size);
/* Blocks holding n_tokens slots (ceil); 0 for n_tokens <= 0. */
int32_t strata_kv_blocks_for_tokens(int64_t n_tokens, int32_t block_size);

/* ---- hashing (public so routers compute the same identities) ------------ */

/* Root of the chain for a cache_salt (NULL and "" are the same: no salt). */
struct strata_kv_hash strata_kv_hash_root(const char *salt);
/* Hash of one full block: XXH3-128 over parent (lo, hi as little-endian u64)
 * followed by the block_size token ids as little-endian int32. */
struct strata_kv_hash strata_kv_hash_block(struct strata_kv_hash parent,
                                           const int32_t *tokens,
                                           int32_t block_size);
/* Hashes of the n_tokens / block_size full blocks of tokens into out. */
int32_t strata_kv_hash_chain(const int32_t *tokens, int32_t n_tokens,
                             int32_t block_size, const char *salt,
                             struct strata_kv_hash *out);
static inline int strata_kv_hash_eq(struct strata_kv_hash a,
                                    struct strata_kv_hash b) {
  return a.lo == b.lo && a.hi == b.hi;
}

/* ---- manager ------------------------------------------------------------ */

int strata_kv_create(const struct strata_kv_config *cfg, strata_kv_t **out,
                     char *err, size_t errlen);
/* Sequences still holding blocks must not be used afterwards (free their
 * memory with strata_kv_seq_clear). */
void strata_kv_destroy(strata_kv_t *kv);
int32_t strata_kv_block_size(const strata_kv_t *kv);

/* ---- sequences ---------------------------------------------------------- */

void strata_kv_seq_init(struct strata_kv_seq *seq);
/* Frees a sequence's memory WITHOUT touching any manager (after destroy). */
void strata_kv_seq_clear(struct strata_kv_seq *seq);

/* Starts an empty sequence with prompt tokens[0, n_tokens): attaches the
 * longest cached prefix, at most (n_tokens - 1) / bs full blocks so that at
 * least one token is computed and yields logits, and reserves slots for the
 * next min(n_compute, n_tokens - cached) tokens. Atomic: on failure nothing
 * changed (counters included) and seq is still empty. Counts n_tokens
 * queries and the cached tokens as hits. Returns the cached token count (a
 * multiple of bs; seq->n_computed starts there), STRATA_KV_ENOBLOCKS or
 * STRATA_KV_EFAIL. salt: the request's cache_salt or NULL. */
int32_t strata_kv_alloc_prefix(strata_kv_t *kv, struct strata_kv_seq *seq,
                               const int32_t *tokens, int32_t n_tokens,
                               const char *salt, int32_t n_compute);

/* Reserves slots for n_new more tokens, taking blocks from the free list,
 * then evicting. Atomic: 0, or STRATA_KV_ENOBLOCKS / STRATA_KV_EFAIL with
 * nothing changed. */
int strata_kv_append_slots(strata_kv_t *kv, struct strata_kv_seq *seq,
                           int32_t n_new);

/* Tells the manager that the K/V of tokens[0, n_total) are written
 * (seq->n_computed <= n_total <= seq->n_slots). Full blocks not yet cached
 * enter the prefix cache now, so a block is only shared once written. A
 * block whose hash is already cached (another sequence computed the same
 * prefix concurrently) stays private and is freed on release. tokens may be
 * NULL when prefix caching is off. 0 or STRATA_KV_EFAIL. */
int strata_kv_commit(strata_kv_t *kv, struct strata_kv_seq *seq,
                     const int32_t *tokens, int32_t n_total);

/* Releases a sequence's blocks, last block first, and frees its memory;
 * seq is empty again (reusable, e.g. after preemption). */
void strata_kv_free_seq(strata_kv_t *kv, struct strata_kv_seq *seq);

/* Makes an empty child share the parent's first n_computed tokens (n > 1
 * sampling). Full blocks are shared by refcount; a partial last block is
 * duplicated into a new block, and *copy tells the engine which rows to
 * copy on the backend before the child's next step (copy->n_rows == 0: no
 * copy). Atomic: 0, STRATA_KV_ENOBLOCKS or STRATA_KV_EFAIL. */
int strata_kv_fork(strata_kv_t *kv, const struct strata_kv_seq *parent,
                   struct strata_kv_seq *child, struct strata_kv_copy *copy);

/* KV cache row of token position p (p < seq->n_slots). */
static inline int32_t strata_kv_slot(const struct strata_kv_seq *seq,
                                     int32_t block_size, int32_t p) {
  return seq->blocks[p / block_size] * block_size + p % block_size;
}

/* ---- queries (any thread) ----------------------------------------------- */

/* Tokens of tokens[0, n_tokens) found in cached full blocks (a multiple of
 * bs, not capped to n_tokens - 1). Pure: changes no counter, no LRU order. */
int32_t strata_kv_cached_tokens(strata_kv_t *kv, const int32_t *tokens,
                                int32_t n_tokens, const char *salt);
/* How many of hashes[0, n) (a chain, from block 0) are cached, counting
 * from the first: the cached prefix in blocks, without rehashing. Pure. */
int32_t strata_kv_cached_blocks(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n);
/* The same, and *n_idle: how many of the first max_idle cached ones no
 * sequence holds (evictable: attaching them takes them from the pool a
 * scheduler counts as free). Pure. */
int32_t strata_kv_cached_prefix(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n,
                                int32_t max_idle, int32_t *n_idle);
/* strata_kv_cached_prefix for a request that waits to reuse that prefix:
 * in the same walk its cached blocks that are idle in the ordinary tier
 * move to the tier's most recently used end, the chain's first block last
 * (so a prefix loses its tail before its head); hinted and protected
 * blocks keep their place. Called each step for each waiting request, so
 * blocks someone is queued for are not the least recently used ones. Not
 * pure: it changes the eviction order (no counter). */
int32_t strata_kv_keep_prefix(strata_kv_t *kv, const struct strata_kv_hash *hashes, int32_t n,
                              int32_t max_idle, int32_t *n_idle);
/* Whether a block with this hash is cached. Pure. */
int strata_kv_contains(strata_kv_t *kv, struct strata_kv_hash hash);
void strata_kv_get_stats(strata_kv_t *kv, struct strata_kv_stats *out);
/* Copies the hashes of every cached block (at most cap; cap >= n_blocks
 * gets them all) into out and returns how many. locked(ud), if not NULL,
 * runs while the manager's mutex is still held, so no event can slip
 * between the list and what it reads (an event log's next sequence). */
int32_t strata_kv_list_cached(strata_kv_t *kv, struct strata_kv_hash *out, int32_t cap,
                              void (*locked)(void *ud), void *ud);

/* ---- eviction priority hooks -------------------------------------------- */

/* Protects the cached blocks among hashes[0, n) (in chain order, e.g. a
 * seq's hashes) for ttl seconds of the config's clock: while evictable they
 * are evicted only after every hinted and normal block, tail first.
 * ttl <= 0 lifts a protection. When it lapses the block becomes the first
 * normal block to go (its owner said it would be back by then and was not).
 * Clears a release hint. Returns the number of cached blocks affected. */
int32_t strata_kv_protect(strata_kv_t *kv, const struct strata_kv_hash *hashes,
                          int32_t n, double ttl);
/* Marks the cached blocks among hashes[0, n) to be evicted before any other
 * once unreferenced (a finished workflow). Give hashes in chain order: the
 * tail goes first. Clears a protection; a later cache hit clears the hint.
 * Returns the number of cached blocks affected. */
int32_t strata_kv_release_hint(strata_kv_t *kv,
                               const struct strata_kv_hash *hashes, int32_t n);
/* strata_kv_release_hint, except that blocks whose protection has not
 * lapsed yet keep it (someone else still needs them: a shared system prompt
 * that another keep hint protects); *n_kept (may be NULL) counts them.
 * Returns the number of cached blocks hinted. */
int32_t strata_kv_release_unprotected(strata_kv_t *kv, const struct strata_kv_hash *hashes,
                                      int32_t n, int32_t *n_kept);

/* Drops every block from the prefix cache (vLLM's reset_prefix_cache):
 * evictable blocks become free, referenced ones stay with their sequences
 * but will not be reused. Emits REMOVED events; not counted as evictions.
 * Returns the number of blocks dropped. */
int32_t strata_kv_reset_cache(strata_kv_t *kv);

/* ---- introspection (tests, debugging) ----------------------------------- */

int32_t strata_kv_block_ref(strata_kv_t *kv, int32_t block);
/* 1 and *hash if the block is in the hash table, else 0. */
int strata_kv_block_hash(strata_kv_t *kv, int32_t block,
                         struct strata_kv_hash *hash);
/* Checks every internal invariant (list links and counts, one state per
 * block, hash table entries point at blocks holding those hashes). O(n).
 * 0, or -1 with the first violation in err. */
int strata_kv_check(strata_kv_t *kv, char *err, size_t errlen);

#endif
