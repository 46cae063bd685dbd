/* A shared object without strata_plugin_entry. */
#include "config.h"

int not_a_strata_plugin(void);
int not_a_strata_plugin(void) { return 42; }
