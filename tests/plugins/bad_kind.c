/* An unknown plugin kind. */
#include "config.h"

#include <strata/plugin.h>

static const struct strata_plugin_desc desc = {
    .size = sizeof(struct strata_plugin_desc),
    .abi_version = STRATA_ABI_VERSION,
    .fingerprint = STRATA_BUILD_FINGERPRINT,
    .kind = (enum strata_plugin_kind)99,
    .name = "test-bad-kind",
};

STRATA_PLUGIN_DEFINE(desc)
