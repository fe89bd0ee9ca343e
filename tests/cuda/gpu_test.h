// The guard of tests/cuda's GPU tests, shared by their real (-DMOE_CUDA=ON) and emulated
// (tests/cuda_emu) builds: skip without a device, except under MOE_REQUIRE_GPU=1
// (scripts/gpu_run.sh), where a missing device is a failure rather than a silent pass.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>

#include "moe/cuda_moe_layer.h"

#define SKIP_WITHOUT_GPU()                                                                     \
  if (!::moe::cuda_available()) {                                                              \
    if (std::getenv("MOE_REQUIRE_GPU")) FAIL() << "MOE_REQUIRE_GPU is set but no CUDA device"; \
    GTEST_SKIP() << "no CUDA device: this GPU test was not run";                               \
  }
