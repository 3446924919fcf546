/*
 * fastbp_omp.h -- the one place that knows whether the kernels were built with OpenMP.
 *
 * Built with OpenMP, this forwards to <omp.h>.  Built without (a compiler with no OpenMP
 * support; setup.py warns), it supplies serial stubs so every kernel still compiles and runs on
 * one thread, and FASTBP_OPENMP tells the Python layer (fastbp.openmp_enabled()).
 */
#ifndef FASTBP_OMP_H
#define FASTBP_OMP_H

#ifdef _OPENMP
#include <omp.h>
#define FASTBP_OPENMP 1
#else
#define FASTBP_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_procs(void) { return 1; }
#endif

#endif /* FASTBP_OMP_H */
