/*
 * cpu — getting OpenBLAS's fast kernels on CPUs it does not recognise.
 *
 * Debian's OpenBLAS 0.3.21 picks its Haswell (AVX2) kernels on AVX-512 CPUs it
 * does not know; OPENBLAS_CORETYPE=SkylakeX roughly doubles sgemm there. It is
 * read only when the library loads, so the only way to change it from inside a
 * program is to execute the program again with the variable set.
 */
#ifndef LORA_CPU_H
#define LORA_CPU_H

#include <stdbool.h>

/* True when the CPU has the AVX-512 subsets OpenBLAS's SkylakeX kernels use. */
bool lora_cpu_has_avx512(void);

/* The core type lorapipe wants OpenBLAS to use, or NULL to leave it alone:
 *   LORA_BLAS_CORETYPE set        -> that value (the user's explicit choice)
 *   LORA_NO_REEXEC set            -> NULL
 *   AVX-512 CPU and OPENBLAS_CORETYPE unset or "Haswell" (what OpenBLAS
 *   would pick anyway on such a CPU) -> "SkylakeX"
 *   otherwise                      -> NULL */
const char *lora_cpu_wanted_coretype(void);

/* If lora_cpu_wanted_coretype() differs from OPENBLAS_CORETYPE, set it and
 * execv("/proc/self/exe", argv). Returns only when no re-execution is needed
 * or exec failed (the program then runs with the default kernels). Guarded
 * against loops by LORA_BLAS_REEXEC. */
void lora_cpu_fast_blas_reexec(char **argv);

#endif
