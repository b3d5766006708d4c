// int4 and int8 weights times float32 activations with 8-bit integer dot products, as llama.cpp
// computes its blocks: torch.ops.lmpipe.int4_mm and int8_mm (lmpipe.models.kernels.vnni) with
// AVX-512 VNNI (vpdpbusd), and int4_mm_avx2 and int8_mm_avx2 with AVX2 (vpmaddubsw, then vpmaddwd
// to 32 bits, llama.cpp's AVX2 dot product) on the same packed layouts; int4_mm_amx and
// int8_mm_amx are int4_mm and int8_mm with AMX's tiles for blocks of 16 activation rows (see
// "AMX-INT8" below), their results to the bit. Each function is compiled for its instruction set
// (target attributes) and each op checks the CPU, so one build serves any x86-64.
//
// Activations are split into two int8 parts (the values in steps of max/127, then what that
// leaves in steps 254 times finer), per group of 32 for int4 and per row for int8 (whose weight
// has one scale per row), so the sums are exact integers and a product is within ~1e-5 (int4)
// or ~1e-4 (int8) of the dequantized float32 weight's: lmpipe.models.quantize.split_int8_product's
// arithmetic, with the weight read once instead of once per part. With `parts` 1 (--activations
// int8) each group of 32 takes the first part only, in every layout: llama.cpp's arithmetic
// (its Q8 blocks), half the integer work, ~5e-3 of a product.
//
// q4k_mm and q4k_mm_avx2 multiply a GGUF's Q4_K tensors on a layout of their own (Q4K_BLOCK below),
// with the file's float16 d and dmin and 6-bit scales and minimums as they are; q4_0_mm and
// q4_0_mm_avx2 its Q4_0 tensors (Q4_0_BLOCK), with the file's float16 d.
//
// int4's packed layout, built by lmpipe from its portable int4 values at load time: for each block of
// 16 output rows and each group of 32 columns, 320 bytes: 4 x 64 bytes of values (byte 4r + c
// of part p holds row r's column 8p + c in its low nibble and column 8p + 4 + c in its high
// one), then the 16 rows' bfloat16 scales, then their bfloat16 zeros. A weight is
// (q - 8) * scale + zero, as lmpipe.models.quantize.QuantizedWeight defines it.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t GROUP = 32;
constexpr int64_t ROWS = 16;
constexpr int64_t BLOCK = 320;
// Q4_K's layout (q4k_mm): for each block of 16 output rows and each super-block of 256 columns,
// its 8 groups' 4 x 64 bytes of values as int4's (256 bytes each), then the 16 rows' float16 d
// and their float16 dmin (32 bytes each), then for each group the 16 rows' 6-bit scales and
// their 6-bit minimums (a byte each, 32 bytes a group): 2368 bytes, 4.625 bits a weight. A
// weight is (d·sc)·q − dmin·m, the GGUF file's own form and values.
constexpr int64_t SUPER_GROUPS = 8;
// Q4_0's layout (q4_0_mm): int4's with only the 16 rows' float16 d after each group's nibbles
// (288 bytes, 4.5 bits a weight, the file's own); a weight is d·(q − 8), the file's form and value.
constexpr int64_t Q4_0_BLOCK = 256 + 32;
constexpr int64_t Q4K_BLOCK = SUPER_GROUPS * 256 + 64 + SUPER_GROUPS * 32;

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

bool avx2_supported() {  // F16C: Q4_K's float16 d (every AVX2 CPU has it)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

// One row of activations, per group: high and low int8 parts, the step, the float sum.
// Rounding is to nearest even, as torch.round.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void split_row(
    const float* x, int64_t k, int8_t* high, int8_t* low, float* step, float* sum) {
  constexpr int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int64_t g = 0; g < k / GROUP; ++g) {
    const __m512 a = _mm512_loadu_ps(x + g * GROUP), b = _mm512_loadu_ps(x + g * GROUP + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const float s = amax / 127.f;
    const __m512 inverse = _mm512_set1_ps(s > 0.f ? 1.f / s : 0.f);
    const __m512 ua = _mm512_mul_ps(a, inverse), ub = _mm512_mul_ps(b, inverse);
    const __m512 ha = _mm512_roundscale_ps(ua, nearest), hb = _mm512_roundscale_ps(ub, nearest);
    const __m512 fine = _mm512_set1_ps(254.f);
    const __m512 la = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(ua, ha), fine), nearest);
    const __m512 lb = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(ub, hb), fine), nearest);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(high + g * GROUP), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(ha)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(high + g * GROUP + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(hb)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(low + g * GROUP), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(la)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(low + g * GROUP + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(lb)));
    step[g] = s;
    sum[g] = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
  }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline __m512 bfloat16s(const uint8_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

struct Split {  // the activations of all rows, split (split_row), row-major
  std::vector<int8_t> high, low;
  std::vector<float> step, sum;
  // For AMX, each whole block of 16 rows again, per group, as its two tiles read them: the 16
  // rows' 32 high values, then their low ones (1024 bytes); read in place, a tile's rows would
  // be half a cache line each, in 16 lines.
  std::vector<int8_t> tiles;
};

// Row r's groups into their places in a.tiles.
void tile_row(Split& a, int64_t r, int64_t k) {
  const int64_t groups = k / GROUP;
  for (int64_t g = 0; g < groups; ++g) {
    int8_t* tile = a.tiles.data() + (r / 16 * groups + g) * 2 * 16 * GROUP + r % 16 * GROUP;
    std::memcpy(tile, a.high.data() + r * k + g * GROUP, GROUP);
    std::memcpy(tile + 16 * GROUP, a.low.data() + r * k + g * GROUP, GROUP);
  }
}

// For one group of 32 columns of a block of 16 weight rows (its 4 x 64 bytes of nibbles at wg)
// and activation rows [r0, r0 + MR): each row's 16 sums of x·q, from the exact integer sums of
// both activation parts. Each 64 bytes are unpacked once and used by every row; separate
// accumulators for the low and high nibbles keep the dot products' dependency chains short.
template <int MR, int PARTS>
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) inline void group_products(
    const uint8_t* wg, const Split& a, int64_t r0, int64_t k, int64_t g, __m512 (&xq)[MR]) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512i ih[MR][2], il[MR][2];
  for (int i = 0; i < MR; ++i) ih[i][0] = ih[i][1] = il[i][0] = il[i][1] = _mm512_setzero_si512();
  for (int p = 0; p < 4; ++p) {
    const __m512i v = _mm512_loadu_si512(wg + p * 64);
    const __m512i lo = _mm512_and_si512(v, nibble);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
    for (int i = 0; i < MR; ++i) {
      const int8_t* h = a.high.data() + (r0 + i) * k + g * GROUP + p * 8;
      const int8_t* l = a.low.data() + (r0 + i) * k + g * GROUP + p * 8;
      int32_t h0, h1, l0, l1;
      std::memcpy(&h0, h, 4), std::memcpy(&h1, h + 4, 4), std::memcpy(&l0, l, 4), std::memcpy(&l1, l + 4, 4);
      ih[i][0] = _mm512_dpbusd_epi32(ih[i][0], lo, _mm512_set1_epi32(h0));
      ih[i][1] = _mm512_dpbusd_epi32(ih[i][1], hi, _mm512_set1_epi32(h1));
      if constexpr (PARTS == 2) {
        il[i][0] = _mm512_dpbusd_epi32(il[i][0], lo, _mm512_set1_epi32(l0));
        il[i][1] = _mm512_dpbusd_epi32(il[i][1], hi, _mm512_set1_epi32(l1));
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    const __m512 high = _mm512_cvtepi32_ps(_mm512_add_epi32(ih[i][0], ih[i][1]));
    const __m512 step = _mm512_set1_ps(a.step[(r0 + i) * (k / GROUP) + g]);
    if constexpr (PARTS == 2) {
      const __m512 low = _mm512_cvtepi32_ps(_mm512_add_epi32(il[i][0], il[i][1]));
      xq[i] = _mm512_mul_ps(_mm512_fmadd_ps(low, _mm512_set1_ps(1.f / 254.f), high), step);
    } else {
      xq[i] = _mm512_mul_ps(high, step);
    }
  }
}

// Outputs of one block of 16 weight rows for activation rows [r0, r0 + MR). Q4_0: Q4_0's layout,
// the scale a float16 d and no zero.
template <int MR, int PARTS, bool Q4_0>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void block_rows(
    const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
  const int64_t groups = k / GROUP;
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g, w += Q4_0 ? Q4_0_BLOCK : BLOCK) {
    __m512 xq[MR];
    group_products<MR, PARTS>(w, a, r0, k, g, xq);
    const __m512 scale = Q4_0 ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 256)))
                              : bfloat16s(w + 256);
    for (int i = 0; i < MR; ++i) {
      const __m512 xs = _mm512_set1_ps(a.sum[(r0 + i) * groups + g]);
      // sum of x * ((q - 8) * scale + zero) = scale * (xq - 8 * xs) + zero * xs
      acc[i] = _mm512_fmadd_ps(scale, _mm512_fnmadd_ps(_mm512_set1_ps(8.f), xs, xq[i]), acc[i]);
      if constexpr (!Q4_0) acc[i] = _mm512_fmadd_ps(bfloat16s(w + 288), xs, acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(out + (r0 + i) * n, acc[i]);
}

// block_rows on Q4_K's layout: the same sums per group; the epilogue takes each group's scale
// d·sc and minimum dmin·m (float32 products, as the file's dequantizer makes them).
template <int MR, int PARTS>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void q4k_block_rows(
    const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
  const int64_t groups = k / GROUP;
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t s = 0; s < groups / SUPER_GROUPS; ++s, w += Q4K_BLOCK) {
    const uint8_t* meta = w + SUPER_GROUPS * 256;
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(meta)));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(meta + 32)));
    for (int64_t j = 0; j < SUPER_GROUPS; ++j) {
      const int64_t g = s * SUPER_GROUPS + j;
      __m512 xq[MR];
      group_products<MR, PARTS>(w + j * 256, a, r0, k, g, xq);
      const uint8_t* sm = meta + 64 + j * 32;
      const __m512 scale = _mm512_mul_ps(
          d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sm)))));
      const __m512 minimum = _mm512_mul_ps(
          dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sm + 16)))));
      for (int i = 0; i < MR; ++i) {
        // sum of x * ((d·sc)·q − dmin·m) = (d·sc) * xq − (dmin·m) * xs
        acc[i] = _mm512_fmadd_ps(scale, xq[i], acc[i]);
        acc[i] = _mm512_fnmadd_ps(minimum, _mm512_set1_ps(a.sum[(r0 + i) * groups + g]), acc[i]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(out + (r0 + i) * n, acc[i]);
}

// The AVX2 path's split: split_row's arithmetic, a value at a time.
__attribute__((target("avx2,fma"))) void split_row_avx2(
    const float* x, int64_t k, int8_t* high, int8_t* low, float* step, float* sum) {
  for (int64_t g = 0; g < k / GROUP; ++g) {
    const float* xg = x + g * GROUP;
    float amax = 0.f, total = 0.f;
    for (int i = 0; i < GROUP; ++i) amax = std::fmax(amax, std::fabs(xg[i]));
    const float s = amax / 127.f, inverse = s > 0.f ? 1.f / s : 0.f;
    for (int i = 0; i < GROUP; ++i) {
      const float u = xg[i] * inverse, h = std::nearbyint(u);
      high[g * GROUP + i] = static_cast<int8_t>(h);
      low[g * GROUP + i] = static_cast<int8_t>(std::nearbyint((u - h) * 254.f));
      total += xg[i];
    }
    step[g] = s;
    sum[g] = total;
  }
}

__attribute__((target("avx2,fma"))) inline __m256 bfloat16s_avx2(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// group_products with AVX2, for half a block (8 weight rows, `half` 0 or 1). vpmaddubsw multiplies
// the unsigned nibbles by the signed activations and adds pairs into 16 bits: at most 2 x 15 x
// 127 per pair, so a whole group's 8 products per lane (4 parts, both nibbles) stay under 32767
// and go to 32 bits (vpmaddwd) once per group.
template <int MR, int PARTS>
__attribute__((target("avx2,fma"), always_inline)) inline void group_products_avx2(
    const uint8_t* wg, int half, const Split& a, int64_t r0, int64_t k, int64_t g, __m256 (&xq)[MR]) {
  const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256i ih[MR], il[MR];
  for (int i = 0; i < MR; ++i) ih[i] = il[i] = _mm256_setzero_si256();
  for (int p = 0; p < 4; ++p) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + p * 64 + half * 32));
    const __m256i lo = _mm256_and_si256(v, nibble);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
    for (int i = 0; i < MR; ++i) {
      const int8_t* h = a.high.data() + (r0 + i) * k + g * GROUP + p * 8;
      const int8_t* l = a.low.data() + (r0 + i) * k + g * GROUP + p * 8;
      int32_t h0, h1, l0, l1;
      std::memcpy(&h0, h, 4), std::memcpy(&h1, h + 4, 4), std::memcpy(&l0, l, 4), std::memcpy(&l1, l + 4, 4);
      ih[i] = _mm256_add_epi16(ih[i], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(h0)),
                                                       _mm256_maddubs_epi16(hi, _mm256_set1_epi32(h1))));
      if constexpr (PARTS == 2)
        il[i] = _mm256_add_epi16(il[i], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(l0)),
                                                         _mm256_maddubs_epi16(hi, _mm256_set1_epi32(l1))));
    }
  }
  for (int i = 0; i < MR; ++i) {
    const __m256 high = _mm256_cvtepi32_ps(_mm256_madd_epi16(ih[i], ones));
    const __m256 step = _mm256_set1_ps(a.step[(r0 + i) * (k / GROUP) + g]);
    if constexpr (PARTS == 2) {
      const __m256 low = _mm256_cvtepi32_ps(_mm256_madd_epi16(il[i], ones));
      xq[i] = _mm256_mul_ps(_mm256_fmadd_ps(low, _mm256_set1_ps(1.f / 254.f), high), step);
    } else {
      xq[i] = _mm256_mul_ps(high, step);
    }
  }
}

// block_rows with AVX2: 8 weight rows (half a block) to a register, so each half of the block
// takes its own pass.
template <int MR, int PARTS, bool Q4_0>
__attribute__((target("avx2,fma,f16c"))) void block_rows_avx2(
    const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
  const int64_t groups = k / GROUP;
  for (int half = 0; half < 2; ++half) {
    __m256 acc[MR];
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
    const uint8_t* wg = w;
    for (int64_t g = 0; g < groups; ++g, wg += Q4_0 ? Q4_0_BLOCK : BLOCK) {
      __m256 xq[MR];
      group_products_avx2<MR, PARTS>(wg, half, a, r0, k, g, xq);
      const __m256 scale = Q4_0 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wg + 256 + half * 16)))
                                : bfloat16s_avx2(wg + 256 + half * 16);
      for (int i = 0; i < MR; ++i) {
        const __m256 xs = _mm256_set1_ps(a.sum[(r0 + i) * groups + g]);
        acc[i] = _mm256_fmadd_ps(scale, _mm256_fnmadd_ps(_mm256_set1_ps(8.f), xs, xq[i]), acc[i]);
        if constexpr (!Q4_0) acc[i] = _mm256_fmadd_ps(bfloat16s_avx2(wg + 288 + half * 16), xs, acc[i]);
      }
    }
    for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + (r0 + i) * n + half * 8, acc[i]);
  }
}

// q4k_block_rows with AVX2, a half block (8 weight rows) per pass, as block_rows_avx2 (F16C for d).
template <int MR, int PARTS>
__attribute__((target("avx2,fma,f16c"))) void q4k_block_rows_avx2(
    const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
  const int64_t groups = k / GROUP;
  for (int half = 0; half < 2; ++half) {
    __m256 acc[MR];
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
    const uint8_t* ws = w;
    for (int64_t s = 0; s < groups / SUPER_GROUPS; ++s, ws += Q4K_BLOCK) {
      const uint8_t* meta = ws + SUPER_GROUPS * 256;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(meta + half * 16)));
      const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(meta + 32 + half * 16)));
      for (int64_t j = 0; j < SUPER_GROUPS; ++j) {
        const int64_t g = s * SUPER_GROUPS + j;
        __m256 xq[MR];
        group_products_avx2<MR, PARTS>(ws + j * 256, half, a, r0, k, g, xq);
        const uint8_t* sm = meta + 64 + j * 32 + half * 8;
        const __m256 scale = _mm256_mul_ps(
            d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm)))));
        const __m256 minimum = _mm256_mul_ps(
            dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 16)))));
        for (int i = 0; i < MR; ++i) {
          acc[i] = _mm256_fmadd_ps(scale, xq[i], acc[i]);
          acc[i] = _mm256_fnmadd_ps(minimum, _mm256_set1_ps(a.sum[(r0 + i) * groups + g]), acc[i]);
        }
      }
    }
    for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + (r0 + i) * n + half * 8, acc[i]);
  }
}


// int8's packed layout: blocks of 16 output rows; in each, for every 4 columns, 64 bytes: row r's
// 4 values at 4r, each stored plus 128 (unsigned, as VNNI's first operand must be). The
// activations are the signed operand, broadcast 4 at a time; 128 times each activation part's
// sum comes off again. Scales are float32 per output row.
struct RowSplit {
  std::vector<int8_t> high, low;
  std::vector<float> step;
  std::vector<int32_t> high_sum, low_sum;
  // One part (--activations int8): `high` in steps per group of 32, as int4's, each group's step
  // and the sum of its values, per row (row-major).
  std::vector<float> group_step;
  std::vector<int32_t> group_sum;
};

// Compiled into each instruction set's function below (a function built for AVX-512 must
// never run on an AVX2 CPU, even for its scalar code).
__attribute__((always_inline)) inline void split_whole_row_body(
    const float* x, int64_t k, int8_t* high, int8_t* low, float* step, int32_t* high_sum, int32_t* low_sum) {
  float amax = 0.f;
  for (int64_t i = 0; i < k; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float s = amax / 127.f, inverse = s > 0.f ? 1.f / s : 0.f;
  int32_t hs = 0, ls = 0;
  for (int64_t i = 0; i < k; ++i) {
    const float u = x[i] * inverse, h = std::nearbyint(u);
    high[i] = static_cast<int8_t>(h);
    low[i] = static_cast<int8_t>(std::nearbyint((u - h) * 254.f));
    hs += high[i];
    ls += low[i];
  }
  *step = s;
  *high_sum = hs;
  *low_sum = ls;
}

// One part per group of 32 (the int8 kernels' --activations int8): split_row's values and steps.
__attribute__((always_inline)) inline void split_groups_body(const float* x, int64_t k, int8_t* high, float* step,
                                                            int32_t* sum) {
  for (int64_t g = 0; g < k / GROUP; ++g) {
    const float* xg = x + g * GROUP;
    float amax = 0.f;
    for (int i = 0; i < GROUP; ++i) amax = std::fmax(amax, std::fabs(xg[i]));
    const float s = amax / 127.f, inverse = s > 0.f ? 1.f / s : 0.f;
    int32_t total = 0;
    for (int i = 0; i < GROUP; ++i) total += high[g * GROUP + i] = static_cast<int8_t>(std::nearbyint(xg[i] * inverse));
    step[g] = s;
    sum[g] = total;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void split_groups(const float* x, int64_t k, int8_t* high,
                                                                           float* step, int32_t* sum) {
  split_groups_body(x, k, high, step, sum);
}

__attribute__((target("avx2,fma"))) void split_groups_avx2(const float* x, int64_t k, int8_t* high, float* step,
                                                            int32_t* sum) {
  split_groups_body(x, k, high, step, sum);
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void split_whole_row(
    const float* x, int64_t k, int8_t* high, int8_t* low, float* step, int32_t* high_sum, int32_t* low_sum) {
  split_whole_row_body(x, k, high, low, step, high_sum, low_sum);
}

__attribute__((target("avx2,fma"))) void split_whole_row_avx2(
    const float* x, int64_t k, int8_t* high, int8_t* low, float* step, int32_t* high_sum, int32_t* low_sum) {
  split_whole_row_body(x, k, high, low, step, high_sum, low_sum);
}

// 16 outputs (one block of weight rows) for activation rows [r0, r0 + MR). Two accumulators per
// part (even and odd groups of 4 columns) keep the dot products' dependency chains short.
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void int8_block(
    const uint8_t* w, const float* scales, const RowSplit& a, int64_t r0, int64_t k, int64_t n, float* out) {
  __m512i ih[MR][2], il[MR][2];
  for (int i = 0; i < MR; ++i) ih[i][0] = ih[i][1] = il[i][0] = il[i][1] = _mm512_setzero_si512();
  for (int64_t c = 0; c < k; c += 8, w += 128) {
    const __m512i v0 = _mm512_loadu_si512(w), v1 = _mm512_loadu_si512(w + 64);
    for (int i = 0; i < MR; ++i) {
      const int8_t* h = a.high.data() + (r0 + i) * k + c;
      const int8_t* l = a.low.data() + (r0 + i) * k + c;
      int32_t h0, h1, l0, l1;
      std::memcpy(&h0, h, 4), std::memcpy(&h1, h + 4, 4), std::memcpy(&l0, l, 4), std::memcpy(&l1, l + 4, 4);
      ih[i][0] = _mm512_dpbusd_epi32(ih[i][0], v0, _mm512_set1_epi32(h0));
      ih[i][1] = _mm512_dpbusd_epi32(ih[i][1], v1, _mm512_set1_epi32(h1));
      il[i][0] = _mm512_dpbusd_epi32(il[i][0], v0, _mm512_set1_epi32(l0));
      il[i][1] = _mm512_dpbusd_epi32(il[i][1], v1, _mm512_set1_epi32(l1));
    }
  }
  const __m512 scale = _mm512_loadu_ps(scales);
  for (int i = 0; i < MR; ++i) {
    const int64_t r = r0 + i;
    const __m512i high = _mm512_sub_epi32(_mm512_add_epi32(ih[i][0], ih[i][1]), _mm512_set1_epi32(128 * a.high_sum[r]));
    const __m512i low = _mm512_sub_epi32(_mm512_add_epi32(il[i][0], il[i][1]), _mm512_set1_epi32(128 * a.low_sum[r]));
    const __m512 sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(low), _mm512_set1_ps(1.f / 254.f), _mm512_cvtepi32_ps(high));
    _mm512_storeu_ps(out + r * n, _mm512_mul_ps(_mm512_mul_ps(sum, _mm512_set1_ps(a.step[r])), scale));
  }
}



// int8_block with one part per group of 32 activations: each group's integer sums turn into floats
// with its step, as int4's groups do.
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void int8_block_groups(
    const uint8_t* w, const float* scales, const RowSplit& a, int64_t r0, int64_t k, int64_t n, float* out) {
  const int64_t groups = k / GROUP;
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i ih[MR][2];
    for (int i = 0; i < MR; ++i) ih[i][0] = ih[i][1] = _mm512_setzero_si512();
    for (int64_t c = g * GROUP; c < (g + 1) * GROUP; c += 8, w += 128) {
      const __m512i v0 = _mm512_loadu_si512(w), v1 = _mm512_loadu_si512(w + 64);
      for (int i = 0; i < MR; ++i) {
        int32_t h0, h1;
        std::memcpy(&h0, a.high.data() + (r0 + i) * k + c, 4), std::memcpy(&h1, a.high.data() + (r0 + i) * k + c + 4, 4);
        ih[i][0] = _mm512_dpbusd_epi32(ih[i][0], v0, _mm512_set1_epi32(h0));
        ih[i][1] = _mm512_dpbusd_epi32(ih[i][1], v1, _mm512_set1_epi32(h1));
      }
    }
    for (int i = 0; i < MR; ++i) {
      const int64_t rg = (r0 + i) * groups + g;
      const __m512i sums = _mm512_sub_epi32(_mm512_add_epi32(ih[i][0], ih[i][1]), _mm512_set1_epi32(128 * a.group_sum[rg]));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(a.group_step[rg]), acc[i]);
    }
  }
  const __m512 scale = _mm512_loadu_ps(scales);
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(out + (r0 + i) * n, _mm512_mul_ps(acc[i], scale));
}

// int8_block_groups with AVX2, as int8_block_avx2.
template <int MR>
__attribute__((target("avx2,fma"))) void int8_block_groups_avx2(
    const uint8_t* w, const float* scales, const RowSplit& a, int64_t r0, int64_t k, int64_t n, float* out) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  const int64_t groups = k / GROUP;
  for (int half = 0; half < 2; ++half) {
    __m256 acc[MR];
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
    const uint8_t* wc = w + half * 32;
    for (int64_t g = 0; g < groups; ++g) {
      __m256i ih[MR];
      for (int i = 0; i < MR; ++i) ih[i] = _mm256_setzero_si256();
      for (int64_t c = g * GROUP; c < (g + 1) * GROUP; c += 4, wc += 64) {
        const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc)), flip);
        const __m256i magnitude = _mm256_abs_epi8(v);
        for (int i = 0; i < MR; ++i) {
          int32_t h0;
          std::memcpy(&h0, a.high.data() + (r0 + i) * k + c, 4);
          const __m256i h = _mm256_sign_epi8(_mm256_set1_epi32(h0), v);
          ih[i] = _mm256_add_epi32(ih[i], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, h), ones));
        }
      }
      for (int i = 0; i < MR; ++i)
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ih[i]), _mm256_set1_ps(a.group_step[(r0 + i) * groups + g]), acc[i]);
    }
    const __m256 scale = _mm256_loadu_ps(scales + half * 8);
    for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + (r0 + i) * n + half * 8, _mm256_mul_ps(acc[i], scale));
  }
}

// int8_block with AVX2, a half block (8 weight rows) per pass. vpmaddubsw needs an unsigned
// operand and saturates at 16 bits, so, as llama.cpp does, it multiplies each weight's magnitude
// by the activation carrying the weight's sign (vpsignb): at most 2 x 128 x 127 per pair; the
// stored values' +128 comes off first, so no activation sums are subtracted here.
template <int MR>
__attribute__((target("avx2,fma"))) void int8_block_avx2(
    const uint8_t* w, const float* scales, const RowSplit& a, int64_t r0, int64_t k, int64_t n, float* out) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  for (int half = 0; half < 2; ++half) {
    __m256i ih[MR], il[MR];
    for (int i = 0; i < MR; ++i) ih[i] = il[i] = _mm256_setzero_si256();
    const uint8_t* wc = w + half * 32;
    for (int64_t c = 0; c < k; c += 4, wc += 64) {
      const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc)), flip);
      const __m256i magnitude = _mm256_abs_epi8(v);
      for (int i = 0; i < MR; ++i) {
        int32_t h0, l0;
        std::memcpy(&h0, a.high.data() + (r0 + i) * k + c, 4), std::memcpy(&l0, a.low.data() + (r0 + i) * k + c, 4);
        const __m256i h = _mm256_sign_epi8(_mm256_set1_epi32(h0), v), l = _mm256_sign_epi8(_mm256_set1_epi32(l0), v);
        ih[i] = _mm256_add_epi32(ih[i], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, h), ones));
        il[i] = _mm256_add_epi32(il[i], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, l), ones));
      }
    }
    const __m256 scale = _mm256_loadu_ps(scales + half * 8);
    for (int i = 0; i < MR; ++i) {
      const int64_t r = r0 + i;
      const __m256 sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(il[i]), _mm256_set1_ps(1.f / 254.f), _mm256_cvtepi32_ps(ih[i]));
      _mm256_storeu_ps(out + r * n + half * 8, _mm256_mul_ps(_mm256_mul_ps(sum, _mm256_set1_ps(a.step[r])), scale));
    }
  }
}


// One query per row attending over a KV cache, the compiled decode step's attention: for each row
// and key/value head, its `groups` query heads' scores over the unmasked columns only, a softmax
// and the weighted sum of values. Two batched matmuls over the cache's whole width (rounded up
// to 256 columns) pay two dispatches per layer and read every column; this reads only those in use.

__attribute__((target("avx512f"))) inline float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f"))) inline void add_scaled(float alpha, const float* x, float* y, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}


__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  float total = _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

__attribute__((target("avx2,fma"))) inline void add_scaled_avx2(float alpha, const float* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// AMX-INT8: tiles of 16 rows of up to 64 bytes, one tdpbsud multiplying a tile of 16 activation
// rows (signed bytes, K of them to a row) by one of the weight (unsigned bytes, 4 K values of 16
// outputs to a row: VNNI's operand layout, which both packings above already are) into 16 x 16
// int32 sums. The integer sums are the VNNI kernels' exactly, and each epilogue below does
// block_rows' and int8_block's float operations in their order, so the results are theirs.
#if defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11
#define LMPIPE_AMX 1
#else
#define LMPIPE_AMX 0  // a compiler without AMX's intrinsics: the AMX ops say they cannot run
#endif

#if LMPIPE_AMX
#define AMX_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni")))

// Linux gives a process AMX's tile state (8 KB more to save per thread) only when asked, once
// for all its threads; a tile instruction before that is an illegal instruction.
bool amx_permitted() {
  constexpr long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
  static const bool permitted = syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
  return permitted;
}

bool amx_supported() {
  __builtin_cpu_init();
  return supported() && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") && amx_permitted();
}

struct TileConfig {  // ldtilecfg's 64 bytes, palette 1
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes[16] = {};  // per row
  uint8_t rows[16] = {};
  void tile(int t, int r, int b) { rows[t] = static_cast<uint8_t>(r), bytes[t] = static_cast<uint16_t>(b); }
};

// gcc's tile loads and ldtilecfg do not tell the compiler that they read memory: this keeps the
// stores that fill a buffer ahead of the tile instruction that reads it.
inline void compiler_barrier() { asm volatile("" ::: "memory"); }

// The configuration is per thread: each parallel_for chunk loads its own and releases it.
AMX_TARGET void load_tiles(TileConfig& config) {
  compiler_barrier();
  _tile_loadconfig(&config);
}

// int4: for weight blocks [begin, end), every whole block of 16 activation rows, group by group:
// the block's 4 x 64 bytes of a group are 8 rows of a weight tile (part p's low nibbles are the
// row for columns 8p..8p+3, its high ones for 8p+4..8p+7), unpacked once per weight block; the
// high and low activation parts' 16 rows x 32 columns are two tiles; their two products are the
// group's integer sums, which block_rows' epilogue turns into the 16 x 16 outputs' floats.
//
// A tile's sums reach the vector registers through memory. Each group's are read one group
// later, while the tiles compute the next group's into the other buffer: the epilogue then never
// waits on the product the tiles have just begun.
AMX_TARGET __attribute__((always_inline)) inline void int4_group_tiles(const uint8_t* unpacked, const int8_t* tiles,
                                                                       int32_t* sums) {
  _tile_loadd(4, unpacked, 64);
  _tile_loadd(2, tiles, GROUP);
  _tile_loadd(3, tiles + 16 * GROUP, GROUP);
  _tile_zero(0);
  _tile_zero(1);
  _tile_dpbsud(0, 2, 4);
  _tile_dpbsud(1, 3, 4);
  _tile_stored(0, sums, 64);
  _tile_stored(1, sums + 256, 64);
}

// block_rows' epilogue for one group of 16 rows, from the tiles' high and low sums (sums, sums + 256).
AMX_TARGET __attribute__((always_inline)) inline void int4_group_epilogue(const uint8_t* wg, const Split& a,
                                                                          int64_t r0, int64_t g, int64_t groups,
                                                                          const int32_t* sums, __m512 (&acc)[16]) {
  const __m512 scale = bfloat16s(wg + 256), zero = bfloat16s(wg + 288);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    const int64_t at = (r0 + i) * groups + g;
    const __m512 high = _mm512_cvtepi32_ps(_mm512_load_si512(sums + 16 * i));
    const __m512 low = _mm512_cvtepi32_ps(_mm512_load_si512(sums + 256 + 16 * i));
    const __m512 xq = _mm512_mul_ps(_mm512_fmadd_ps(low, _mm512_set1_ps(1.f / 254.f), high),
                                    _mm512_set1_ps(a.step[at]));
    const __m512 xs = _mm512_set1_ps(a.sum[at]);
    acc[i] = _mm512_fmadd_ps(scale, _mm512_fnmadd_ps(_mm512_set1_ps(8.f), xs, xq), acc[i]);
    acc[i] = _mm512_fmadd_ps(zero, xs, acc[i]);
  }
}

// Rows [0, tiled) of weight blocks [begin, end), in blocks of 16 (the last one's rows past `tiled`
// are zeros in a.tiles, a.step and a.sum).
AMX_TARGET void int4_tiles_amx(const uint8_t* w, const Split& a, int64_t begin, int64_t end, int64_t tiled, int64_t k,
                               int64_t n, float* o) {
  const int64_t groups = k / GROUP;
  TileConfig config;
  config.tile(0, 16, 64), config.tile(1, 16, 64);  // sums of the high part, of the low part
  config.tile(2, 16, GROUP), config.tile(3, 16, GROUP);  // activations: high part, low part
  config.tile(4, GROUP / 4, 64);  // a group of the weight block
  load_tiles(config);
  std::vector<uint8_t> unpacked(groups * GROUP * ROWS);
  alignas(64) int32_t sums[2][2 * 16 * 16];  // a group's high and low sums, odd and even groups
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int64_t b = begin; b < end; ++b) {
    const uint8_t* wb = w + b * groups * BLOCK;
    for (int64_t g = 0; g < groups; ++g) {
      for (int p = 0; p < 4; ++p) {
        const __m512i v = _mm512_loadu_si512(wb + g * BLOCK + p * 64);
        uint8_t* row = unpacked.data() + g * GROUP * ROWS + p * 128;
        _mm512_storeu_si512(row, _mm512_and_si512(v, nibble));
        _mm512_storeu_si512(row + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
      }
    }
    compiler_barrier();
    for (int64_t r0 = 0; r0 < tiled; r0 += 16) {
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
      const int8_t* tiles = a.tiles.data() + r0 / 16 * groups * 2 * 16 * GROUP;  // a group's two: 1024 bytes
      int4_group_tiles(unpacked.data(), tiles, sums[0]);
      for (int64_t g = 1; g < groups; ++g) {
        int4_group_tiles(unpacked.data() + g * GROUP * ROWS, tiles + g * 2 * 16 * GROUP, sums[g & 1]);
        int4_group_epilogue(wb + (g - 1) * BLOCK, a, r0, g - 1, groups, sums[(g - 1) & 1], acc);
      }
      int4_group_epilogue(wb + (groups - 1) * BLOCK, a, r0, groups - 1, groups, sums[(groups - 1) & 1], acc);
      for (int i = 0; i < 16 && r0 + i < tiled; ++i) _mm512_storeu_ps(o + (r0 + i) * n + b * ROWS, acc[i]);
    }
  }
  _tile_release();
}

// int8: a weight block's 64 bytes per 4 columns are a tile's rows as stored, 16 of them (64
// columns) to a tile, read in place. The integer sums run over all of K in the tiles (one scale
// per output row), two weight blocks at a time so each activation tile serves both, and
// int8_block's epilogue runs once per 16 x 16 outputs. Where K is not a multiple of 64, the last
// weight tile is copied with zeros after its columns, so whatever the activation tile reads past
// a row's end (the next row's values, or the buffer's slack) adds nothing.
AMX_TARGET void int8_epilogue(const int32_t* high_sums, const int32_t* low_sums, const float* scales,
                              const RowSplit& a, int64_t r0, int64_t rows, int64_t n, float* out) {
  const __m512 scale = _mm512_loadu_ps(scales);
  for (int i = 0; i < rows; ++i) {
    const int64_t r = r0 + i;
    const __m512i high = _mm512_sub_epi32(_mm512_load_si512(high_sums + 16 * i), _mm512_set1_epi32(128 * a.high_sum[r]));
    const __m512i low = _mm512_sub_epi32(_mm512_load_si512(low_sums + 16 * i), _mm512_set1_epi32(128 * a.low_sum[r]));
    const __m512 sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(low), _mm512_set1_ps(1.f / 254.f), _mm512_cvtepi32_ps(high));
    _mm512_storeu_ps(out + r * n, _mm512_mul_ps(_mm512_mul_ps(sum, _mm512_set1_ps(a.step[r])), scale));
  }
}

// Rows [0, tiled) of weight blocks [begin, end), in blocks of 16 (the last one's rows past `tiled`
// are zeros in a's buffers).
AMX_TARGET void int8_tiles_amx(const uint8_t* w, const float* scales, const RowSplit& a, int64_t begin, int64_t end,
                               int64_t tiled, int64_t k, int64_t n, float* o) {
  const int64_t whole = k / 64 * 64;
  TileConfig config;
  config.tile(0, 16, 64), config.tile(1, 16, 64);  // first weight block's sums: high part, low part
  config.tile(2, 16, 64), config.tile(3, 16, 64);  // activations: high part, low part
  config.tile(4, 16, 64), config.tile(5, 16, 64);  // 64 columns of the first and second weight blocks
  config.tile(6, 16, 64), config.tile(7, 16, 64);  // second weight block's sums
  load_tiles(config);
  alignas(64) uint8_t tail[2][16 * 64] = {};
  alignas(64) int32_t sums[4][16 * 16];
  for (int64_t b = begin; b < end; b += 2) {
    // an odd block out pairs with itself; its second results are not stored
    const int64_t b1 = b + 1 < end ? b + 1 : b;
    const uint8_t *w0 = w + b * k * ROWS, *w1 = w + b1 * k * ROWS;
    if (whole < k) {
      std::memcpy(tail[0], w0 + whole * ROWS, (k - whole) * ROWS);
      std::memcpy(tail[1], w1 + whole * ROWS, (k - whole) * ROWS);
      compiler_barrier();
    }
    for (int64_t r0 = 0; r0 < tiled; r0 += 16) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(6);
      _tile_zero(7);
      for (int64_t c = 0; c < k; c += 64) {
        const bool last = c == whole;
        _tile_loadd(2, a.high.data() + r0 * k + c, k);
        _tile_loadd(3, a.low.data() + r0 * k + c, k);
        _tile_loadd(4, last ? tail[0] : w0 + c * ROWS, 64);
        _tile_loadd(5, last ? tail[1] : w1 + c * ROWS, 64);
        _tile_dpbsud(0, 2, 4);
        _tile_dpbsud(1, 3, 4);
        _tile_dpbsud(6, 2, 5);
        _tile_dpbsud(7, 3, 5);
      }
      _tile_stored(0, sums[0], 64);
      _tile_stored(1, sums[1], 64);
      _tile_stored(6, sums[2], 64);
      _tile_stored(7, sums[3], 64);
      const int64_t rows = std::min<int64_t>(16, tiled - r0);
      int8_epilogue(sums[0], sums[1], scales + b * ROWS, a, r0, rows, n, o + b * ROWS);
      if (b1 != b) int8_epilogue(sums[2], sums[3], scales + b1 * ROWS, a, r0, rows, n, o + b1 * ROWS);
    }
  }
  _tile_release();
}
#else
bool amx_supported() { return false; }
void int4_tiles_amx(const uint8_t*, const Split&, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
void int8_tiles_amx(const uint8_t*, const float*, const RowSplit&, int64_t, int64_t, int64_t, int64_t, int64_t,
                    float*) {}
#endif

// The instruction sets, as the ops below take them.
struct Avx512 {
  static constexpr const char* needs = "AVX-512 VNNI";
  static constexpr int rows = 4;  // activation rows per pass over a block of weights
  static constexpr int rows_one = 8;  // the same with one part: half the accumulators
  static bool supported() { return ::supported(); }
  static void split_row(const float* x, int64_t k, int8_t* h, int8_t* l, float* s, float* sum) {
    ::split_row(x, k, h, l, s, sum);
  }
  template <int MR, int PARTS, bool Q4_0>
  static void int4_block(const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
    block_rows<MR, PARTS, Q4_0>(w, a, r0, k, n, out);
  }
  template <int MR, int PARTS>
  static void q4k_block(const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
    q4k_block_rows<MR, PARTS>(w, a, r0, k, n, out);
  }
  static void split_whole_row(const float* x, int64_t k, int8_t* h, int8_t* l, float* s, int32_t* hs, int32_t* ls) {
    ::split_whole_row(x, k, h, l, s, hs, ls);
  }
  static void split_groups(const float* x, int64_t k, int8_t* h, float* s, int32_t* sum) {
    ::split_groups(x, k, h, s, sum);
  }
  template <int MR, int PARTS>
  static void int8_block(const uint8_t* w, const float* sc, const RowSplit& a, int64_t r0, int64_t k, int64_t n,
                         float* out) {
    if constexpr (PARTS == 1) int8_block_groups<MR>(w, sc, a, r0, k, n, out);
    else ::int8_block<MR>(w, sc, a, r0, k, n, out);
  }
  static float dot(const float* a, const float* b, int64_t n) { return ::dot(a, b, n); }
  static void add_scaled(float alpha, const float* x, float* y, int64_t n) { ::add_scaled(alpha, x, y, n); }
  static int64_t int4_tiled(int64_t) { return 0; }  // rows multiplied in AMX's tiles: none
  static int64_t int8_tiled(int64_t) { return 0; }
  static void int4_tiles(const uint8_t*, const Split&, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
  static void int8_tiles(const uint8_t*, const float*, const RowSplit&, int64_t, int64_t, int64_t, int64_t, int64_t,
                         float*) {}
};

// AVX-512 VNNI's kernels, with AMX's tiles for every whole block of 16 activation rows and a last,
// partial one long enough (other rows take the VNNI code), so one op serves any row count and
// gives VNNI's results.
struct Amx : Avx512 {
  static constexpr const char* needs =
      "AMX-INT8 and AVX-512 VNNI, and Linux's leave to use AMX tiles (arch_prctl ARCH_REQ_XCOMP_PERM, Linux 5.16+)";
  static bool supported() { return amx_supported(); }
  // The rows multiplied in tiles: each whole block of 16, and a last, partial one padded with zero
  // rows where it holds at least a few (below that the VNNI code's cost, which grows with the rows,
  // stays under a whole tile's): int8's tiles cost less against its VNNI code than int4's.
  static int64_t int4_tiled(int64_t m) { return m % 16 >= 12 ? m : m / 16 * 16; }
  static int64_t int8_tiled(int64_t m) { return m % 16 >= 2 ? m : m / 16 * 16; }
  static void int4_tiles(const uint8_t* w, const Split& a, int64_t begin, int64_t end, int64_t tiled, int64_t k,
                         int64_t n, float* o) {
    int4_tiles_amx(w, a, begin, end, tiled, k, n, o);
  }
  static void int8_tiles(const uint8_t* w, const float* sc, const RowSplit& a, int64_t begin, int64_t end,
                         int64_t tiled, int64_t k, int64_t n, float* o) {
    int8_tiles_amx(w, sc, a, begin, end, tiled, k, n, o);
  }
};

struct Avx2 {
  static constexpr const char* needs = "AVX2, FMA and F16C";
  static constexpr int rows = 2;  // half AVX-512's: 16 registers, not 32, hold the accumulators
  static constexpr int rows_one = 4;
  static bool supported() { return avx2_supported(); }
  static void split_row(const float* x, int64_t k, int8_t* h, int8_t* l, float* s, float* sum) {
    split_row_avx2(x, k, h, l, s, sum);
  }
  template <int MR, int PARTS, bool Q4_0>
  static void int4_block(const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
    block_rows_avx2<MR, PARTS, Q4_0>(w, a, r0, k, n, out);
  }
  template <int MR, int PARTS>
  static void q4k_block(const uint8_t* w, const Split& a, int64_t r0, int64_t k, int64_t n, float* out) {
    q4k_block_rows_avx2<MR, PARTS>(w, a, r0, k, n, out);
  }
  static void split_whole_row(const float* x, int64_t k, int8_t* h, int8_t* l, float* s, int32_t* hs, int32_t* ls) {
    split_whole_row_avx2(x, k, h, l, s, hs, ls);
  }
  static void split_groups(const float* x, int64_t k, int8_t* h, float* s, int32_t* sum) {
    split_groups_avx2(x, k, h, s, sum);
  }
  template <int MR, int PARTS>
  static void int8_block(const uint8_t* w, const float* sc, const RowSplit& a, int64_t r0, int64_t k, int64_t n,
                         float* out) {
    if constexpr (PARTS == 1) int8_block_groups_avx2<MR>(w, sc, a, r0, k, n, out);
    else int8_block_avx2<MR>(w, sc, a, r0, k, n, out);
  }
  static float dot(const float* a, const float* b, int64_t n) { return dot_avx2(a, b, n); }
  static void add_scaled(float alpha, const float* x, float* y, int64_t n) { add_scaled_avx2(alpha, x, y, n); }
  static int64_t int4_tiled(int64_t) { return 0; }  // rows multiplied in AMX's tiles: none
  static int64_t int8_tiled(int64_t) { return 0; }
  static void int4_tiles(const uint8_t*, const Split&, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
  static void int8_tiles(const uint8_t*, const float*, const RowSplit&, int64_t, int64_t, int64_t, int64_t, int64_t,
                         float*) {}
};

// Activation rows [r, m) against one block of weight rows: block(MR, PARTS, first row) for as many
// rows at a time as the instruction set takes with `parts`, then one at a time. `parts`: 2, the
// activations split in two int8 parts (float32's accuracy); 1, only the first (8-bit activations,
// as llama.cpp's Q8 blocks: half the integer work, and half the accumulators, so twice the rows).
template <class Isa, class Block>
inline void each_pass(int64_t parts, int64_t r, int64_t m, Block&& block) {
  auto rows = [&](auto p) {
    constexpr int step = p.value == 1 ? Isa::rows_one : Isa::rows;
    for (; r + step <= m; r += step) block(std::integral_constant<int, step>{}, p, r);
    for (; r < m; ++r) block(std::integral_constant<int, 1>{}, p, r);
  };
  if (parts == 1) rows(std::integral_constant<int, 1>{});
  else rows(std::integral_constant<int, 2>{});
}

// x [M, K] times a weight in int4's layout, or (Q4_0) in Q4_0's (Q4_0_BLOCK, no AMX tiles: an AMX CPU
// runs the AVX-512 op).
template <class Isa, bool Q4_0 = false>
at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t parts) {
  TORCH_CHECK(Isa::supported(), "lmpipe::", Q4_0 ? "q4_0_mm" : "int4_mm", " needs ", Isa::needs);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous(), "packed: contiguous uint8");
  TORCH_CHECK(parts == 1 || parts == 2, "parts: 1 or 2");
  const int64_t m = x.size(0), k = x.size(1), groups = k / GROUP;
  TORCH_CHECK(k % GROUP == 0 && n % ROWS == 0, "K must be a multiple of 32 and N of 16");
  TORCH_CHECK(packed.numel() == n / ROWS * groups * (Q4_0 ? Q4_0_BLOCK : BLOCK), "packed does not hold an [N, K] weight");
  at::Tensor out = at::empty({m, n}, x.options());
  // rows multiplied in AMX's tiles (int4's two parts only), and those with the zero rows that fill their last tile
  const int64_t tiled = parts == 2 && !Q4_0 ? Isa::int4_tiled(m) : 0, padded = std::max(m, (tiled + 15) / 16 * 16);
  Split a{std::vector<int8_t>(m * k), std::vector<int8_t>(m * k), std::vector<float>(padded * groups),
          std::vector<float>(padded * groups), std::vector<int8_t>((tiled + 15) / 16 * 16 * k * 2)};
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      Isa::split_row(xp + r * k, k, a.high.data() + r * k, a.low.data() + r * k, a.step.data() + r * groups,
                     a.sum.data() + r * groups);
      if (r < tiled) tile_row(a, r, k);
    }
  });
  const uint8_t* w = packed.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n / ROWS, 4, [&](int64_t begin, int64_t end) {
    if (tiled) Isa::int4_tiles(w, a, begin, end, tiled, k, n, o);
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* wb = w + b * groups * (Q4_0 ? Q4_0_BLOCK : BLOCK);
      float* ob = o + b * ROWS;
      each_pass<Isa>(parts, tiled, m, [&](auto mr, auto p, int64_t r) {
        Isa::template int4_block<mr.value, p.value, Q4_0>(wb, a, r, k, n, ob);
      });
    }
  });
  return out;
}


// x [M, K] times a weight in Q4_K's layout (SUPER_GROUPS, Q4K_BLOCK): no AMX tiles (an AMX CPU
// runs the AVX-512 op).
template <class Isa>
at::Tensor q4k_mm(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t parts) {
  TORCH_CHECK(Isa::supported(), "lmpipe::q4k_mm needs ", Isa::needs);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous(), "packed: contiguous uint8");
  TORCH_CHECK(parts == 1 || parts == 2, "parts: 1 or 2");
  const int64_t m = x.size(0), k = x.size(1), groups = k / GROUP;
  TORCH_CHECK(k % (GROUP * SUPER_GROUPS) == 0 && n % ROWS == 0, "K must be a multiple of 256 and N of 16");
  TORCH_CHECK(packed.numel() == n / ROWS * (groups / SUPER_GROUPS) * Q4K_BLOCK, "packed does not hold an [N, K] weight");
  at::Tensor out = at::empty({m, n}, x.options());
  Split a{std::vector<int8_t>(m * k), std::vector<int8_t>(m * k), std::vector<float>(m * groups),
          std::vector<float>(m * groups), {}};
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      Isa::split_row(xp + r * k, k, a.high.data() + r * k, a.low.data() + r * k, a.step.data() + r * groups,
                     a.sum.data() + r * groups);
  });
  const uint8_t* w = packed.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n / ROWS, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* wb = w + b * (groups / SUPER_GROUPS) * Q4K_BLOCK;
      float* ob = o + b * ROWS;
      each_pass<Isa>(parts, 0, m, [&](auto mr, auto p, int64_t r) {
        Isa::template q4k_block<mr.value, p.value>(wb, a, r, k, n, ob);
      });
    }
  });
  return out;
}


template <class Isa>
at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t parts) {
  TORCH_CHECK(Isa::supported(), "lmpipe::int8_mm needs ", Isa::needs);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.size(2) == ROWS && packed.size(3) == 4,
              "packed: contiguous uint8 [N/16, K/4, 16, 4]");
  TORCH_CHECK(parts == 1 || parts == 2, "parts: 1 or 2");
  const int64_t m = x.size(0), k = x.size(1), n = packed.size(0) * ROWS;
  TORCH_CHECK(packed.size(1) * 4 == k && k % 8 == 0, "x and packed differ in K, or K is not a multiple of 8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.numel() == n && scales.is_contiguous(), "scales: float32 [N]");
  if (k % GROUP) parts = 2;  // one part is per group of 32 columns: a narrower layer keeps two
  // rows multiplied in AMX's tiles, and those with the zero rows that fill their last tile
  const int64_t tiled = parts == 2 ? Isa::int8_tiled(m) : 0, padded = std::max(m, (tiled + 15) / 16 * 16);
  at::Tensor out = at::empty({m, n}, x.options());
  // 64 bytes of slack: AMX's tiles read whole 64-byte rows, past the last row where K is not a multiple of 64
  const int64_t groups = k / GROUP;
  RowSplit a;
  a.high.resize(padded * k + 64);
  if (parts == 2) {
    a.low.resize(padded * k + 64), a.step.resize(padded), a.high_sum.resize(padded), a.low_sum.resize(padded);
  } else {
    a.group_step.resize(m * groups), a.group_sum.resize(m * groups);
  }
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (parts == 1)
        Isa::split_groups(xp + r * k, k, a.high.data() + r * k, a.group_step.data() + r * groups,
                          a.group_sum.data() + r * groups);
      else
        Isa::split_whole_row(xp + r * k, k, a.high.data() + r * k, a.low.data() + r * k, &a.step[r], &a.high_sum[r],
                             &a.low_sum[r]);
    }
  });
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const float* sc = scales.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n / ROWS, 4, [&](int64_t begin, int64_t end) {
    if (tiled) Isa::int8_tiles(w, sc, a, begin, end, tiled, k, n, o);
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* wb = w + b * k * ROWS;
      each_pass<Isa>(parts, tiled, m, [&](auto mr, auto p, int64_t r) {
        Isa::template int8_block<mr.value, p.value>(wb, sc + b * ROWS, a, r, k, n, o + b * ROWS);
      });
    }
  });
  return out;
}


template <class Isa>
at::Tensor attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  TORCH_CHECK(Isa::supported(), "lmpipe::attend_one needs ", Isa::needs);
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "float32 queries, keys and values");
  // Keys and values may be a view of a wider cache (its columns in use): any strides, but
  // each column's D values side by side.
  TORCH_CHECK(q.is_contiguous() && mask.is_contiguous() && k.stride(3) == 1 && v.stride(3) == 1,
              "contiguous queries and mask; keys' and values' last dimension contiguous");
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && k.dim() == 4 && v.sizes() == k.sizes(), "q [B, H, 1, D], k and v [B, KV, W, D]");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.numel() == k.size(0) * k.size(2), "mask: bool [B, 1, 1, W]");
  const int64_t b = q.size(0), heads = q.size(1), dim = q.size(3), kv = k.size(1), width = k.size(2);
  TORCH_CHECK(heads % kv == 0 && k.size(0) == b && k.size(3) == dim, "shapes disagree");
  const int64_t groups = heads / kv;
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  at::Tensor out = at::zeros_like(q);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const bool* mp = mask.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  // One row (3 key/value heads for SmolLM2) stays on one thread; batches spread.
  at::parallel_for(0, b * kv, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(width);
    std::vector<int32_t> used;
    used.reserve(width);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t row = bh / kv;
      const bool* m = mp + row * width;
      used.clear();
      for (int64_t w = 0; w < width; ++w)
        if (m[w]) used.push_back(static_cast<int32_t>(w));
      if (used.empty()) continue;  // a row with nothing to attend to: zeros, never NaN
      const int64_t head = bh % kv;
      const float* keys = kp + row * k.stride(0) + head * k.stride(1);
      const float* values = vp + row * v.stride(0) + head * v.stride(1);
      const int64_t ks = k.stride(2), vs = v.stride(2);
      for (int64_t g = 0; g < groups; ++g) {
        const float* query = qp + (row * heads + head * groups + g) * dim;
        float top = -INFINITY;
        for (int32_t w : used) top = std::fmax(top, scores[w] = Isa::dot(query, keys + w * ks, dim) * scale);
        float total = 0.f;
        for (int32_t w : used) total += scores[w] = std::exp(scores[w] - top);
        float* o = op + (row * heads + head * groups + g) * dim;
        for (int32_t w : used) Isa::add_scaled(scores[w] / total, values + w * vs, o, dim);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(lmpipe, m) {
  m.def("int4_mm(Tensor x, Tensor packed, int n, int parts=2) -> Tensor");
  m.def("int8_mm(Tensor x, Tensor packed, Tensor scales, int parts=2) -> Tensor");
  m.def("attend_one(Tensor q, Tensor k, Tensor v, Tensor mask) -> Tensor");
  m.def("int4_mm_avx2(Tensor x, Tensor packed, int n, int parts=2) -> Tensor");
  m.def("int8_mm_avx2(Tensor x, Tensor packed, Tensor scales, int parts=2) -> Tensor");
  m.def("attend_one_avx2(Tensor q, Tensor k, Tensor v, Tensor mask) -> Tensor");
  m.def("int4_mm_amx(Tensor x, Tensor packed, int n, int parts=2) -> Tensor");
  m.def("int8_mm_amx(Tensor x, Tensor packed, Tensor scales, int parts=2) -> Tensor");
  m.def("q4k_mm(Tensor x, Tensor packed, int n, int parts=2) -> Tensor");
  m.def("q4k_mm_avx2(Tensor x, Tensor packed, int n, int parts=2) -> Tensor");
  m.def("q4_0_mm(Tensor x, Tensor packed, int n, int parts=2) -> Tensor");
  m.def("q4_0_mm_avx2(Tensor x, Tensor packed, int n, int parts=2) -> Tensor");
  m.def("amx_built() -> bool");  // whether the compiler built the AMX ops (lmpipe.models.kernels.vnni)
}

TORCH_LIBRARY_IMPL(lmpipe, CPU, m) {
  m.impl("int4_mm", &int4_mm<Avx512>);
  m.impl("int8_mm", &int8_mm<Avx512>);
  m.impl("attend_one", &attend_one<Avx512>);
  m.impl("int4_mm_avx2", &int4_mm<Avx2>);
  m.impl("int8_mm_avx2", &int8_mm<Avx2>);
  m.impl("attend_one_avx2", &attend_one<Avx2>);
  m.impl("int4_mm_amx", &int4_mm<Amx>);
  m.impl("int8_mm_amx", &int8_mm<Amx>);
  m.impl("q4k_mm", &q4k_mm<Avx512>);
  m.impl("q4k_mm_avx2", &q4k_mm<Avx2>);
  m.impl("q4_0_mm", &int4_mm<Avx512, true>);
  m.impl("q4_0_mm_avx2", &int4_mm<Avx2, true>);
}

TORCH_LIBRARY_IMPL(lmpipe, CompositeExplicitAutograd, m) {
  m.impl("amx_built", []() { return static_cast<bool>(LMPIPE_AMX); });
}
