// Fused CPU kernels for normlib's from-scratch batch norm, layer norm and group norm: every speed
// trick of the from-scratch layers lives here (the CNN's max pooling is in csrc/pooling.cpp).
//
// The same formulas as the reference pairs in normlib/norms.py (batch_norm_forward/backward,
// Ioffe & Szegedy 2015, Alg. 1; layer_norm_forward/backward, Ba et al. 2016, eq. 4;
// group_norm_forward/backward, Wu & He 2018, eq. 1-3), written as
// loops over the data so that each pass reads every value once: the PyTorch-op pairs take 10 to
// 20 tensor ops per layer call, each a pass over memory plus dispatch overhead, and a Python
// autograd.Function around them costs more than torch's whole built-in layer at MLP shapes.
// Here a C++ autograd::Function wraps each pair, so a layer call is one step into C++.
//
// Layouts: batch norm reads x as (N, C, L) with L = H*W (1 after a Linear); layer norm as (N, K),
// one row of K values per example; group norm as (N*G, C/G*L), one row per example and group.
// Statistics take two passes, the mean, then the centred squares, as the reference pairs do; sums
// run in 16 vector lanes of the input's type, added into doubles every 512 elements, and the mean
// and inverse standard deviation are kept in double. Work is split across threads by channel
// (batch norm), by fixed blocks of rows (layer norm) or by row (group norm), and partial sums are
// combined in a fixed order, so the result does not depend on the number of threads.
// Batch norm returns the batch mean and biased variance; the module updates its running statistics
// from them in Python, for both implementations. Compiled on first use, with csrc/pooling.cpp into one
// extension, by normlib/kernels.py (torch.utils.cpp_extension.load).
#include <torch/extension.h>

#include "common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t LANES = 16;      // independent partial sums: the compiler vectorizes them
constexpr int64_t FLUSH = 512;     // elements summed in the lanes before they are added into a double
constexpr int64_t ROW_BLOCK = 64;  // layer norm: rows per block of the column sums (fixed: deterministic)

// Sums of f(i) over i in [0, n), f giving S terms for element i (f(i, terms) fills terms[0..S)):
// each sum is computed in LANES partial sums of type A, the input's own (float lanes run twice as
// wide as double ones), added pairwise into doubles every FLUSH elements, so a float partial sum
// never spans more than FLUSH / LANES values. The order is fixed: the result is deterministic.
template <typename A, int S, typename F>
inline void lane_sums(int64_t n, F f, double (&out)[S]) {
  for (int s = 0; s < S; ++s) out[s] = 0.0;
  for (int64_t b = 0; b < n; b += FLUSH) {
    const int64_t e = std::min(n, b + FLUSH);
    A acc[S][LANES] = {};
    int64_t i = b;
    for (; i + LANES <= e; i += LANES)
      for (int64_t j = 0; j < LANES; ++j) {
        A terms[S];
        f(i + j, terms);
        for (int s = 0; s < S; ++s) acc[s][j] += terms[s];
      }
    for (int64_t j = 0; i < e; ++i, ++j) {
      A terms[S];
      f(i, terms);
      for (int s = 0; s < S; ++s) acc[s][j] += terms[s];
    }
    for (int s = 0; s < S; ++s) {
      double t[LANES];
      for (int64_t j = 0; j < LANES; ++j) t[j] = acc[s][j];
      for (int64_t w = LANES / 2; w > 0; w /= 2)  // pairwise
        for (int64_t j = 0; j < w; ++j) t[j] += t[j + w];
      out[s] += t[0];
    }
  }
}

// One sum: of f(i) for i in [0, n).
template <typename A, typename F>
inline double lane_sum(int64_t n, F f) {
  double out[1];
  lane_sums<A, 1>(n, [&](int64_t i, A (&terms)[1]) { terms[0] = f(i); }, out);
  return out[0];
}

using normlib::check_input;

// dy, x and gamma of one type; the statistics saved by the forward in float64.
void check_backward_inputs(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                           const Tensor& inv_std) {
  check_input(x, "x");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type() && gamma.scalar_type() == x.scalar_type(),
              "normlib kernels: dy, x and gamma must have one dtype (got ", dy.scalar_type(), ", ", x.scalar_type(),
              ", ", gamma.scalar_type(), ")");
  TORCH_CHECK(mean.scalar_type() == at::kDouble && inv_std.scalar_type() == at::kDouble,
              "normlib kernels: mean and inv_std must be float64, as the forward returns them");
}

// ---------------------------------------------------------------------------------------------
// the loops, on raw pointers (restrict: outputs never alias inputs, so the compiler vectorizes)

// Batch norm forward on x (N, C, L): per channel the mean and biased variance over (N, L), then
// y = (x - mean) * gamma * inv_std + beta.
template <typename T>
void bn_forward_loops(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                      T* __restrict__ y, double* __restrict__ mean, double* __restrict__ var,
                      double* __restrict__ inv_std, int64_t n, int64_t c, int64_t l, double eps) {
  const double m = static_cast<double>(n * l);  // values per channel
  if (l == 1) {  // after a Linear: rows of C channels; the inner loops run along the channels
    at::parallel_for(0, c, 64, [&](int64_t c0, int64_t c1) {
      const int64_t w = c1 - c0;
      std::vector<double> s(w, 0.0), q(w, 0.0);
      std::vector<T> mu(w), a(w);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < w; ++k) s[k] += x[i * c + c0 + k];
      for (int64_t k = 0; k < w; ++k) mu[k] = static_cast<T>(s[k] / m);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < w; ++k) {
          const T d = x[i * c + c0 + k] - mu[k];
          q[k] += d * d;
        }
      for (int64_t k = 0; k < w; ++k) {
        mean[c0 + k] = s[k] / m;
        var[c0 + k] = q[k] / m;
        inv_std[c0 + k] = 1.0 / std::sqrt(var[c0 + k] + eps);
        a[k] = static_cast<T>(gamma[c0 + k] * inv_std[c0 + k]);
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < w; ++k) y[i * c + c0 + k] = (x[i * c + c0 + k] - mu[k]) * a[k] + beta[c0 + k];
    });
    return;
  }
  at::parallel_for(0, c, 1, [&](int64_t c0, int64_t c1) {  // conv maps: each (example, channel) a row of L
    for (int64_t k = c0; k < c1; ++k) {
      double s = 0.0, q = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + (i * c + k) * l;
        s += lane_sum<T>(l, [&](int64_t j) { return row[j]; });
      }
      const T mu = static_cast<T>(s / m);
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + (i * c + k) * l;
        q += lane_sum<T>(l, [&](int64_t j) { const T d = row[j] - mu; return d * d; });
      }
      mean[k] = s / m;
      var[k] = q / m;
      inv_std[k] = 1.0 / std::sqrt(var[k] + eps);
      const T a = static_cast<T>(gamma[k] * inv_std[k]), b = beta[k];
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + (i * c + k) * l;
        T* out = y + (i * c + k) * l;
        for (int64_t j = 0; j < l; ++j) out[j] = (row[j] - mu) * a + b;
      }
    }
  });
}

// Batch norm backward: per channel dbeta = sum(dy), dgamma = sum(dy * x_hat) and, with a = gamma * inv_std,
// dx = a * (dy - dbeta/M - (x - mean) * inv_std^2 * sum(dy * (x - mean))/M)   (M = N*L).
template <typename T>
void bn_backward_loops(const T* __restrict__ dy, const T* __restrict__ x, const double* __restrict__ mean,
                       const double* __restrict__ inv_std, const T* __restrict__ gamma, T* __restrict__ dx,
                       T* __restrict__ dgamma, T* __restrict__ dbeta, int64_t n, int64_t c, int64_t l) {
  const double m = static_cast<double>(n * l);
  if (l == 1) {
    at::parallel_for(0, c, 64, [&](int64_t c0, int64_t c1) {
      const int64_t w = c1 - c0;
      std::vector<double> sdy(w, 0.0), sdx(w, 0.0);
      std::vector<T> mu(w), a(w), k1(w), k2(w);
      for (int64_t k = 0; k < w; ++k) mu[k] = static_cast<T>(mean[c0 + k]);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < w; ++k) {
          const T g = dy[i * c + c0 + k];
          sdy[k] += g;
          sdx[k] += g * (x[i * c + c0 + k] - mu[k]);
        }
      for (int64_t k = 0; k < w; ++k) {
        const double inv = inv_std[c0 + k];
        dbeta[c0 + k] = static_cast<T>(sdy[k]);
        dgamma[c0 + k] = static_cast<T>(sdx[k] * inv);
        a[k] = static_cast<T>(gamma[c0 + k] * inv);
        k1[k] = static_cast<T>(sdy[k] / m);
        k2[k] = static_cast<T>(sdx[k] * inv * inv / m);
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < w; ++k) {
          const int64_t t = i * c + c0 + k;
          dx[t] = a[k] * (dy[t] - k1[k] - (x[t] - mu[k]) * k2[k]);
        }
    });
    return;
  }
  at::parallel_for(0, c, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t k = c0; k < c1; ++k) {
      const T mu = static_cast<T>(mean[k]);
      double sdy = 0.0, sdx = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const T *g = dy + (i * c + k) * l, *row = x + (i * c + k) * l;
        double sums[2];  // sum(dy), sum(dy * (x - mean)) in one pass
        lane_sums<T, 2>(l, [&](int64_t j, T (&terms)[2]) {
          terms[0] = g[j];
          terms[1] = g[j] * (row[j] - mu);
        }, sums);
        sdy += sums[0];
        sdx += sums[1];
      }
      const double inv = inv_std[k];
      dbeta[k] = static_cast<T>(sdy);
      dgamma[k] = static_cast<T>(sdx * inv);
      const T a = static_cast<T>(gamma[k] * inv), k1 = static_cast<T>(sdy / m), k2 = static_cast<T>(sdx * inv * inv / m);
      for (int64_t i = 0; i < n; ++i) {
        const T *g = dy + (i * c + k) * l, *row = x + (i * c + k) * l;
        T* out = dx + (i * c + k) * l;
        for (int64_t j = 0; j < l; ++j) out[j] = a * (g[j] - k1 - (row[j] - mu) * k2);
      }
    }
  });
}

// Layer norm forward on x (R, K): per row the mean and biased variance over K, then
// y = (x - mean) * inv_std * gamma + beta.
template <typename T>
void ln_forward_loops(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                      T* __restrict__ y, double* __restrict__ mean, double* __restrict__ inv_std, int64_t r,
                      int64_t k, double eps) {
  at::parallel_for(0, r, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = x + i * k;
      const double mu = lane_sum<T>(k, [&](int64_t j) { return row[j]; }) / k;
      const T mu_t = static_cast<T>(mu);
      const double var = lane_sum<T>(k, [&](int64_t j) { const T d = row[j] - mu_t; return d * d; }) / k;
      mean[i] = mu;
      inv_std[i] = 1.0 / std::sqrt(var + eps);
      const T inv = static_cast<T>(inv_std[i]);
      T* out = y + i * k;
      for (int64_t j = 0; j < k; ++j) out[j] = (row[j] - mu_t) * inv * gamma[j] + beta[j];
    }
  });
}

// One row of the layer-norm backward: dx and the row's terms of the column sums, added to sg, sb.
template <typename T>
inline void ln_backward_row(const T* __restrict__ g, const T* __restrict__ row, const T* __restrict__ gamma,
                            T* __restrict__ out, T* __restrict__ sg, T* __restrict__ sb, double mean, double inv_std,
                            int64_t k) {
  const T mu = static_cast<T>(mean), inv = static_cast<T>(inv_std);
  double sums[2];  // sum(dx_hat), sum(dx_hat * (x - mean)) in one pass
  lane_sums<T, 2>(k, [&](int64_t j, T (&terms)[2]) {
    const T d = g[j] * gamma[j];
    terms[0] = d;
    terms[1] = d * (row[j] - mu);
  }, sums);
  const T k1 = static_cast<T>(sums[0] / k), k2 = static_cast<T>(sums[1] * inv_std / k);
  for (int64_t j = 0; j < k; ++j) {
    const T xh = (row[j] - mu) * inv;
    out[j] = inv * (g[j] * gamma[j] - k1 - xh * k2);
    sg[j] += g[j] * xh;
    sb[j] += g[j];
  }
}

// Layer norm backward: per row, with dx_hat = gamma * dy,
// dx = inv_std * (dx_hat - sum(dx_hat)/K - x_hat * sum(dx_hat * x_hat)/K); per column dgamma = sum over
// rows of dy * x_hat and dbeta = sum of dy, in blocks of ROW_BLOCK rows whose partial sums are then
// added in order.
template <typename T>
void ln_backward_loops(const T* __restrict__ dy, const T* __restrict__ x, const double* __restrict__ mean,
                       const double* __restrict__ inv_std, const T* __restrict__ gamma, T* __restrict__ dx,
                       T* __restrict__ dgamma, T* __restrict__ dbeta, int64_t r, int64_t k) {
  const int64_t blocks = (r + ROW_BLOCK - 1) / ROW_BLOCK;
  std::vector<T> part_g(blocks * k, T(0)), part_b(blocks * k, T(0));  // column sums per block of rows
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i = b * ROW_BLOCK; i < std::min(r, (b + 1) * ROW_BLOCK); ++i)
        ln_backward_row(dy + i * k, x + i * k, gamma, dx + i * k, part_g.data() + b * k, part_b.data() + b * k,
                        mean[i], inv_std[i], k);
  });
  at::parallel_for(0, k, 1024, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double sg = 0.0, sb = 0.0;
      for (int64_t b = 0; b < blocks; ++b) {
        sg += part_g[b * k + j];
        sb += part_b[b * k + j];
      }
      dgamma[j] = static_cast<T>(sg);
      dbeta[j] = static_cast<T>(sb);
    }
  });
}

// Group norm forward on x (N, C, L), G groups of Cg = C/G channels: per (example, group), a contiguous
// row of Cg*L values, the mean and biased variance, then per channel y = x_hat * gamma[c] + beta[c].
template <typename T>
void gn_forward_loops(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                      T* __restrict__ y, double* __restrict__ mean, double* __restrict__ inv_std, int64_t n,
                      int64_t c, int64_t l, int64_t groups, double eps) {
  const int64_t cg = c / groups, k = cg * l;
  at::parallel_for(0, n * groups, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = x + r * k;
      const double mu = lane_sum<T>(k, [&](int64_t j) { return row[j]; }) / k;
      const T mu_t = static_cast<T>(mu);
      const double var = lane_sum<T>(k, [&](int64_t j) { const T d = row[j] - mu_t; return d * d; }) / k;
      mean[r] = mu;
      inv_std[r] = 1.0 / std::sqrt(var + eps);
      const T inv = static_cast<T>(inv_std[r]);
      for (int64_t q = 0; q < cg; ++q) {  // the group's channels
        const int64_t ch = (r % groups) * cg + q;
        const T a = inv * gamma[ch], b = beta[ch];
        const T* in = row + q * l;
        T* out = y + r * k + q * l;
        for (int64_t j = 0; j < l; ++j) out[j] = (in[j] - mu_t) * a + b;
      }
    }
  });
}

// Group norm backward: per (example, group) row, with dx_hat = gamma[c] * dy,
// dx = inv_std * (dx_hat - sum(dx_hat)/K - x_hat * sum(dx_hat * x_hat)/K)   (K = Cg*L);
// per channel dgamma = sum over (N, L) of dy * x_hat, dbeta = sum of dy, from per-(example, channel)
// sums added over the examples in order.
template <typename T>
void gn_backward_loops(const T* __restrict__ dy, const T* __restrict__ x, const double* __restrict__ mean,
                       const double* __restrict__ inv_std, const T* __restrict__ gamma, T* __restrict__ dx,
                       T* __restrict__ dgamma, T* __restrict__ dbeta, int64_t n, int64_t c, int64_t l,
                       int64_t groups) {
  const int64_t cg = c / groups, k = cg * l;
  std::vector<double> part_g(n * c), part_b(n * c);  // per (example, channel): sum(dy * x_hat), sum(dy)
  at::parallel_for(0, n * groups, std::max<int64_t>(1, 8192 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T mu = static_cast<T>(mean[r]), inv = static_cast<T>(inv_std[r]);
      const int64_t c0 = (r % groups) * cg, e = r / groups;
      double s1 = 0.0, s2 = 0.0;  // sum(dx_hat), sum(dx_hat * (x - mean)) over the row
      for (int64_t q = 0; q < cg; ++q) {
        const T *g = dy + r * k + q * l, *in = x + r * k + q * l;
        double sums[2] = {0.0, 0.0};
        if (l < 2 * LANES) {  // few values per channel (after a Linear, l = 1): a plain loop
          for (int64_t j = 0; j < l; ++j) {
            sums[0] += g[j];
            sums[1] += g[j] * (in[j] - mu);
          }
        } else {
          lane_sums<T, 2>(l, [&](int64_t j, T (&terms)[2]) {
            terms[0] = g[j];
            terms[1] = g[j] * (in[j] - mu);
          }, sums);
        }
        part_b[e * c + c0 + q] = sums[0];
        part_g[e * c + c0 + q] = sums[1] * inv_std[r];
        s1 += gamma[c0 + q] * sums[0];
        s2 += gamma[c0 + q] * sums[1];
      }
      const T k1 = static_cast<T>(s1 / k), k2 = static_cast<T>(s2 * inv_std[r] / k);
      for (int64_t q = 0; q < cg; ++q) {
        const T gq = gamma[c0 + q];
        const T *g = dy + r * k + q * l, *in = x + r * k + q * l;
        T* out = dx + r * k + q * l;
        for (int64_t j = 0; j < l; ++j) out[j] = inv * (g[j] * gq - k1 - (in[j] - mu) * inv * k2);
      }
    }
  });
  for (int64_t ch = 0; ch < c; ++ch) {
    double sg = 0.0, sb = 0.0;
    for (int64_t e = 0; e < n; ++e) {
      sg += part_g[e * c + ch];
      sb += part_b[e * c + ch];
    }
    dgamma[ch] = static_cast<T>(sg);
    dbeta[ch] = static_cast<T>(sb);
  }
}

// ---------------------------------------------------------------------------------------------
// the pairs on tensors of any shape: batch norm reads x (N, C, *S) as (N, C, L), layer norm
// x (N, *F) as (N, K); outputs keep the inputs' shapes (no views, so a layer call is a few ops)

// x: (N, C, *S); gamma, beta: C values. Returns y (like x) and, as float64 (C,) tensors, the batch
// mean, the biased variance and inv_std = 1/sqrt(var + eps).
std::vector<Tensor> batch_norm_forward(const Tensor& x_, const Tensor& gamma_, const Tensor& beta_, double eps) {
  check_input(x_, "x");
  TORCH_CHECK(x_.dim() >= 2, "batch_norm_forward: x must be (N, C, *S), got ", x_.sizes());
  const Tensor x = x_.contiguous(), gamma = gamma_.contiguous(), beta = beta_.contiguous();
  const int64_t n = x.size(0), c = x.size(1), l = n * c ? x.numel() / (n * c) : 0;
  TORCH_CHECK(gamma.numel() == c && beta.numel() == c, "batch_norm_forward: gamma and beta need ", c, " values");
  Tensor y = torch::empty_like(x);
  auto f64 = x.options().dtype(at::kDouble);
  Tensor mean = torch::empty({c}, f64), var = torch::empty({c}, f64), inv_std = torch::empty({c}, f64);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_forward", [&] {
    bn_forward_loops(x.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                     y.data_ptr<scalar_t>(), mean.data_ptr<double>(), var.data_ptr<double>(),
                     inv_std.data_ptr<double>(), n, c, l, eps);
  });
  return {y, mean, var, inv_std};
}

// dy, x: (N, C, *S); mean, inv_std: float64 (C,); gamma: C values. Returns dx (like x), dgamma, dbeta
// (like gamma).
std::vector<Tensor> batch_norm_backward(const Tensor& dy_, const Tensor& x_, const Tensor& mean_,
                                        const Tensor& inv_std_, const Tensor& gamma_) {
  TORCH_CHECK(dy_.sizes() == x_.sizes() && x_.dim() >= 2, "batch_norm_backward: dy and x must be (N, C, *S)");
  check_backward_inputs(dy_, x_, gamma_, mean_, inv_std_);
  const Tensor dy = dy_.contiguous(), x = x_.contiguous(), gamma = gamma_.contiguous();
  const Tensor mean = mean_.contiguous(), inv_std = inv_std_.contiguous();
  const int64_t n = x.size(0), c = x.size(1), l = n * c ? x.numel() / (n * c) : 0;
  Tensor dx = torch::empty_like(x), dgamma = torch::empty_like(gamma), dbeta = torch::empty_like(gamma);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_backward", [&] {
    bn_backward_loops(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<double>(),
                      inv_std.data_ptr<double>(), gamma.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                      dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>(), n, c, l);
  });
  return {dx, dgamma, dbeta};
}

// x: (N, *F); gamma, beta: the K = prod(F) values of one example. Returns y (like x) and float64
// (N,) mean and inv_std.
std::vector<Tensor> layer_norm_forward(const Tensor& x_, const Tensor& gamma_, const Tensor& beta_, double eps) {
  check_input(x_, "x");
  TORCH_CHECK(x_.dim() >= 2, "layer_norm_forward: x must be (N, *F), got ", x_.sizes());
  const Tensor x = x_.contiguous(), gamma = gamma_.contiguous(), beta = beta_.contiguous();
  const int64_t r = x.size(0), k = r ? x.numel() / r : 0;
  TORCH_CHECK(gamma.numel() == k && beta.numel() == k, "layer_norm_forward: gamma and beta need ", k, " values");
  Tensor y = torch::empty_like(x);
  auto f64 = x.options().dtype(at::kDouble);
  Tensor mean = torch::empty({r}, f64), inv_std = torch::empty({r}, f64);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_forward", [&] {
    ln_forward_loops(x.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                     y.data_ptr<scalar_t>(), mean.data_ptr<double>(), inv_std.data_ptr<double>(), r, k, eps);
  });
  return {y, mean, inv_std};
}

// dy, x: (N, *F); mean, inv_std: float64 (N,); gamma: K values. Returns dx (like x), dgamma, dbeta
// (like gamma).
std::vector<Tensor> layer_norm_backward(const Tensor& dy_, const Tensor& x_, const Tensor& mean_,
                                        const Tensor& inv_std_, const Tensor& gamma_) {
  TORCH_CHECK(dy_.sizes() == x_.sizes() && x_.dim() >= 2, "layer_norm_backward: dy and x must be (N, *F)");
  check_backward_inputs(dy_, x_, gamma_, mean_, inv_std_);
  const Tensor dy = dy_.contiguous(), x = x_.contiguous(), gamma = gamma_.contiguous();
  const Tensor mean = mean_.contiguous(), inv_std = inv_std_.contiguous();
  const int64_t r = x.size(0), k = r ? x.numel() / r : 0;
  TORCH_CHECK(gamma.numel() == k, "layer_norm_backward: gamma needs ", k, " values");
  Tensor dx = torch::empty_like(x), dgamma = torch::empty_like(gamma), dbeta = torch::empty_like(gamma);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "layer_norm_backward", [&] {
    ln_backward_loops(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<double>(),
                      inv_std.data_ptr<double>(), gamma.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                      dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>(), r, k);
  });
  return {dx, dgamma, dbeta};
}

// x: (N, C, *S); gamma, beta: C values; C divisible by groups. Returns y (like x) and float64 (N*G,)
// mean and inv_std, one per (example, group).
std::vector<Tensor> group_norm_forward(const Tensor& x_, const Tensor& gamma_, const Tensor& beta_, int64_t groups,
                                       double eps) {
  check_input(x_, "x");
  TORCH_CHECK(x_.dim() >= 2, "group_norm_forward: x must be (N, C, *S), got ", x_.sizes());
  const Tensor x = x_.contiguous(), gamma = gamma_.contiguous(), beta = beta_.contiguous();
  const int64_t n = x.size(0), c = x.size(1), l = n * c ? x.numel() / (n * c) : 0;
  TORCH_CHECK(groups > 0 && c % groups == 0, "group_norm_forward: ", c, " channels are not divisible by ", groups,
              " groups");
  TORCH_CHECK(gamma.numel() == c && beta.numel() == c, "group_norm_forward: gamma and beta need ", c, " values");
  Tensor y = torch::empty_like(x);
  auto f64 = x.options().dtype(at::kDouble);
  Tensor mean = torch::empty({n * groups}, f64), inv_std = torch::empty({n * groups}, f64);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_forward", [&] {
    gn_forward_loops(x.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                     y.data_ptr<scalar_t>(), mean.data_ptr<double>(), inv_std.data_ptr<double>(), n, c, l, groups,
                     eps);
  });
  return {y, mean, inv_std};
}

// dy, x: (N, C, *S); mean, inv_std: float64 (N*G,); gamma: C values. Returns dx (like x), dgamma, dbeta.
std::vector<Tensor> group_norm_backward(const Tensor& dy_, const Tensor& x_, const Tensor& mean_,
                                        const Tensor& inv_std_, const Tensor& gamma_, int64_t groups) {
  TORCH_CHECK(dy_.sizes() == x_.sizes() && x_.dim() >= 2, "group_norm_backward: dy and x must be (N, C, *S)");
  check_backward_inputs(dy_, x_, gamma_, mean_, inv_std_);
  const Tensor dy = dy_.contiguous(), x = x_.contiguous(), gamma = gamma_.contiguous();
  const Tensor mean = mean_.contiguous(), inv_std = inv_std_.contiguous();
  const int64_t n = x.size(0), c = x.size(1), l = n * c ? x.numel() / (n * c) : 0;
  TORCH_CHECK(groups > 0 && c % groups == 0 && mean.numel() == n * groups,
              "group_norm_backward: mean and inv_std need one value per (example, group)");
  Tensor dx = torch::empty_like(x), dgamma = torch::empty_like(gamma), dbeta = torch::empty_like(gamma);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_backward", [&] {
    gn_backward_loops(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<double>(),
                      inv_std.data_ptr<double>(), gamma.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                      dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>(), n, c, l, groups);
  });
  return {dx, dgamma, dbeta};
}

// ---------------------------------------------------------------------------------------------
// autograd: each pair as one differentiable op (first derivatives)

struct BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
  // x (N, C, *S); returns {y, batch mean, biased batch variance}, the statistics (C,) in x's dtype and not
  // differentiable
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                               double eps) {
    auto out = batch_norm_forward(x, gamma, beta, eps);  // y, mean, var, inv_std (statistics in float64)
    ctx->save_for_backward({x, gamma, out[1], out[3]});  // x, gamma, mean, inv_std
    const Tensor mean = out[1].to(x.scalar_type(), false, true), var = out[2].to(x.scalar_type(), false, true);
    ctx->mark_non_differentiable({mean, var});
    return {out[0], mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto g = batch_norm_backward(grads[0], s[0], s[2], s[3], s[1]);
    return {g[0], g[1], g[2], Tensor()};
  }
};

struct LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
  // x (N, *F), gamma and beta of shape F
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
    auto out = layer_norm_forward(x, gamma, beta, eps);  // y, mean, inv_std
    ctx->save_for_backward({x, gamma, out[1], out[2]});  // x, gamma, mean, inv_std
    return out[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto g = layer_norm_backward(grads[0], s[0], s[2], s[3], s[1]);
    return {g[0], g[1], g[2], Tensor()};
  }
};

struct GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups,
                        double eps) {
    auto out = group_norm_forward(x, gamma, beta, groups, eps);  // y, mean, inv_std
    ctx->save_for_backward({x, gamma, out[1], out[2]});
    ctx->saved_data["groups"] = groups;
    return out[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    auto g = group_norm_backward(grads[0], s[0], s[2], s[3], s[1], ctx->saved_data["groups"].toInt());
    return {g[0], g[1], g[2], Tensor(), Tensor()};
  }
};

// Batch norm in training mode: y, and the batch mean and biased variance (C,) in x's dtype, from which
// normlib.norms.BatchNorm updates its running statistics (for both implementations, in one place).
std::vector<Tensor> batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  return BatchNormFunction::apply(x, gamma, beta, eps);
}

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  return LayerNormFunction::apply(x, gamma, beta, eps);
}

Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int64_t groups, double eps) {
  return GroupNormFunction::apply(x, gamma, beta, groups, eps);
}

}  // namespace

void bind_pooling(pybind11::module_& m);  // normlib/csrc/pooling.cpp
void bind_conv(pybind11::module_& m);  // normlib/csrc/conv.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "normlib's fused CPU kernels: batch, layer and group norm (csrc/norms.cpp), 2 x 2 max pooling (csrc/pooling.cpp), the first convolution (csrc/conv.cpp)";
  m.def("batch_norm_forward", &batch_norm_forward, "x (N, C, *S), gamma, beta, eps -> y, mean, var, inv_std");
  m.def("batch_norm_backward", &batch_norm_backward, "dy, x, mean, inv_std, gamma -> dx, dgamma, dbeta");
  m.def("layer_norm_forward", &layer_norm_forward, "x (N, *F), gamma, beta, eps -> y, mean, inv_std");
  m.def("layer_norm_backward", &layer_norm_backward, "dy, x, mean, inv_std, gamma -> dx, dgamma, dbeta");
  m.def("group_norm_forward", &group_norm_forward, "x (N, C, *S), gamma, beta, groups, eps -> y, mean, inv_std");
  m.def("group_norm_backward", &group_norm_backward, "dy, x, mean, inv_std, gamma, groups -> dx, dgamma, dbeta");
  m.def("batch_norm", &batch_norm, "training-mode batch norm -> y, batch mean, biased batch variance");
  m.def("layer_norm", &layer_norm, "layer norm over all dimensions but the first");
  m.def("group_norm", &group_norm, "group norm: layer norm within each group of channels, per-channel affine");
  bind_pooling(m);
  bind_conv(m);
}
