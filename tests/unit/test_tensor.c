/* test_tensor — f16/bf16 conversions against exhaustive and hand-worked cases. */
#include "check.h"
#include "tensor.h"

#include <stdint.h>

static float bits(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

int main(void)
{
	/* f16 -> f32 -> f16 is the identity on every non-NaN value (exhaustive). */
	int bad = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		float f = lora_f16_to_f32((uint16_t)h);
		if (isnan(f))
			continue;
		if (lora_f32_to_f16(f) != h)
			bad++;
	}
	check(bad == 0, "f16 round trip on all 63488 non-NaN values (%d wrong)", bad);
	bad = 0;
	for (uint32_t b = 0; b < 65536; b++) {
		float f = lora_bf16_to_f32((uint16_t)b);
		if (isnan(f))
			continue;
		if (lora_f32_to_bf16(f) != b)
			bad++;
	}
	check(bad == 0, "bf16 round trip on all non-NaN values (%d wrong)", bad);

	/* Known values (IEEE 754 binary16 tables). */
	check(lora_f32_to_f16(1.0f) == 0x3c00, "f16(1.0) = 0x3c00");
	check(lora_f32_to_f16(-2.0f) == 0xc000, "f16(-2.0) = 0xc000");
	check(lora_f32_to_f16(65504.0f) == 0x7bff, "f16(65504) = max normal");
	check(lora_f32_to_f16(65520.0f) == 0x7c00, "f16(65520) rounds to +Inf");
	check(lora_f32_to_f16(65519.0f) == 0x7bff, "f16(65519) rounds to max");
	check(lora_f32_to_f16(bits(0x7f800000u)) == 0x7c00, "f16(+Inf) = +Inf");
	check(lora_f32_to_f16(5.960464477539063e-08f) == 0x0001, "f16(2^-24) = smallest subnormal");
	check(lora_f32_to_f16(2.98023223876953125e-08f) == 0x0000, "f16(2^-25) ties to even: 0");
	check(lora_f32_to_f16(8.940696716308594e-08f) == 0x0002, "f16(1.5*2^-24) ties to even: 2");
	check(isnan(lora_f16_to_f32(lora_f32_to_f16(NAN))), "f16 keeps NaN");
	check(isnan(lora_bf16_to_f32(lora_f32_to_bf16(NAN))), "bf16 keeps NaN");
	check(lora_f32_to_bf16(bits(0x3f808000u)) == 0x3f80, "bf16 tie rounds to even (down)");
	check(lora_f32_to_bf16(bits(0x3f818000u)) == 0x3f82, "bf16 tie rounds to even (up)");
	check(lora_f32_to_bf16(bits(0x3f808001u)) == 0x3f81, "bf16 above half rounds up");
	check(lora_f32_to_bf16(bits(0x7f7fffffu)) == 0x7f80, "bf16(FLT_MAX) rounds to Inf");
	/* f16 rounding of a normal tie: 1 + 2^-11 is halfway between 1 and 1+2^-10 */
	check(lora_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "f16 normal tie to even (down)");
	check(lora_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "f16 normal tie to even (up)");

	struct lora_tensor t;
	struct lora_err err = { 0 };
	check(lora_tensor_alloc2(&t, LORA_F32, 3, 4, &err) == 0 && t.nbytes == 48, "alloc2 [3,4] f32");
	((float *)t.data)[5] = 1.5f;
	check(lora_tensor_convert(&t, LORA_BF16, &err) == 0 && t.nbytes == 24 &&
	      lora_bf16_to_f32(((uint16_t *)t.data)[5]) == 1.5f, "convert f32 -> bf16 keeps 1.5");
	lora_tensor_free(&t);
	check(lora_tensor_alloc2(&t, LORA_F32, INT64_MAX / 2, 4, &err) == LORA_ENOMEM,
	      "alloc2 refuses an overflowing shape: %s", err.msg);
	char buf[64];
	int64_t shape[2] = { 4096, 11008 };
	check(!strcmp(lora_shape_str(shape, 2, buf, sizeof buf), "[4096,11008]"), "shape_str");
	return check_done();
}
