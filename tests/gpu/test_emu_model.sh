#!/usr/bin/env bash
# test_cuda_model.sh on the emu backend: the cuda plugin's source with its
# kernels emulated on the CPU (tests/gpu/emu/), so the whole model, the
# split q8_0/q4_0 layout and the server run through that code everywhere.
# The test-only plugin lives outside plugins/, found through
# STRATA_PLUGIN_PATH.
b=${STRATA_BUILDDIR:-$(pwd)}
STRATA_PLUGIN_PATH="$b/tests/gpu/emu${STRATA_PLUGIN_PATH:+:$STRATA_PLUGIN_PATH}" \
  STRATA_GPU_BACKEND=emu exec bash "$(dirname "$0")/test_cuda_model.sh"
