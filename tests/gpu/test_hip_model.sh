#!/usr/bin/env bash
# test_cuda_model.sh on the hip backend (exit 77 without an AMD GPU).
STRATA_GPU_BACKEND=hip exec bash "$(dirname "$0")/test_cuda_model.sh"
