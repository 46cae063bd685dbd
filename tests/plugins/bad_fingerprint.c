/* Right ABI, wrong build fingerprint: must be rejected naming both. */
#include "config.h"

#include <strata/plugin.h>

static const struct strata_plugin_desc desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = "abi1-ptr4-be-weird",
    .kind = STRATA_PLUGIN_QUANT,
    .name = "test-bad-fp",
};

STRATA_PLUGIN_DEFINE(desc)
