/* A well-formed quant plugin for the loader tests: a scaled identity format
 * whose scale comes from its config subtree, so tests can see init() ran. */
#include "config.h"

#include <string.h>

#include <strata/plugin.h>
#include <strata/quant.h>

static double factor = 1.0;

static void deq(const void *src, float *dst, int64_t n) {
  const float *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)(s[i] * factor);
}

static void quant(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static int init(const struct strata_host_api *host, const strata_config_node_t *cfg,
                char *err, size_t errlen) {
  factor = host->config_float(cfg, "factor");
  if (factor == 7.0) { /* lets a test see init() failures reported */
    strncpy(err, "factor 7 is unlucky", errlen - 1);
    return -1;
  }
  return 0;
}

static const struct strata_param params[] = {
    {"factor", STRATA_PARAM_FLOAT, 0, "1.0", 0, 10, "scale applied on dequantize"},
    {"label", STRATA_PARAM_STRING, 1, NULL, 1, 0, "a required key"},
    {"cache", STRATA_PARAM_SIZE, 0, "1MiB", 0, 1e12, "a size"},
    {"on", STRATA_PARAM_BOOL, 0, "true", 1, 0, "a boolean"},
    {"count", STRATA_PARAM_INT, 0, "3", 1, 100, "an integer"},
    {NULL, STRATA_PARAM_END, 0, NULL, 0, 0, NULL},
};

static const struct strata_quant_vtable vt = {
    .size = sizeof(struct strata_quant_vtable),
    .type = 9001,
    .block_size = 1,
    .type_size = 4,
    .dequantize_row = deq,
    .quantize_row = quant,
};

static const struct strata_plugin_desc desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_QUANT,
    .name = "test-good",
    .version = "1.0",
    .license = "MIT",
    .description = "loader test plugin",
    .params = params,
    .init = init,
    .vt.quant = &vt,
};

STRATA_PLUGIN_DEFINE(desc)
