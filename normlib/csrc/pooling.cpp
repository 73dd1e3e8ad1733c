// Fused CPU kernel of the CNN's 2 x 2 max pooling (normlib.models.MaxPool2): exactly
// F.max_pool2d(x, 2), values and gradients, in SIMD lanes without branches (see
// max_pool2_forward_loops below for why torch's own CPU kernel is slow for this layout).
// Compiled with normlib/csrc/norms.cpp into one extension by normlib/kernels.py, whose module
// (in norms.cpp) adds these functions with bind_pooling.
#include <torch/extension.h>

#include "common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using normlib::check_input;

// 2 x 2 max pooling with stride 2 on x (P, H, W), P = N*C planes, as torch's F.max_pool2d(x, 2):
// per window the largest value, the first one in row-major order on ties, a NaN wherever one
// occurs (torch's rule while scanning a window: take v when v > max or v is NaN); odd trailing rows
// and columns are dropped. pos keeps the winner's place in its window (0..3) for the backward.
// torch's CPU kernel for this layout compares one window at a time with branches, which the
// random winners mispredict: about 8 ms for a (128, 16, 28, 28) map on one core, a quarter of a
// CNN training step. Here W windows at a time, in SIMD lanes (GCC vector extensions, which compile
// to the CPU's vector instructions), without branches; a row's last, partial group of windows
// is done as the group ending at the row's end, recomputing a few windows to the same values.

// W lanes of T and the integer lanes of the same width
template <typename T, int W>
struct Lanes {
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T V __attribute__((vector_size(W * sizeof(T))));
  typedef I M __attribute__((vector_size(W * sizeof(T))));
};

// Scanning step: v (at place t) replaces the running maximum m (at place k) if larger or NaN.
template <typename T>
inline void max_pool2_pick(T& m, uint8_t& k, T v, uint8_t t) {
  const bool take = (v > m) | (v != v);
  m = take ? v : m;
  k = take ? t : k;
}

// Windows j .. j+W-1 of the row pair r0, r1 (pointers at the group's first column).
template <typename T, int W>
inline void max_pool2_forward_lanes(const T* r0, const T* r1, T* out, uint8_t* at) {
  using V = typename Lanes<T, W>::V;
  using M = typename Lanes<T, W>::M;
  V lo0, hi0, lo1, hi1;
  std::memcpy(&lo0, r0, sizeof(V));
  std::memcpy(&hi0, r0 + W, sizeof(V));
  std::memcpy(&lo1, r1, sizeof(V));
  std::memcpy(&hi1, r1 + W, sizeof(V));
  M even, odd;
  for (int t = 0; t < W; ++t) {
    even[t] = 2 * t;
    odd[t] = 2 * t + 1;
  }
  const V a = __builtin_shuffle(lo0, hi0, even), b = __builtin_shuffle(lo0, hi0, odd);  // top-left, top-right
  const V c = __builtin_shuffle(lo1, hi1, even), d = __builtin_shuffle(lo1, hi1, odd);  // bottom-left, -right
  // the scan a, b, c, d as a tree, each row's pair then the two rows: the same winner (ties go to
  // the earlier place, NaN to the later one)
  const M tb = (b > a) | (b != b), td = (d > c) | (d != d);
  const V m0 = tb ? b : a, m1 = td ? d : c;
  const M k0 = tb & 1, k1 = 2 + (td & 1);
  const M t1 = (m1 > m0) | (m1 != m1);
  const V m = t1 ? m1 : m0;
  const M k = t1 ? k1 : k0;
  std::memcpy(out, &m, sizeof(V));
  for (int t = 0; t < W; ++t) at[t] = static_cast<uint8_t>(k[t]);
}

// The backward of the same W windows: each window's gradient to its winner, 0 to the other three.
template <typename T, int W>
inline void max_pool2_backward_lanes(const T* g_, const uint8_t* at, T* r0, T* r1) {
  using V = typename Lanes<T, W>::V;
  using M = typename Lanes<T, W>::M;
  V g;
  std::memcpy(&g, g_, sizeof(V));
  M k, lo, hi;
  for (int t = 0; t < W; ++t) {
    k[t] = at[t];
    lo[t] = t / 2 + (t % 2) * W;  // interleave two vectors: first halves, then second halves
    hi[t] = W / 2 + t / 2 + (t % 2) * W;
  }
  const V zero = {};
  const V e0 = k == 0 ? g : zero, o0 = k == 1 ? g : zero, e1 = k == 2 ? g : zero, o1 = k == 3 ? g : zero;
  const V a0 = __builtin_shuffle(e0, o0, lo), b0 = __builtin_shuffle(e0, o0, hi);
  const V a1 = __builtin_shuffle(e1, o1, lo), b1 = __builtin_shuffle(e1, o1, hi);
  std::memcpy(r0, &a0, sizeof(V));
  std::memcpy(r0 + W, &b0, sizeof(V));
  std::memcpy(r1, &a1, sizeof(V));
  std::memcpy(r1 + W, &b1, sizeof(V));
}

// f(j) for the groups of W windows of a row of ow (>= W) windows, j the group's first window; the
// last group ends at the row's end, overlapping the one before it (those windows get the same values).
template <int W, typename F>
inline void max_pool2_groups(int64_t ow, F f) {
  for (int64_t j = 0;; j += W) {
    j = std::min(j, ow - W);
    f(j);
    if (j + W >= ow) break;
  }
}

template <typename T, int W>
void max_pool2_forward_row(const T* r0, const T* r1, T* out, uint8_t* at, int64_t ow) {
  max_pool2_groups<W>(ow, [&](int64_t j) { max_pool2_forward_lanes<T, W>(r0 + 2 * j, r1 + 2 * j, out + j, at + j); });
}

template <typename T, int W>
void max_pool2_backward_row(const T* g, const uint8_t* at, T* r0, T* r1, int64_t ow) {
  max_pool2_groups<W>(ow, [&](int64_t j) { max_pool2_backward_lanes<T, W>(g + j, at + j, r0 + 2 * j, r1 + 2 * j); });
}

template <typename T>
void max_pool2_forward_loops(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ pos, int64_t planes,
                             int64_t h, int64_t w) {
  constexpr int W = 32 / sizeof(T);  // 256-bit vectors; W/2 lanes for rows of fewer windows
  const int64_t oh = h / 2, ow = w / 2;
  at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(h * w, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t i = 0; i < oh; ++i) {
        const T* r0 = x + (p * h + 2 * i) * w;
        const T* r1 = r0 + w;
        T* out = y + (p * oh + i) * ow;
        uint8_t* at = pos + (p * oh + i) * ow;
        if (ow >= W) {
          max_pool2_forward_row<T, W>(r0, r1, out, at, ow);
        } else if (ow >= W / 2) {
          max_pool2_forward_row<T, W / 2>(r0, r1, out, at, ow);
        } else {
          for (int64_t j = 0; j < ow; ++j) {  // rows of a few windows: the scan itself
            T m0 = r0[2 * j], m1 = r1[2 * j];
            uint8_t k0 = 0, k1 = 2;
            max_pool2_pick(m0, k0, r0[2 * j + 1], 1);
            max_pool2_pick(m1, k1, r1[2 * j + 1], 3);
            max_pool2_pick(m0, k0, m1, k1);
            out[j] = m0;
            at[j] = k0;
          }
        }
      }
  });
}

// dx written in full: the winners' gradients, zeros elsewhere (odd trailing rows and columns too).
template <typename T>
void max_pool2_backward_loops(const T* __restrict__ dy, const uint8_t* __restrict__ pos, T* __restrict__ dx,
                              int64_t planes, int64_t h, int64_t w) {
  constexpr int W = 32 / sizeof(T);
  const int64_t oh = h / 2, ow = w / 2;
  at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(h * w, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t i = 0; i < oh; ++i) {
        T* r0 = dx + (p * h + 2 * i) * w;
        T* r1 = r0 + w;
        const T* g = dy + (p * oh + i) * ow;
        const uint8_t* at = pos + (p * oh + i) * ow;
        if (ow >= W) {
          max_pool2_backward_row<T, W>(g, at, r0, r1, ow);
        } else if (ow >= W / 2) {
          max_pool2_backward_row<T, W / 2>(g, at, r0, r1, ow);
        } else {
          for (int64_t j = 0; j < ow; ++j) {
            const uint8_t k = at[j];
            r0[2 * j] = k == 0 ? g[j] : T(0);
            r0[2 * j + 1] = k == 1 ? g[j] : T(0);
            r1[2 * j] = k == 2 ? g[j] : T(0);
            r1[2 * j + 1] = k == 3 ? g[j] : T(0);
          }
        }
        if (w % 2) r0[w - 1] = r1[w - 1] = T(0);
      }
      if (h % 2) std::fill(dx + (p * h + h - 1) * w, dx + (p + 1) * h * w, T(0));
    }
  });
}

// x: (N, C, H, W) with H, W >= 2. Returns y (N, C, H/2, W/2) and pos (uint8, like y): the winner's
// place in each window, for the backward.
std::vector<Tensor> max_pool2_forward(const Tensor& x_) {
  check_input(x_, "x");
  TORCH_CHECK(x_.dim() == 4 && x_.size(2) >= 2 && x_.size(3) >= 2,
              "max_pool2_forward: x must be (N, C, H, W) with H, W >= 2, got ", x_.sizes());
  const Tensor x = x_.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  Tensor y = torch::empty({n, c, h / 2, w / 2}, x.options());
  Tensor pos = torch::empty({n, c, h / 2, w / 2}, x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2_forward", [&] {
    max_pool2_forward_loops(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), pos.data_ptr<uint8_t>(), n * c, h, w);
  });
  return {y, pos};
}

// dy, pos: (N, C, H/2, W/2); h, w: the input's spatial size. Returns dx (N, C, H, W).
Tensor max_pool2_backward(const Tensor& dy_, const Tensor& pos_, int64_t h, int64_t w) {
  check_input(dy_, "dy");
  TORCH_CHECK(dy_.dim() == 4 && pos_.sizes() == dy_.sizes() && pos_.scalar_type() == at::kByte &&
              dy_.size(2) == h / 2 && dy_.size(3) == w / 2,
              "max_pool2_backward: dy and pos must be (N, C, H/2, W/2), pos uint8");
  const Tensor dy = dy_.contiguous(), pos = pos_.contiguous();
  const int64_t n = dy.size(0), c = dy.size(1);
  Tensor dx = torch::empty({n, c, h, w}, dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "max_pool2_backward", [&] {
    max_pool2_backward_loops(dy.data_ptr<scalar_t>(), pos.data_ptr<uint8_t>(), dx.data_ptr<scalar_t>(), n * c, h, w);
  });
  return dx;
}

// ---------------------------------------------------------------------------------------------
// autograd: the pair as one differentiable op (first derivatives)

struct MaxPool2Function : public torch::autograd::Function<MaxPool2Function> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    auto out = max_pool2_forward(x);  // y, pos
    ctx->save_for_backward({out[1]});
    ctx->saved_data["h"] = x.size(2);
    ctx->saved_data["w"] = x.size(3);
    return out[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    return {max_pool2_backward(grads[0], s[0], ctx->saved_data["h"].toInt(), ctx->saved_data["w"].toInt())};
  }
};

Tensor max_pool2(const Tensor& x) { return MaxPool2Function::apply(x); }

}  // namespace

void bind_pooling(pybind11::module_& m) {
  m.def("max_pool2_forward", &max_pool2_forward, "x (N, C, H, W) -> y (N, C, H/2, W/2), pos (uint8 winner places)");
  m.def("max_pool2_backward", &max_pool2_backward, "dy, pos, H, W -> dx");
  m.def("max_pool2", &max_pool2, "2 x 2 max pooling, stride 2, as F.max_pool2d(x, 2)");
}
