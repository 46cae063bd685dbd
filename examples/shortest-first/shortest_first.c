/* shortest-first: an out-of-tree scheduler plugin for strata, built with
 * nothing but the installed SDK (pkg-config strata-plugin). docs/plugins.md
 * walks through it.
 *
 * Policy: running requests decode first (one token each), then running
 * prefills get their next chunk, then waiting requests start in order of
 * fewest uncached prompt tokens (shortest job first: short chats are not
 * stuck behind long documents), ties by arrival. It never preempts: when
 * blocks run out, a request simply waits; the core keeps every budget. */
#include <stdlib.h>
#include <string.h>

#include <strata/plugin.h>
#include <strata/scheduler.h>

static const struct strata_host_api *host;

struct state {
  int32_t max_prefill_chunk;
  uint32_t cap;
  uint32_t *order; /* waiting requests, sorted */
};

static int sf_init(const struct strata_host_api *h, const strata_config_node_t *cfg, char *err,
                   size_t errlen) {
  (void)cfg;
  (void)err;
  (void)errlen;
  host = h;
  return 0;
}

static int sf_create(const strata_config_node_t *cfg, void **out, char *err, size_t errlen) {
  struct state *s = calloc(1, sizeof *s);
  if (!s) {
    if (errlen) strncpy(err, "out of memory", errlen - 1);
    return -1;
  }
  s->max_prefill_chunk = (int32_t)host->config_int(cfg, "max_prefill_chunk");
  *out = s;
  return 0;
}

static void sf_destroy(void *state) {
  struct state *s = state;
  free(s->order);
  free(s);
}

/* Uncached prompt tokens of a waiting request: the work it still needs. */
static int32_t work(const struct strata_sched_req *r) { return r->n_prompt - r->n_cached; }

static int sf_schedule(void *state, const struct strata_sched_view *v,
                       struct strata_sched_decision *out, uint32_t cap, char *err, size_t errlen) {
  struct state *s = state;
  uint32_t n = v->n_running + v->n_waiting, n_out = 0;
  if (n > s->cap) {
    uint32_t *o = realloc(s->order, sizeof *o * n);
    if (!o) {
      if (errlen) strncpy(err, "out of memory", errlen - 1);
      return -1;
    }
    s->order = o;
    s->cap = n;
  }
  int32_t budget = v->max_batch_tokens, free_blocks = v->free_blocks;
  int32_t running = (int32_t)v->n_running;
  /* running requests: decodes (remaining == 1) first, then prefill chunks */
  for (int pass = 0; pass < 2; pass++)
    for (uint32_t i = 0; i < v->n_running; i++) {
      const struct strata_sched_req *r = &v->reqs[i];
      int32_t remaining = r->n_prompt - r->n_computed, per = r->n_choices > 0 ? r->n_choices : 1;
      if ((remaining == 1) != (pass == 0)) continue;
      int32_t k = remaining;
      if (s->max_prefill_chunk > 0 && k > s->max_prefill_chunk) k = s->max_prefill_chunk;
      if (k > budget / per) k = budget / per;
      if (k < 1) continue;
      int32_t need = v->blocks_for(v, i, r->n_computed + k);
      if (need > free_blocks || n_out >= cap) continue; /* waits for blocks */
      out[n_out++] = (struct strata_sched_decision){.index = i, .action = STRATA_SCHED_RUN,
                                                    .n_tokens = k};
      budget -= k * per;
      free_blocks -= need;
    }
  /* waiting requests, least work first (insertion sort: queues are short) */
  uint32_t nw = 0;
  for (uint32_t i = v->n_running; i < n; i++) {
    uint32_t j = nw++;
    while (j > 0) {
      const struct strata_sched_req *a = &v->reqs[s->order[j - 1]], *b = &v->reqs[i];
      if (work(a) < work(b) || (work(a) == work(b) && a->arrival <= b->arrival)) break;
      s->order[j] = s->order[j - 1];
      j--;
    }
    s->order[j] = i;
  }
  for (uint32_t w = 0; w < nw && running < v->max_running && n_out < cap; w++) {
    uint32_t i = s->order[w];
    const struct strata_sched_req *r = &v->reqs[i];
    int32_t per = r->n_choices > 0 ? r->n_choices : 1, k = work(r);
    if (s->max_prefill_chunk > 0 && k > s->max_prefill_chunk) k = s->max_prefill_chunk;
    if (k > budget / per) k = budget / per;
    if (k < 1) break;
    int32_t need = v->blocks_for(v, i, r->n_cached + k);
    if (need > free_blocks) continue; /* a shorter one behind may still fit */
    out[n_out++] = (struct strata_sched_decision){.index = i, .action = STRATA_SCHED_RUN,
                                                  .n_tokens = k};
    budget -= k * per;
    free_blocks -= need;
    running++;
  }
  return (int)n_out;
}

static const struct strata_param sf_params[] = {
    {"max_prefill_chunk", STRATA_PARAM_INT, 0, "0", 0, 16777216,
     "most tokens one request prefills in a step; 0: up to the step's budget"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_scheduler_vtable sf_vtable = {
    .size = sizeof(struct strata_scheduler_vtable),
    .create = sf_create,
    .destroy = sf_destroy,
    .schedule = sf_schedule,
};

static const struct strata_plugin_desc sf_desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_SCHEDULER,
    .name = "shortest-first",
    .version = "0.1",
    .license = "MIT",
    .description = "waiting requests with the fewest uncached prompt tokens start first",
    .params = sf_params,
    .init = sf_init,
    .vt.scheduler = &sf_vtable,
};

STRATA_PLUGIN_DEFINE(sf_desc)
