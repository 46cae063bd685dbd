/* strata sim: replays a request trace through the real scheduler plugins and
 * the real engine core (KV block manager, prefix caching, budgets,
 * preemption), with the model step replaced by a cost model, and prints
 * latency percentiles, throughput, preemptions and the cache hit rate per
 * policy, side by side. See docs/cli.md. */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "conf.h"
#include "engine.h"
#include "plugin_loader.h"
#include "sim_trace.h"
#include "util.h"

#define MAX_POLICIES 16

struct sim_rec {
  double t_first, t_done;
  int32_t tokens, cached;
  int got, done, rejected;
};

struct sim_ctx {
  strata_engine_t *e;
  struct sim_rec *rec;
};

struct sim_cb {
  struct sim_ctx *ctx;
  size_t i;
};

static void sim_event(void *ud, const struct strata_engine_event *ev) {
  struct sim_cb *cb = ud;
  struct sim_rec *r = &cb->ctx->rec[cb->i];
  double now = strata_engine_sim_time(cb->ctx->e);
  if (ev->n_tokens > 0 && !r->got) {
    r->got = 1;
    r->t_first = now;
  }
  r->tokens += ev->n_tokens;
  if (ev->done) {
    r->done = 1;
    r->t_done = now;
    r->cached = ev->cached_tokens;
  }
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p) {
  if (!n) return 0;
  size_t k = (size_t)ceil(p / 100.0 * (double)n);
  return v[k ? k - 1 : 0];
}

struct sim_result {
  const char *policy;
  size_t n, done, rejected;
  double ttft[3], itl[2], e2e[3], ttft_mean; /* p50 p90 p99; itl mean p99; */
  double throughput, hit_rate, group_hit_rate, makespan;
  uint64_t preemptions, steps;
};

static int run_policy(const struct strata_registry *reg, struct strata_config *cfgfile,
                      const struct strata_engine_config *ec, const struct strata_engine_sim *sim,
                      const struct strata_sim_trace *tr, struct sim_result *res) {
  char err[512];
  struct sim_ctx ctx = {0};
  ctx.rec = calloc(tr->n, sizeof *ctx.rec);
  struct sim_cb *cbs = calloc(tr->n, sizeof *cbs);
  strata_engine_req_t **hs = calloc(tr->n, sizeof *hs);
  double *a = malloc(sizeof *a * tr->n), *b = malloc(sizeof *b * tr->n),
         *c = malloc(sizeof *c * tr->n);
  int rc = 1;
  if (!ctx.rec || !cbs || !hs || !a || !b || !c) {
    fprintf(stderr, "strata: sim: out of memory\n");
    goto out;
  }
  if (strata_engine_start_sim(reg, cfgfile, ec, sim, &ctx.e, err, sizeof err) != 0) {
    fprintf(stderr, "strata: sim: %s\n", err);
    goto out;
  }
  size_t next = 0;
  int stuck = 0;
  while (next < tr->n || !strata_engine_sim_idle(ctx.e)) {
    double now = strata_engine_sim_time(ctx.e);
    for (; next < tr->n && tr->reqs[next].t <= now; next++) {
      const struct strata_sim_req *q = &tr->reqs[next];
      cbs[next] = (struct sim_cb){.ctx = &ctx, .i = next};
      struct strata_request_params p;
      strata_sim_request(q, &p);
      if (strata_engine_submit(ctx.e, &p, sim_event, &cbs[next], &hs[next], err, sizeof err) !=
          0) {
        ctx.rec[next].rejected = 1;
        if (res->rejected++ == 0)
          fprintf(stderr, "strata: sim: trace line %d refused: %s\n", q->line, err);
      }
    }
    if (strata_engine_sim_step(ctx.e)) {
      stuck = 0;
      continue;
    }
    if (next < tr->n && strata_engine_sim_idle(ctx.e)) {
      strata_engine_sim_set_time(ctx.e, tr->reqs[next].t);
    } else if (next < tr->n) {
      /* nothing could run: let time pass to the next arrival */
      strata_engine_sim_set_time(ctx.e, tr->reqs[next].t);
      if (++stuck > 1000000) break;
    } else if (++stuck > 1000) {
      fprintf(stderr, "strata: sim: %s: requests can never run (the KV cache is too small?)\n",
              ec->scheduler);
      break;
    }
  }
  size_t n = 0;
  double t0 = tr->reqs[0].t, t1 = t0, ttft_sum = 0, itl_all = 0;
  size_t itl_n = 0;
  int64_t tokens = 0, g_cached = 0, g_prompt = 0;
  for (size_t i = 0; i < tr->n; i++) {
    const struct sim_rec *r = &ctx.rec[i];
    if (!r->done || !r->got) continue;
    if (tr->reqs[i].group) {
      g_cached += r->cached;
      g_prompt += tr->reqs[i].n_prompt;
    }
    a[n] = r->t_first - tr->reqs[i].t;
    c[n] = r->t_done - tr->reqs[i].t;
    b[n] = r->tokens > 1 ? (r->t_done - r->t_first) / (r->tokens - 1) : 0;
    ttft_sum += a[n];
    if (r->tokens > 1) {
      itl_all += r->t_done - r->t_first;
      itl_n += (size_t)(r->tokens - 1);
    }
    tokens += r->tokens;
    if (r->t_done > t1) t1 = r->t_done;
    n++;
  }
  qsort(a, n, sizeof *a, cmp_d);
  qsort(b, n, sizeof *b, cmp_d);
  qsort(c, n, sizeof *c, cmp_d);
  struct strata_engine_metrics m;
  strata_engine_get_metrics(ctx.e, &m);
  res->policy = ec->scheduler;
  res->n = tr->n;
  res->done = n;
  res->ttft[0] = pct(a, n, 50);
  res->ttft[1] = pct(a, n, 90);
  res->ttft[2] = pct(a, n, 99);
  res->ttft_mean = n ? ttft_sum / (double)n : 0;
  res->itl[0] = itl_n ? itl_all / (double)itl_n : 0;
  res->itl[1] = pct(b, n, 99);
  res->e2e[0] = pct(c, n, 50);
  res->e2e[1] = pct(c, n, 90);
  res->e2e[2] = pct(c, n, 99);
  res->makespan = t1 - t0;
  res->throughput = t1 > t0 ? (double)tokens / (t1 - t0) : 0;
  res->hit_rate = m.kv.queries ? (double)m.kv.hits / (double)m.kv.queries : 0;
  res->group_hit_rate = g_prompt ? (double)g_cached / (double)g_prompt : 0;
  res->preemptions = m.preemptions_total;
  res->steps = m.steps_total;
  rc = 0;
out:
  for (size_t i = 0; hs && i < tr->n; i++)
    if (hs[i]) strata_engine_release(hs[i]);
  strata_engine_stop(ctx.e);
  free(ctx.rec);
  free(cbs);
  free(hs);
  free(a);
  free(b);
  free(c);
  return rc;
}

static void sim_usage(FILE *f) {
  fprintf(f,
          "usage: strata sim --trace FILE [--policy NAME]... [--config FILE]\n"
          "         [--vocab N] [--context N] [--block-size N] [--kv-tokens N]\n"
          "         [--max-running N] [--max-batch-tokens N]\n"
          "         [--step-ms X] [--prefill-ms X] [--decode-ms X] [--attn-ms X] [--json]\n"
          "         [--expand FILE]  (write the trace with token-id prompts and stop)\n"
          "         [--calibrate STEPLOG]  (fit the cost model to a STRATA_STEP_LOG)\n"
          "Replays a JSONL trace through each scheduler policy (default: every\n"
          "installed one) and the real engine core with a cost model per step:\n"
          "step-ms + prefill tokens x prefill-ms + decoding sequences x decode-ms\n"
          "+ attn-ms x (each computed token's context position / 1000).\n");
}

static int dbl_arg(const char *opt, const char *s, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !(v >= 0) || v > 1e6) {
    fprintf(stderr, "strata: sim: %s must be a number of milliseconds >= 0, got '%s'\n", opt, s);
    return -1;
  }
  *out = v;
  return 0;
}

int strata_cmd_sim(int argc, char **argv) {
  const char *trace = NULL, *config = NULL, *expand = NULL, *calibrate = NULL,
             *policies[MAX_POLICIES];
  int set_cost[4] = {0}; /* step, prefill, decode, attn given on the command line */
  int n_pol = 0, json = 0;
  long v;
  struct strata_engine_config ec;
  strata_engine_config_defaults(&ec);
  ec.kv_tokens = 16384;
  /* defaults: tinyllama-1.1b q8_0 on a 2-core AVX-512 VM (strata bench):
   * 45 ms per decode step at 1 sequence, +7.7 ms per more sequence, 5.7 ms
   * per prefill token */
  struct strata_engine_sim sim = {.step_s = 0.0373,
                                  .prefill_s_per_token = 0.0057,
                                  .decode_s_per_seq = 0.0077,
                                  .n_vocab = 32000,
                                  .ctx_len = 4096};
  static const struct option opts[] = {{"trace", required_argument, 0, 't'},
                                       {"policy", required_argument, 0, 'p'},
                                       {"config", required_argument, 0, 'c'},
                                       {"vocab", required_argument, 0, 'V'},
                                       {"context", required_argument, 0, 'C'},
                                       {"block-size", required_argument, 0, 'b'},
                                       {"kv-tokens", required_argument, 0, 'k'},
                                       {"max-running", required_argument, 0, 'R'},
                                       {"max-batch-tokens", required_argument, 0, 'B'},
                                       {"step-ms", required_argument, 0, 'S'},
                                       {"prefill-ms", required_argument, 0, 'P'},
                                       {"decode-ms", required_argument, 0, 'D'},
                                       {"attn-ms", required_argument, 0, 'A'},
                                       {"json", no_argument, 0, 'j'},
                                       {"expand", required_argument, 0, 'E'},
                                       {"calibrate", required_argument, 0, 'K'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  optind = 1;
  int c;
  double ms;
  while ((c = getopt_long(argc, argv, "t:p:c:h", opts, NULL)) != -1) {
    switch (c) {
    case 't': trace = optarg; break;
    case 'c': config = optarg; break;
    case 'p':
      if (n_pol == MAX_POLICIES) {
        fprintf(stderr, "strata: sim: at most %d policies\n", MAX_POLICIES);
        return 2;
      }
      policies[n_pol++] = optarg;
      break;
    case 'V':
      if (strata_cli_parse_long("sim", "--vocab", optarg, 4, 1 << 24, &v)) return 2;
      sim.n_vocab = (int32_t)v;
      break;
    case 'C':
      if (strata_cli_parse_long("sim", "--context", optarg, 2, 1 << 24, &v)) return 2;
      sim.ctx_len = (int32_t)v;
      break;
    case 'b':
      if (strata_cli_parse_long("sim", "--block-size", optarg, 1, 1024, &v)) return 2;
      ec.block_size = (int32_t)v;
      break;
    case 'k':
      if (strata_cli_parse_long("sim", "--kv-tokens", optarg, 1, 1 << 30, &v)) return 2;
      ec.kv_tokens = v;
      break;
    case 'R':
      if (strata_cli_parse_long("sim", "--max-running", optarg, 1, 65536, &v)) return 2;
      ec.max_running = (int32_t)v;
      break;
    case 'B':
      if (strata_cli_parse_long("sim", "--max-batch-tokens", optarg, 1, 1 << 20, &v)) return 2;
      ec.max_batch_tokens = (int32_t)v;
      break;
    case 'S':
      if (dbl_arg("--step-ms", optarg, &ms)) return 2;
      sim.step_s = ms / 1e3;
      set_cost[0] = 1;
      break;
    case 'P':
      if (dbl_arg("--prefill-ms", optarg, &ms)) return 2;
      sim.prefill_s_per_token = ms / 1e3;
      set_cost[1] = 1;
      break;
    case 'D':
      if (dbl_arg("--decode-ms", optarg, &ms)) return 2;
      sim.decode_s_per_seq = ms / 1e3;
      set_cost[2] = 1;
      break;
    case 'A':
      if (dbl_arg("--attn-ms", optarg, &ms)) return 2;
      sim.attn_s_per_pos = ms / 1e6; /* ms per token per 1,000 positions */
      set_cost[3] = 1;
      break;
    case 'j': json = 1; break;
    case 'E': expand = optarg; break;
    case 'K': calibrate = optarg; break;
    case 'h': sim_usage(stdout); return 0;
    default: sim_usage(stderr); return 2;
    }
  }
  if (calibrate) {
    /* the cost model fitted to the steps a real engine logged; flags given
     * explicitly still win */
    struct strata_sim_fit fit;
    char ferr[512];
    if (strata_sim_calibrate_load(calibrate, &fit, ferr, sizeof ferr) != 0) {
      fprintf(stderr, "strata: sim: --calibrate: %s\n", ferr);
      return 2;
    }
    FILE *o = trace ? stderr : stdout;
    fprintf(o,
            "calibrated from %s: %zu steps, %.1f s measured, %.1f s by the model, R^2 %.3f\n"
            "  --step-ms %.2f --prefill-ms %.3f --decode-ms %.3f --attn-ms %.3f\n",
            calibrate, fit.n_steps, fit.measured_s, fit.predicted_s, fit.r2, fit.step_s * 1e3,
            fit.prefill_s_per_token * 1e3, fit.decode_s_per_seq * 1e3, fit.attn_s_per_pos * 1e6);
    if (!set_cost[0]) sim.step_s = fit.step_s;
    if (!set_cost[1]) sim.prefill_s_per_token = fit.prefill_s_per_token;
    if (!set_cost[2]) sim.decode_s_per_seq = fit.decode_s_per_seq;
    if (!set_cost[3]) sim.attn_s_per_pos = fit.attn_s_per_pos;
    if (!trace && optind == argc) return 0;
  }
  if (optind < argc || !trace) {
    if (optind < argc)
      fprintf(stderr, "strata: sim: unexpected argument '%s'\n", argv[optind]);
    else
      fprintf(stderr, "strata: sim: --trace FILE is required\n");
    return 2;
  }
  struct strata_errlist errs = {0};
  strata_config_t *cfg = config ? strata_config_load(config, &errs) : NULL;
  char **extra = NULL;
  size_t n_extra = 0;
  if (cfg) extra = strata_config_plugin_dirs(cfg, &n_extra);
  size_t n_dirs;
  char **dirs = strata_plugin_default_dirs((const char *const *)extra, n_extra, &n_dirs);
  struct strata_registry reg;
  memset(&reg, 0, sizeof reg);
  strata_registry_scan(&reg, (const char *const *)dirs, n_dirs);
  strata_free_strv(dirs, n_dirs);
  strata_free_strv(extra, n_extra);
  strata_host_set_registry(&reg);
  int rc = 2;
  struct strata_sim_trace tr = {0};
  if (config && (!cfg || strata_config_validate(cfg, &reg, &errs) != 0)) {
    for (size_t i = 0; i < errs.n; i++) fprintf(stderr, "%s\n", errs.lines[i]);
    goto done;
  }
  char err[512];
  if (strata_sim_trace_load(trace, sim.n_vocab, sim.ctx_len - 1, &tr, err, sizeof err) != 0) {
    fprintf(stderr, "strata: sim: %s\n", err);
    goto done;
  }
  if (expand) {
    /* the trace with its prompts as token ids, for replay against a real
     * server (tests/bench/loadgen.mjs --trace) */
    FILE *f = strcmp(expand, "-") ? fopen(expand, "w") : stdout;
    if (!f) {
      fprintf(stderr, "strata: sim: %s: cannot write\n", expand);
      rc = 1;
      goto done;
    }
    for (size_t i = 0; i < tr.n; i++) {
      const struct strata_sim_req *q = &tr.reqs[i];
      fprintf(f, "{\"t\":%.6f,\"output\":%d,\"priority\":%d", q->t, q->output, q->priority);
      if (q->group_id) {
        fputs(",\"group_id\":", f);
        json_t *js = json_string(q->group_id);
        if (js) json_dumpf(js, f, JSON_ENCODE_ANY);
        json_decref(js);
      }
      fputs(",\"prompt\":[", f);
      for (int32_t k = 0; k < q->n_prompt; k++) fprintf(f, "%s%d", k ? "," : "", q->prompt[k]);
      fputs("]}\n", f);
    }
    if (f != stdout) fclose(f);
    rc = 0;
    goto done;
  }
  if (n_pol == 0)
    for (size_t i = 0; i < reg.n_plugins && n_pol < MAX_POLICIES; i++)
      if (reg.plugins[i].desc->kind == STRATA_PLUGIN_SCHEDULER)
        policies[n_pol++] = reg.plugins[i].desc->name;
  if (!json) {
    printf("trace %s: %zu requests; KV cache %lld tokens in blocks of %d, %d running, %d tokens "
           "per step; cost %.1f ms/step + %.2f ms/prefill token + %.2f ms/decoding sequence "
           "+ %.2f ms/token per 1,000 context positions\n",
           trace, tr.n, (long long)ec.kv_tokens, ec.block_size, ec.max_running,
           ec.max_batch_tokens, sim.step_s * 1e3, sim.prefill_s_per_token * 1e3,
           sim.decode_s_per_seq * 1e3, sim.attn_s_per_pos * 1e6);
    printf("%-16s %6s %9s %9s %9s %9s %9s %9s %8s %7s %7s %8s %7s\n", "policy", "done",
           "TTFT mean", "p50", "p99", "ITL mean", "E2E p50", "p99", "tok/s", "hit%", "group%",
           "preempt", "steps");
  }
  rc = 0;
  /* a step log per policy when there are several: FILE.POLICY */
  const char *sl = getenv("STRATA_STEP_LOG");
  char *step_log = sl && *sl && n_pol > 1 ? strata_strdup(sl) : NULL;
  for (int k = 0; k < n_pol; k++) {
    struct strata_engine_config pc = ec;
    pc.scheduler = policies[k];
    pc.n_logits = 0;
    struct sim_result r = {0};
    if (step_log) {
      char path[4096];
      snprintf(path, sizeof path, "%s.%s", step_log, policies[k]);
      setenv("STRATA_STEP_LOG", path, 1);
    }
    int prc = run_policy(&reg, cfg, &pc, &sim, &tr, &r);
    if (step_log) setenv("STRATA_STEP_LOG", step_log, 1);
    if (prc != 0) {
      rc = 1;
      continue;
    }
    if (json)
      printf("{\"policy\":\"%s\",\"requests\":%zu,\"done\":%zu,\"rejected\":%zu,"
             "\"ttft_p50\":%.6f,\"ttft_p90\":%.6f,\"ttft_p99\":%.6f,\"ttft_mean\":%.6f,"
             "\"itl_mean\":%.6f,\"itl_p99\":%.6f,\"e2e_p50\":%.6f,\"e2e_p90\":%.6f,"
             "\"e2e_p99\":%.6f,\"throughput\":%.3f,\"hit_rate\":%.6f,\"group_hit_rate\":%.6f,"
             "\"preemptions\":%llu,\"steps\":%llu,\"makespan\":%.6f}\n",
             r.policy, r.n, r.done, r.rejected, r.ttft[0], r.ttft[1], r.ttft[2], r.ttft_mean,
             r.itl[0], r.itl[1], r.e2e[0], r.e2e[1], r.e2e[2], r.throughput, r.hit_rate,
             r.group_hit_rate, (unsigned long long)r.preemptions, (unsigned long long)r.steps,
             r.makespan);
    else
      printf("%-16s %6zu %8.3fs %8.3fs %8.3fs %7.1fms %8.2fs %8.2fs %8.1f %6.1f%% %6.1f%% %8llu "
             "%7llu\n",
             r.policy, r.done, r.ttft_mean, r.ttft[0], r.ttft[2], r.itl[0] * 1e3, r.e2e[0],
             r.e2e[2], r.throughput, 100 * r.hit_rate, 100 * r.group_hit_rate,
             (unsigned long long)r.preemptions, (unsigned long long)r.steps);
  }
  free(step_log);
done:
  strata_sim_trace_free(&tr);
  strata_errlist_free(&errs);
  strata_registry_free(&reg);
  strata_config_free(cfg);
  return rc;
}
