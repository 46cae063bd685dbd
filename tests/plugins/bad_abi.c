/* Claims ABI version 7: must be rejected naming both numbers. */
#include "config.h"

#include <strata/plugin.h>
#include <strata/quant.h>

static const struct strata_plugin_desc desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = 7,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = STRATA_PLUGIN_QUANT,
    .name = "test-bad-abi",
};

STRATA_PLUGIN_DEFINE(desc)
