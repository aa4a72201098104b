#include "optim.hpp"

#include <cmath>

namespace fg4r {

template <class T>
void adagrad_momentum_rows(T* table, T* acc, T* vel, const int64_t* rows, int64_t n_rows,
                           const T* grad, int64_t width, T lr, T momentum, T eps) {
  for (int64_t u = 0; u < n_rows; ++u) {
    const int64_t off = rows[u] * width;
    const T* g = grad + u * width;
    T* a = acc + off;
    T* p = table + off;
    if (vel != nullptr) {
      T* v = vel + off;
      for (int64_t h = 0; h < width; ++h) {
        const T acc_h = a[h] + g[h] * g[h];
        a[h] = acc_h;
        // g · (1 / sqrt(acc + eps)): torch's rsqrt on the CPU
        const T step = g[h] * (T(1) / std::sqrt(acc_h + eps));
        const T v_h = v[h] * momentum - lr * step;
        v[h] = v_h;
        p[h] += v_h;
      }
    } else {
      for (int64_t h = 0; h < width; ++h) {
        const T acc_h = a[h] + g[h] * g[h];
        a[h] = acc_h;
        p[h] -= lr * (g[h] * (T(1) / std::sqrt(acc_h + eps)));
      }
    }
  }
}

template void adagrad_momentum_rows<float>(float*, float*, float*, const int64_t*, int64_t,
                                           const float*, int64_t, float, float, float);
template void adagrad_momentum_rows<double>(double*, double*, double*, const int64_t*, int64_t,
                                            const double*, int64_t, double, double, double);

}  // namespace fg4r
