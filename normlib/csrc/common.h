// What every normlib kernel file shares (normlib/csrc/*.cpp include it): the one check of an input tensor.
// Copied with the sources into the build folder and part of the build key (normlib/kernels.py: FILES).
#pragma once

#include <torch/extension.h>

namespace normlib {

// t must be a float32 or float64 CPU tensor; the message names the argument and what is allowed.
inline void check_input(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "normlib kernels: ", name, " must be a CPU tensor (got ", t.device(), ")");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "normlib kernels: ", name, " must be float32 or float64 (got ", t.scalar_type(), ")");
}

}  // namespace normlib
