#include "moe/parallel.h"

#include <omp.h>

#include <algorithm>

extern "C" void openblas_set_num_threads(int);

namespace moe {

void set_num_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int available_cores() {
  return std::max(1, omp_get_num_procs());
}

int num_threads() {
  return omp_get_max_threads();
}

}  // namespace moe
