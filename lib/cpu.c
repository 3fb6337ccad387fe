/* cpu — OpenBLAS core-type selection by re-execution; see cpu.h. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool lora_cpu_has_avx512(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
	return false;
#endif
}

const char *lora_cpu_wanted_coretype(void)
{
	const char *forced = getenv("LORA_BLAS_CORETYPE");
	if (forced && *forced)
		return forced;
	if (getenv("LORA_NO_REEXEC"))
		return NULL;
	const char *cur = getenv("OPENBLAS_CORETYPE");
	if ((!cur || !*cur || !strcasecmp(cur, "Haswell")) && lora_cpu_has_avx512())
		return "SkylakeX";
	return NULL;
}

void lora_cpu_fast_blas_reexec(char **argv)
{
	const char *want = lora_cpu_wanted_coretype();
	const char *cur = getenv("OPENBLAS_CORETYPE");
	if (!want || (cur && !strcmp(cur, want)) || getenv("LORA_BLAS_REEXEC"))
		return;
	char *saved = cur ? strdup(cur) : NULL;
	setenv("OPENBLAS_CORETYPE", want, 1);
	setenv("LORA_BLAS_REEXEC", "1", 1);
	execv("/proc/self/exe", argv);
	/* exec failed: restore and run with whatever OpenBLAS picked */
	if (saved)
		setenv("OPENBLAS_CORETYPE", saved, 1);
	else
		unsetenv("OPENBLAS_CORETYPE");
	unsetenv("LORA_BLAS_REEXEC");
	free(saved);
}
