/* References a symbol nothing defines: dlopen(RTLD_NOW) must fail and the
 * loader must pass dlerror()'s text on. */
#include "config.h"

#include <strata/plugin.h>

extern int strata_symbol_that_does_not_exist(void);

static struct strata_plugin_desc desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_QUANT,
    .name = "test-unresolved",
};

STRATA_EXPORT const struct strata_plugin_desc *strata_plugin_entry(void);
STRATA_EXPORT const struct strata_plugin_desc *strata_plugin_entry(void) {
  desc.size += (uint32_t)strata_symbol_that_does_not_exist();
  return &desc;
}
