// Sparse Adagrad with momentum over table rows (REFERENCE §4), the CPU training step's hot loop:
//
//   for each listed row r (with its summed gradient g):
//     acc[r] += g²;  v[r] = μ·v[r] - lr·g / sqrt(acc[r] + eps);  table[r] += v[r]
//   (no velocity table: table[r] -= lr·g / sqrt(acc[r] + eps))
//
// One pass over each touched row (read g, acc, vel, table; write acc, vel, table) instead of the
// ten gathers, element-wise ops and scatters the torch form takes. Rows must be unique (the
// caller sums duplicate gradients first); a row listed twice is updated twice.
#pragma once

#include <cstdint>

namespace fg4r {

// table, acc, vel (nullable): (n_table_rows, width) row-major; rows (n_rows,) in
// [0, n_table_rows) (checked by the caller); grad (n_rows, width) row-major.
template <class T>
void adagrad_momentum_rows(T* table, T* acc, T* vel, const int64_t* rows, int64_t n_rows,
                           const T* grad, int64_t width, T lr, T momentum, T eps);

// The same update for ids that may repeat (one gradient row per occurrence, as the CPU fused
// training step produces them): the gradients of equal ids are summed in occurrence order
// (an open-addressing hash of the ids, O(n_ids), no sort), then each touched row is updated once
// by adagrad_momentum_rows. ids (n_ids,) in [0, n_table_rows) (checked by the caller); grad
// (n_ids, width) row-major.
template <class T>
void adagrad_momentum_scatter(T* table, T* acc, T* vel, const int64_t* ids, int64_t n_ids,
                              const T* grad, int64_t width, T lr, T momentum, T eps);

}  // namespace fg4r
