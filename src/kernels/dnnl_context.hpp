// The one oneDNN CPU engine and stream the process uses. oneDNN runs on OpenMP, so --threads
// (omp_set_num_threads) governs it as it governs our own kernels.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

namespace trainer {

dnnl::engine& cpu_engine();
dnnl::stream& cpu_stream();

}  // namespace trainer
