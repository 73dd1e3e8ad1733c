// Fused CPU kernel of the CNN's first convolution (normlib.models.FirstConv): one input channel,
// 3 x 3, padding 1, stride 1, as F.conv2d(x, w, b, padding=1), values and the gradients of w and b
// (the input is the data: no gradient flows into it). Compiled with normlib/csrc/norms.cpp into one
// extension by normlib/kernels.py, whose module (in norms.cpp) adds these functions with bind_conv.
//
// Why: oneDNN's kernel for a single input channel works on 8 output channels with a reduction of 9,
// far from what it is tuned for (make benchmark's cnn_first_conv measures a CNN training step with
// and without this kernel, side by side). Here each image is
// padded once into a small buffer and every output row is 9 multiply-adds over a row of pixels, which
// the compiler turns into SIMD lanes; the weight gradient is 9 dot products per image and channel over
// the padded layout (conv_backward_loops), with each image's partial sums reduced in a fixed order,
// whatever the number of threads, and -ffp-contract=off keeps every multiply and add as written.
#include <torch/extension.h>

#include "common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using normlib::check_input;

// image (H, W) into buf ((H + 2), (W + 2)) with a border of zeros
template <typename T>
inline void pad_image(const T* img, T* buf, int64_t h, int64_t w) {
  const int64_t pw = w + 2;
  std::fill(buf, buf + pw, T(0));
  std::fill(buf + (h + 1) * pw, buf + (h + 2) * pw, T(0));
  for (int64_t y = 0; y < h; ++y) {
    T* row = buf + (y + 1) * pw;
    row[0] = row[w + 1] = T(0);
    std::copy(img + y * w, img + (y + 1) * w, row + 1);
  }
}

// y[n, o] = b[o] + sum_k w[o, k] * x[n] shifted by k, for images n0 .. n1 - 1
template <typename T>
void conv_forward_loops(const T* __restrict__ x, const T* __restrict__ wt, const T* __restrict__ b,
                        T* __restrict__ y, int64_t n, int64_t o, int64_t h, int64_t w) {
  const int64_t pw = w + 2;
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> buf((h + 2) * pw);
    for (int64_t i = n0; i < n1; ++i) {
      pad_image(x + i * h * w, buf.data(), h, w);
      for (int64_t c = 0; c < o; ++c) {
        const T* k = wt + c * 9;
        const T k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3], k4 = k[4], k5 = k[5], k6 = k[6], k7 = k[7], k8 = k[8];
        const T bias = b[c];
        for (int64_t r = 0; r < h; ++r) {
          const T* r0 = buf.data() + r * pw;
          const T* r1 = r0 + pw;
          const T* r2 = r1 + pw;
          T* out = y + ((i * o + c) * h + r) * w;
          for (int64_t j = 0; j < w; ++j)
            out[j] = bias + k0 * r0[j] + k1 * r0[j + 1] + k2 * r0[j + 2] + k3 * r1[j] + k4 * r1[j + 1] +
                     k5 * r1[j + 2] + k6 * r2[j] + k7 * r2[j + 1] + k8 * r2[j + 2];
        }
      }
    }
  });
}

// per image: part[n, o, 0..8] = sum over pixels of dy[n, o] * x[n] shifted by k, part[n, o, 9] = sum dy[n, o].
// Flat in the padded layout: the image padded by one zero all round, (H + 2) rows of PW = W + 2, and dy[n, o]
// laid out with the same row stride (its two extra columns zero). Then the shift k = (ky, kx) is one offset,
// ky * PW + kx, and each of the 9 sums is a dot product of two contiguous runs of about H * PW values, done in
// SIMD lanes of 64 bytes (GCC vector extensions) with one vector accumulator per k. The lanes are summed in a
// fixed order at the end: the result does not depend on the number of threads.
template <typename T>
void conv_backward_loops(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ part, int64_t n,
                         int64_t o, int64_t h, int64_t w) {
  constexpr int L = 64 / sizeof(T);
  typedef T V __attribute__((vector_size(64)));
  const int64_t pw = w + 2, len = h * pw;
  const int64_t chunks = (len + L - 1) / L, span = chunks * L;
  const int64_t xlen = std::max<int64_t>((h + 2) * pw, span + 2 * pw + 2);  // reads reach span - 1 + 2 PW + 2
  at::parallel_for(0, n, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> xp(xlen, T(0)), d(span, T(0));
    for (int64_t i = n0; i < n1; ++i) {
      pad_image(x + i * h * w, xp.data(), h, w);
      for (int64_t c = 0; c < o; ++c) {
        const T* g = dy + (i * o + c) * h * w;
        for (int64_t r = 0; r < h; ++r) std::copy(g + r * w, g + (r + 1) * w, d.data() + r * pw);
        V acc[10];
        std::memset(acc, 0, sizeof(acc));
        for (int64_t q = 0; q < span; q += L) {
          V dv;
          std::memcpy(&dv, d.data() + q, sizeof(V));
          acc[9] += dv;
          for (int k = 0; k < 9; ++k) {
            V xv;
            std::memcpy(&xv, xp.data() + q + (k / 3) * pw + k % 3, sizeof(V));
            acc[k] += dv * xv;
          }
        }
        T* p = part + (i * o + c) * 10;
        for (int k = 0; k < 10; ++k) {
          T s = 0;
          for (int t = 0; t < L; ++t) s += acc[k][t];
          p[k] = s;
        }
      }
    }
  });
}

void check_shapes(const Tensor& x, const Tensor& wt, const Tensor& b) {
  check_input(x, "x");
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 1, "first_conv: x must be (N, 1, H, W), got ", x.sizes());
  TORCH_CHECK(wt.dim() == 4 && wt.size(1) == 1 && wt.size(2) == 3 && wt.size(3) == 3,
              "first_conv: w must be (O, 1, 3, 3), got ", wt.sizes());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == wt.size(0), "first_conv: b must be (O,), got ", b.sizes());
  TORCH_CHECK(wt.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type(),
              "first_conv: x, w and b must have one dtype");
}

Tensor first_conv_forward(const Tensor& x_, const Tensor& w_, const Tensor& b_) {
  check_shapes(x_, w_, b_);
  const Tensor x = x_.contiguous(), wt = w_.contiguous(), b = b_.contiguous();
  const int64_t n = x.size(0), o = wt.size(0), h = x.size(2), w = x.size(3);
  Tensor y = torch::empty({n, o, h, w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "first_conv_forward", [&] {
    conv_forward_loops(x.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                       y.data_ptr<scalar_t>(), n, o, h, w);
  });
  return y;
}

// dy (N, O, H, W), x (N, 1, H, W) -> dw (O, 1, 3, 3), db (O): each image's partial sums, then the
// sum over images in image order (in float64, so the result does not depend on the batch's order
// of reduction beyond that)
std::vector<Tensor> first_conv_backward(const Tensor& dy_, const Tensor& x_) {
  check_input(dy_, "dy");
  check_input(x_, "x");
  const Tensor dy = dy_.contiguous(), x = x_.contiguous();
  const int64_t n = x.size(0), o = dy.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(dy.dim() == 4 && dy.size(0) == n && dy.size(2) == h && dy.size(3) == w,
              "first_conv_backward: dy must be (N, O, H, W) like the forward's output");
  Tensor part = torch::empty({n, o, 10}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "first_conv_backward", [&] {
    conv_backward_loops(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), part.data_ptr<scalar_t>(), n, o, h, w);
  });
  const Tensor total = part.to(at::kDouble).sum(0).to(x.scalar_type());  // (O, 10)
  return {total.narrow(1, 0, 9).reshape({o, 1, 3, 3}).contiguous(), total.select(1, 9).contiguous()};
}

struct FirstConvFunction : public torch::autograd::Function<FirstConvFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const Tensor& b) {
    TORCH_CHECK(!x.requires_grad(), "first_conv: x must not require a gradient (the kernel computes dw and db only)");
    ctx->save_for_backward({x});
    return first_conv_forward(x, w, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto g = first_conv_backward(grads[0], s[0]);
    return {Tensor(), g[0], g[1]};
  }
};

Tensor first_conv(const Tensor& x, const Tensor& w, const Tensor& b) { return FirstConvFunction::apply(x, w, b); }

}  // namespace

void bind_conv(pybind11::module_& m) {
  m.def("first_conv_forward", &first_conv_forward, "x (N, 1, H, W), w (O, 1, 3, 3), b (O) -> y (N, O, H, W)");
  m.def("first_conv_backward", &first_conv_backward, "dy, x -> dw, db");
  m.def("first_conv", &first_conv, "3 x 3 convolution of one input channel, padding 1, as F.conv2d(x, w, b, padding=1)");
}
