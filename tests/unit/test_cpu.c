/* test_cpu — which OpenBLAS core type the tools ask for, under each environment. */
#include "check.h"
#include "cpu.h"

#include <cblas.h>

int main(void)
{
	unsetenv("LORA_BLAS_CORETYPE");
	unsetenv("LORA_NO_REEXEC");
	unsetenv("OPENBLAS_CORETYPE");
	const char *want = lora_cpu_wanted_coretype();
	if (lora_cpu_has_avx512()) {
		check(want && !strcmp(want, "SkylakeX"), "AVX-512 CPU, variable unset: SkylakeX");
		setenv("OPENBLAS_CORETYPE", "Haswell", 1);
		want = lora_cpu_wanted_coretype();
		check(want && !strcmp(want, "SkylakeX"),
		      "AVX-512 CPU, OPENBLAS_CORETYPE=Haswell (the misdetection): upgraded");
		setenv("OPENBLAS_CORETYPE", "Sandybridge", 1);
		check(lora_cpu_wanted_coretype() == NULL, "another explicit core type is respected");
	} else {
		check(want == NULL, "no AVX-512: leave OpenBLAS alone");
	}
	setenv("LORA_NO_REEXEC", "1", 1);
	unsetenv("OPENBLAS_CORETYPE");
	check(lora_cpu_wanted_coretype() == NULL, "LORA_NO_REEXEC disables it");
	setenv("LORA_BLAS_CORETYPE", "Prescott", 1);
	want = lora_cpu_wanted_coretype();
	check(want && !strcmp(want, "Prescott"), "LORA_BLAS_CORETYPE forces a core type");
	printf("# OpenBLAS picked core '%s' in this process\n", openblas_get_corename());
	return check_done();
}
