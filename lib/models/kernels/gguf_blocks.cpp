// A GGUF's blocks turned into lmpipe's formats at load time (lmpipe.models.gguf_weights), and
// the portable values packed for vnni.cpp's ops (lmpipe.models.quantize.pack): the same values
// as the numpy code they replace, bit for bit, written straight into the result. numpy's
// version made several whole-tensor temporaries per step on one thread; for a 1B model it
// was most of a first load.
//
// Plain scalar C++ (the compiler vectorizes it), for any x86-64 except the int8 conversion's
// loops, compiled for AVX2 (which every CPU lmpipe's kernels run on has). No target includes
// FMA, so no product-and-sum is fused: every float is rounded where numpy rounds it.
//
// torch.ops.lmpipe.gguf_int4(blocks, order, kind): Q4_0, Q4_1 or Q4_K rows (uint8 [rows, bytes],
//   row i of the result being the file's row order[i]) as int4's portable layout: values uint8
//   [rows, K/2] (column 2j low, 2j + 1 high), bfloat16 scales and zeros [rows, K/32] (computed in
//   float32, then rounded to nearest even), with weight = (q − 8)·scale + zero. Q4_K: scale = d·sc,
//   zero = 8·d·sc − dmin·m; Q4_1: scale = d, zero = m + 8·d; Q4_0: scale = d, zero = 0.
// torch.ops.lmpipe.gguf_int8(blocks, order, kind): Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K or Q8_0 rows
//   dequantized as gguf-py does (each type's products and sums in its order), then int8 per row:
//   scale = max(max|w| / 127, 1e-10), value = w / scale rounded to nearest even; values int8
//   [rows, K], scales float32 [rows].
// torch.ops.lmpipe.int4_pack_pairs(values, scales, zeros): int4_mm's packed layout (vnni.cpp)
//   from the portable values and bfloat16 scales and zeros.
// torch.ops.lmpipe.int8_pack(values): int8_mm's layout, uint8 [N/16, K/4, 16, 4], each value plus 128.
// torch.ops.lmpipe.gguf_q4k(blocks, order): Q4_K rows as they are, for q4k_mm (QuantizedWeight's
//   "q4k" mode); q4k_pack(values, dm, scm) lays them out as q4k_mm reads them.
// torch.ops.lmpipe.q4_0_pack(values, d): a Q4_0 tensor as it is (gguf_int4's values, the file's
//   float16 d) laid out as q4_0_mm reads it (QuantizedWeight's "q4_0" mode).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t GROUP = 32;  // int4 columns per scale and zero
constexpr int64_t ROWS = 16;   // int4_mm's packed rows per block
constexpr int64_t SUPER = 256;  // weights per K-quant super-block

float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

struct Int4Kind {
  int64_t block_bytes, block_weights;
};

Int4Kind int4_kind(const std::string& kind) {
  if (kind == "Q4_0") return {18, 32};
  if (kind == "Q4_1") return {20, 32};
  if (kind == "Q4_K") return {144, SUPER};
  TORCH_CHECK(false, "gguf_int4: no int4 form for ", kind);
}

// Q4_K's 6-bit scale and minimum of group j (llama.cpp's get_scale_min_k4).
void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// A Q4_K block's 128 bytes of nibbles as int4's portable bytes (16 per group of 32) at `out`:
// groups 2c and 2c + 1 are the low and the high nibbles of the 32 bytes of part c.
void q4_k_nibbles(const uint8_t* blk, uint8_t* out) {
  for (int c = 0; c < 4; ++c) {
    const uint8_t* part = blk + 16 + 32 * c;
    uint8_t* low = out + 2 * c * 16;
    uint8_t* high = low + 16;
    for (int t = 0; t < 16; ++t) {
      const uint8_t a = part[2 * t], e = part[2 * t + 1];
      low[t] = static_cast<uint8_t>((a & 0xF) | (e << 4));
      high[t] = static_cast<uint8_t>((a >> 4) | (e & 0xF0));
    }
  }
}

// One row of Q4_K blocks into portable bytes (16 per group of 32) and float scales and zeros.
void q4_k_row(const uint8_t* src, int64_t blocks, uint8_t* values, at::BFloat16* scales, at::BFloat16* zeros) {
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * 144;
    const float d = half_at(blk), dmin = half_at(blk + 2);
    for (int g = 0; g < 8; ++g) {
      int sc, m;
      scale_min_k4(g, blk + 4, sc, m);
      scales[b * 8 + g] = at::BFloat16(d * static_cast<float>(sc));  // float32, then to nearest even
      // numpy's order: (8·d)·sc − dmin·m, each product rounded
      zeros[b * 8 + g] = at::BFloat16((8.0f * d) * static_cast<float>(sc) - dmin * static_cast<float>(m));
    }
    q4_k_nibbles(blk, values + b * 8 * 16);
  }
}

// One row of Q4_0 or Q4_1 blocks, likewise: a block is one group.
template <bool Q4_1>
void q4_row(const uint8_t* src, int64_t blocks, uint8_t* values, at::BFloat16* scales, at::BFloat16* zeros) {
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * (Q4_1 ? 20 : 18);
    const float d = half_at(blk);
    scales[b] = at::BFloat16(d);
    zeros[b] = at::BFloat16(Q4_1 ? half_at(blk + 2) + 8.0f * d : 0.0f);
    // weight i < 16: the low nibble of byte i; weight i + 16: its high nibble
    const uint8_t* qs = blk + (Q4_1 ? 4 : 2);
    uint8_t* out = values + b * 16;
    for (int t = 0; t < 8; ++t) {
      out[t] = static_cast<uint8_t>((qs[2 * t] & 0xF) | (qs[2 * t + 1] << 4));
      out[t + 8] = static_cast<uint8_t>((qs[2 * t] >> 4) | (qs[2 * t + 1] & 0xF0));
    }
  }
}

using Int4Row = void (*)(const uint8_t*, int64_t, uint8_t*, at::BFloat16*, at::BFloat16*);

const uint8_t* row_of(const at::Tensor& blocks, const int64_t* order, int64_t i) {
  return blocks.data_ptr<uint8_t>() + order[i] * blocks.stride(0);
}

void check_rows(const at::Tensor& blocks, const at::Tensor& order, const char* op) {
  TORCH_CHECK(blocks.dim() == 2 && blocks.scalar_type() == at::kByte && blocks.stride(1) == 1,
              op, ": blocks must be uint8 [rows, bytes], rows contiguous");
  TORCH_CHECK(order.dim() == 1 && order.scalar_type() == at::kLong && order.is_contiguous(), op,
              ": order must be contiguous int64 [rows]");
  const int64_t* o = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < order.numel(); ++i)
    TORCH_CHECK(o[i] >= 0 && o[i] < blocks.size(0), op, ": order names a row the blocks do not have");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gguf_int4(const at::Tensor& blocks, const at::Tensor& order,
                                                         std::string kind) {
  check_rows(blocks, order, "gguf_int4");
  const Int4Kind info = int4_kind(kind);
  TORCH_CHECK(blocks.size(1) % info.block_bytes == 0, "gguf_int4: a row is not whole ", kind, " blocks");
  const int64_t rows = order.numel(), per_row = blocks.size(1) / info.block_bytes, k = per_row * info.block_weights;
  at::Tensor values = at::empty({rows, k / 2}, blocks.options());
  at::Tensor scales = at::empty({rows, k / GROUP}, blocks.options().dtype(at::kBFloat16));
  at::Tensor zeros = at::empty({rows, k / GROUP}, blocks.options().dtype(at::kBFloat16));
  const int64_t* o = order.data_ptr<int64_t>();
  const Int4Row convert = kind == "Q4_K" ? q4_k_row : kind == "Q4_1" ? q4_row<true> : q4_row<false>;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      convert(row_of(blocks, o, i), per_row, values.data_ptr<uint8_t>() + i * (k / 2),
               scales.data_ptr<at::BFloat16>() + i * (k / GROUP), zeros.data_ptr<at::BFloat16>() + i * (k / GROUP));
  });
  return {values, scales, zeros};
}

// One row of Q6_K blocks dequantized into `w` [K] as gguf-py computes it (llama.cpp's loop).
__attribute__((target("avx2"))) void q6_k_row(const uint8_t* src, int64_t blocks, float* w) {
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * 210;
    const float d = half_at(blk + 208);
    float* y = w + b * SUPER;
    for (int h = 0; h < 2; ++h) {  // halves of 128: 64 bytes of low bits, 32 of high bits, 8 scales
      const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192) + 8 * h;
      float scale[8];
      for (int i = 0; i < 8; ++i) scale[i] = d * static_cast<float>(sc[i]);
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[128 * h + l] = scale[is] * static_cast<float>(q1);
        y[128 * h + l + 32] = scale[is + 2] * static_cast<float>(q2);
        y[128 * h + l + 64] = scale[is + 4] * static_cast<float>(q3);
        y[128 * h + l + 96] = scale[is + 6] * static_cast<float>(q4);
      }
    }
  }
}

// One row of Q8_0 blocks dequantized into `w` [K].
__attribute__((target("avx2"))) void q8_0_row(const uint8_t* src, int64_t blocks, float* w) {
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * 34;
    const float d = half_at(blk);
    const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
    for (int i = 0; i < 32; ++i) w[b * 32 + i] = static_cast<float>(qs[i]) * d;
  }
}

// Q4_0 (d·(q − 8)) and Q4_1 (d·q + m): weight i < 16 in the low nibble of byte i, i + 16 in its high one.
template <bool Q4_1>
__attribute__((target("avx2"))) void q4_dequantized_row(const uint8_t* src, int64_t blocks, float* w) {
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * (Q4_1 ? 20 : 18);
    const float d = half_at(blk), m = Q4_1 ? half_at(blk + 2) : 0.0f;
    const uint8_t* qs = blk + (Q4_1 ? 4 : 2);
    float* y = w + b * 32;
    for (int i = 0; i < 16; ++i) {
      if (Q4_1) {
        y[i] = d * static_cast<float>(qs[i] & 0xF) + m;
        y[i + 16] = d * static_cast<float>(qs[i] >> 4) + m;
      } else {
        y[i] = d * static_cast<float>((qs[i] & 0xF) - 8);
        y[i + 16] = d * static_cast<float>((qs[i] >> 4) - 8);
      }
    }
  }
}

// Q5_0 (d·(q − 16)) and Q5_1 (d·q + m): Q4's nibbles, and bit i of the 32-bit qh as weight i's fifth bit.
template <bool Q5_1>
__attribute__((target("avx2"))) void q5_dequantized_row(const uint8_t* src, int64_t blocks, float* w) {
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * (Q5_1 ? 24 : 22);
    const float d = half_at(blk), m = Q5_1 ? half_at(blk + 2) : 0.0f;
    uint32_t qh;
    std::memcpy(&qh, blk + (Q5_1 ? 4 : 2), 4);
    const uint8_t* qs = blk + (Q5_1 ? 8 : 6);
    float* y = w + b * 32;
    for (int i = 0; i < 32; ++i) {
      const int q = (i < 16 ? qs[i] & 0xF : qs[i - 16] >> 4) | (((qh >> i) & 1) << 4);
      y[i] = Q5_1 ? d * static_cast<float>(q) + m : d * static_cast<float>(q - 16);
    }
  }
}

// Q4_K and Q5_K: (d·sc)·q − dmin·m per group of 32, q's low bits as gguf_int4 reads Q4_K's nibbles;
// Q5_K's bit g of qh[i] is the fifth bit of group g's weight i.
template <bool Q5>
__attribute__((target("avx2"))) void k_dequantized_row(const uint8_t* src, int64_t blocks, float* w) {
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * (Q5 ? 176 : 144);
    const float d = half_at(blk), dmin = half_at(blk + 2);
    const uint8_t *qh = blk + 16, *qs = blk + (Q5 ? 48 : 16);
    for (int g = 0; g < 8; ++g) {
      int sc, m;
      scale_min_k4(g, blk + 4, sc, m);
      const float scale = d * static_cast<float>(sc), low = dmin * static_cast<float>(m);
      const uint8_t* part = qs + 32 * (g / 2);
      float* y = w + b * SUPER + g * 32;
      for (int i = 0; i < 32; ++i) {
        const int q = ((part[i] >> (4 * (g % 2))) & 0xF) | (Q5 ? ((qh[i] >> g) & 1) << 4 : 0);
        y[i] = scale * static_cast<float>(q) - low;
      }
    }
  }
}

using DequantizedRow = void (*)(const uint8_t*, int64_t, float*);

struct Int8Kind {
  int64_t block_bytes, block_weights;
  DequantizedRow row;
};

Int8Kind int8_kind(const std::string& kind) {
  if (kind == "Q4_0") return {18, 32, q4_dequantized_row<false>};
  if (kind == "Q4_1") return {20, 32, q4_dequantized_row<true>};
  if (kind == "Q5_0") return {22, 32, q5_dequantized_row<false>};
  if (kind == "Q5_1") return {24, 32, q5_dequantized_row<true>};
  if (kind == "Q4_K") return {144, SUPER, k_dequantized_row<false>};
  if (kind == "Q5_K") return {176, SUPER, k_dequantized_row<true>};
  if (kind == "Q6_K") return {210, SUPER, q6_k_row};
  if (kind == "Q8_0") return {34, 32, q8_0_row};
  TORCH_CHECK(false, "gguf_int8: no int8 conversion for ", kind);
}

// x rounded to the nearest integer, ties to even, for |x| < 2^22: adding 1.5·2^23 leaves no bits
// below the unit, and the FPU rounds to nearest even (np.rint's result, and it vectorizes).
inline float nearest(float x) {
  constexpr float magic = 12582912.0f;
  return (x + magic) - magic;
}

// `w` [k] as int8 into `out`; its scale, max(max|w| / 127, 1e-10). AVX2 (without FMA: nothing is
// fused) for the vector loops: the conversions run only where lmpipe's kernels do, which need it.
__attribute__((target("avx2"))) float int8_row(const float* w, int64_t k, int8_t* out) {
  // max|w| over the bits: non-negative floats order as their bit patterns do, and an integer
  // maximum vectorizes where a float one (NaN's rules) does not
  uint32_t top = 0;
  for (int64_t j = 0; j < k; ++j) {
    uint32_t bits;
    std::memcpy(&bits, w + j, 4);
    top = std::max(top, bits & 0x7FFFFFFFu);
  }
  float largest;
  std::memcpy(&largest, &top, 4);
  const float scale = std::max(largest / 127.0f, 1e-10f);
  // |w / scale| <= 127 up to rounding: within nearest's range
  for (int64_t j = 0; j < k; ++j) {
    const float q = nearest(w[j] / scale);
    out[j] = static_cast<int8_t>(q < -128.0f ? -128.0f : q > 127.0f ? 127.0f : q);
  }
  return scale;
}

std::tuple<at::Tensor, at::Tensor> gguf_int8(const at::Tensor& blocks, const at::Tensor& order, std::string kind) {
  check_rows(blocks, order, "gguf_int8");
  const Int8Kind info = int8_kind(kind);
  __builtin_cpu_init();
  TORCH_CHECK(__builtin_cpu_supports("avx2"), "gguf_int8 needs AVX2");
  TORCH_CHECK(blocks.size(1) % info.block_bytes == 0, "gguf_int8: a row is not whole ", kind, " blocks");
  const int64_t rows = order.numel(), per_row = blocks.size(1) / info.block_bytes, k = per_row * info.block_weights;
  at::Tensor values = at::empty({rows, k}, blocks.options().dtype(at::kChar));
  at::Tensor scales = at::empty({rows}, blocks.options().dtype(at::kFloat));
  const int64_t* o = order.data_ptr<int64_t>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> w(k);
    for (int64_t i = begin; i < end; ++i) {
      info.row(row_of(blocks, o, i), per_row, w.data());
      scales.data_ptr<float>()[i] = int8_row(w.data(), k, values.data_ptr<int8_t>() + i * k);
    }
  });
  return {values, scales};
}

// 16 bits of 4 nibbles -> those nibbles at bits 0, 8, 16, 24
uint32_t spread(uint32_t x) {
  x = (x | (x << 8)) & 0x00FF00FFu;
  return (x | (x << 4)) & 0x0F0F0F0Fu;
}

// Row `row`'s group g of portable int4 bytes `v` (K columns) as the kernels' 4 words of nibbles: word
// p * ROWS + r of `word` for the row's place r in its block of 16.
void nibble_words(const uint8_t* v, int64_t row, int64_t k, int64_t g, int64_t r, uint32_t* word) {
  for (int p = 0; p < 4; ++p) {
    uint32_t w;
    std::memcpy(&w, v + row * (k / 2) + g * 16 + p * 4, 4);
    word[p * ROWS + r] = spread(w & 0xFFFF) | (spread(w >> 16) << 4);
  }
}

at::Tensor int4_pack_pairs(const at::Tensor& values, const at::Tensor& scales, const at::Tensor& zeros) {
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kByte && values.is_contiguous(),
              "int4_pack_pairs: values must be contiguous uint8 [N, K/2]");
  const int64_t n = values.size(0), k = values.size(1) * 2, groups = k / GROUP;
  TORCH_CHECK(n % ROWS == 0 && k % GROUP == 0, "int4_pack_pairs: N must be a multiple of 16 and K of 32");
  for (const at::Tensor* t : {&scales, &zeros})
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->numel() == n * groups,
                "int4_pack_pairs: scales and zeros must be contiguous bfloat16 [N, K/32]");
  // per block of 16 rows and group: 64 words of nibbles (part p, row r at word 16p + r), then
  // the 16 rows' bfloat16 scales and their zeros (8 words each)
  constexpr int64_t WORDS = 4 * ROWS + 16;
  at::Tensor out = at::empty({n / ROWS * groups * WORDS * 4}, values.options());
  const uint8_t* v = values.data_ptr<uint8_t>();
  const uint16_t* s = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>());
  const uint16_t* z = reinterpret_cast<const uint16_t*>(zeros.data_ptr<at::BFloat16>());
  uint32_t* o = reinterpret_cast<uint32_t*>(out.data_ptr<uint8_t>());
  at::parallel_for(0, n / ROWS, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t g = 0; g < groups; ++g) {
        uint32_t* word = o + (b * groups + g) * WORDS;
        uint16_t* halves = reinterpret_cast<uint16_t*>(word + 4 * ROWS);
        for (int64_t r = 0; r < ROWS; ++r) {
          const int64_t row = b * ROWS + r;
          nibble_words(v, row, k, g, r, word);
          halves[r] = s[row * groups + g];
          halves[ROWS + r] = z[row * groups + g];
        }
      }
  });
  return out;
}

// Q4_K rows as they are: the portable nibbles (as gguf_int4's), float16 (d, dmin) per super-block
// [rows, K/256, 2] and (sc, m) per group [rows, K/32, 2], each the file's own value.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gguf_q4k(const at::Tensor& blocks, const at::Tensor& order) {
  check_rows(blocks, order, "gguf_q4k");
  TORCH_CHECK(blocks.size(1) % 144 == 0, "gguf_q4k: a row is not whole Q4_K blocks");
  const int64_t rows = order.numel(), supers = blocks.size(1) / 144, k = supers * SUPER;
  at::Tensor values = at::empty({rows, k / 2}, blocks.options());
  at::Tensor dm = at::empty({rows, supers, 2}, blocks.options().dtype(at::kHalf));
  at::Tensor scm = at::empty({rows, k / GROUP, 2}, blocks.options());
  const int64_t* o = order.data_ptr<int64_t>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* src = row_of(blocks, o, i);
      uint8_t* row_values = values.data_ptr<uint8_t>() + i * (k / 2);
      uint8_t* halves = reinterpret_cast<uint8_t*>(dm.data_ptr<at::Half>() + i * supers * 2);
      uint8_t* sm = scm.data_ptr<uint8_t>() + i * (k / GROUP) * 2;
      for (int64_t b = 0; b < supers; ++b) {
        q4_k_nibbles(src + b * 144, row_values + b * 8 * 16);
        std::memcpy(halves + b * 4, src + b * 144, 4);  // d, dmin
        for (int g = 0; g < 8; ++g) {
          int sc, m;
          scale_min_k4(g, src + b * 144 + 4, sc, m);
          sm[(b * 8 + g) * 2] = static_cast<uint8_t>(sc);
          sm[(b * 8 + g) * 2 + 1] = static_cast<uint8_t>(m);
        }
      }
    }
  });
  return {values, dm, scm};
}

// q4k_mm's layout (vnni.cpp's Q4K_BLOCK) from gguf_q4k's three tensors.
at::Tensor q4k_pack(const at::Tensor& values, const at::Tensor& dm, const at::Tensor& scm) {
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kByte && values.is_contiguous(),
              "q4k_pack: values must be contiguous uint8 [N, K/2]");
  const int64_t n = values.size(0), k = values.size(1) * 2, groups = k / GROUP, supers = k / SUPER;
  TORCH_CHECK(n % ROWS == 0 && k % SUPER == 0, "q4k_pack: N must be a multiple of 16 and K of 256");
  TORCH_CHECK(dm.scalar_type() == at::kHalf && dm.is_contiguous() && dm.numel() == n * supers * 2,
              "q4k_pack: dm must be contiguous float16 [N, K/256, 2]");
  TORCH_CHECK(scm.scalar_type() == at::kByte && scm.is_contiguous() && scm.numel() == n * groups * 2,
              "q4k_pack: scm must be contiguous uint8 [N, K/32, 2]");
  constexpr int64_t BYTES = 8 * 256 + 64 + 8 * 32;  // vnni.cpp's Q4K_BLOCK
  at::Tensor out = at::empty({n / ROWS * supers * BYTES}, values.options());
  const uint8_t* v = values.data_ptr<uint8_t>();
  const uint16_t* h = reinterpret_cast<const uint16_t*>(dm.data_ptr<at::Half>());
  const uint8_t* sm = scm.data_ptr<uint8_t>();
  uint8_t* o = out.data_ptr<uint8_t>();
  at::parallel_for(0, n / ROWS, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t s = 0; s < supers; ++s) {
        uint8_t* block = o + (b * supers + s) * BYTES;
        uint16_t* halves = reinterpret_cast<uint16_t*>(block + 8 * 256);
        uint8_t* bytes = block + 8 * 256 + 64;
        for (int64_t r = 0; r < ROWS; ++r) {
          const int64_t row = b * ROWS + r;
          halves[r] = h[(row * supers + s) * 2];
          halves[ROWS + r] = h[(row * supers + s) * 2 + 1];
          for (int64_t j = 0; j < 8; ++j) {
            const int64_t g = s * 8 + j;
            nibble_words(v, row, k, g, r, reinterpret_cast<uint32_t*>(block + j * 256));
            bytes[j * 32 + r] = sm[(row * groups + g) * 2];
            bytes[j * 32 + ROWS + r] = sm[(row * groups + g) * 2 + 1];
          }
        }
      }
  });
  return out;
}

// q4_0_mm's layout (vnni.cpp's Q4_0_BLOCK) from a Q4_0 tensor's portable nibbles and float16 d
// [N, K/32]: per block of 16 rows and group, int4_pack_pairs' words of nibbles, then the 16 d.
at::Tensor q4_0_pack(const at::Tensor& values, const at::Tensor& d) {
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kByte && values.is_contiguous(),
              "q4_0_pack: values must be contiguous uint8 [N, K/2]");
  const int64_t n = values.size(0), k = values.size(1) * 2, groups = k / GROUP;
  TORCH_CHECK(n % ROWS == 0 && k % GROUP == 0, "q4_0_pack: N must be a multiple of 16 and K of 32");
  TORCH_CHECK(d.scalar_type() == at::kHalf && d.is_contiguous() && d.numel() == n * groups,
              "q4_0_pack: d must be contiguous float16 [N, K/32]");
  constexpr int64_t BYTES = 256 + 32;  // vnni.cpp's Q4_0_BLOCK
  at::Tensor out = at::empty({n / ROWS * groups * BYTES}, values.options());
  const uint8_t* v = values.data_ptr<uint8_t>();
  const uint16_t* h = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  uint8_t* o = out.data_ptr<uint8_t>();
  at::parallel_for(0, n / ROWS, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* block = o + (b * groups + g) * BYTES;
        uint16_t* halves = reinterpret_cast<uint16_t*>(block + 256);
        for (int64_t r = 0; r < ROWS; ++r) {
          nibble_words(v, b * ROWS + r, k, g, r, reinterpret_cast<uint32_t*>(block));
          halves[r] = h[(b * ROWS + r) * groups + g];
        }
      }
  });
  return out;
}

at::Tensor int8_pack(const at::Tensor& values) {
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kChar && values.is_contiguous(),
              "int8_pack: values must be contiguous int8 [N, K]");
  const int64_t n = values.size(0), k = values.size(1);
  TORCH_CHECK(n % ROWS == 0 && k % 4 == 0, "int8_pack: N must be a multiple of 16 and K of 4");
  at::Tensor out = at::empty({n / ROWS, k / 4, ROWS, 4}, values.options().dtype(at::kByte));
  const uint8_t* v = reinterpret_cast<const uint8_t*>(values.data_ptr<int8_t>());
  uint32_t* o = reinterpret_cast<uint32_t*>(out.data_ptr<uint8_t>());
  at::parallel_for(0, n / ROWS, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t r = 0; r < ROWS; ++r)
        for (int64_t c = 0; c < k / 4; ++c) {  // 4 values of a row: a word, each value plus 128
          uint32_t w;
          std::memcpy(&w, v + (b * ROWS + r) * k + 4 * c, 4);
          o[(b * (k / 4) + c) * ROWS + r] = w ^ 0x80808080u;
        }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmpipe, m) {
  m.def("gguf_int4(Tensor blocks, Tensor order, str kind) -> (Tensor, Tensor, Tensor)");
  m.def("gguf_int8(Tensor blocks, Tensor order, str kind) -> (Tensor, Tensor)");
  m.def("int4_pack_pairs(Tensor values, Tensor scales, Tensor zeros) -> Tensor");
  m.def("int8_pack(Tensor values) -> Tensor");
  m.def("gguf_q4k(Tensor blocks, Tensor order) -> (Tensor, Tensor, Tensor)");
  m.def("q4k_pack(Tensor values, Tensor dm, Tensor scm) -> Tensor");
  m.def("q4_0_pack(Tensor values, Tensor d) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmpipe, CPU, m) {
  m.impl("gguf_int4", &gguf_int4);
  m.impl("gguf_int8", &gguf_int8);
  m.impl("int4_pack_pairs", &int4_pack_pairs);
  m.impl("int8_pack", &int8_pack);
  m.impl("gguf_q4k", &gguf_q4k);
  m.impl("q4k_pack", &q4k_pack);
  m.impl("q4_0_pack", &q4_0_pack);
}
