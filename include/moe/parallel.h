// Threading: OpenMP for our own loops; OpenBLAS (its OpenMP build) runs single-threaded
// when called inside one of our parallel regions and uses all threads otherwise.
#pragma once

namespace moe {

// Sets the thread count for OpenMP and OpenBLAS together. n <= 0 leaves the default
// (OMP_NUM_THREADS, else all cores).
void set_num_threads(int n);
int num_threads();
// The cores this process may run on (its CPU affinity), at least 1.
int available_cores();

}  // namespace moe
