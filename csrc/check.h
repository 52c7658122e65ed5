// Input validation and output allocation shared by every compiled backend. The Python twin is
// dare_kernels/_check.py; python_tests/test_errors.py holds both to the same
// exception types and messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "fields.h"

namespace dare {

struct Shape {
  int64_t B, T, L, d;  // jagged: L is N, the number of keys (ids) of all rows
  bool multi_target;   // query was (B, T, d)
  bool jagged;         // offsets given: row b is values [offsets[b], offsets[b+1])
};

using Opt = std::optional<at::Tensor>;

// Raises (TORCH_CHECK_VALUE/TYPE) before any kernel runs. Values of `lengths`
// and `offsets` are only inspected when check_length_values is set: on CUDA that
// would force a host synchronisation, so the CUDA kernels clamp them instead
// (lengths to [0, L]; a jagged row to start = clamp(offsets[b], 0, N),
// end = clamp(offsets[b+1], start, N)).
Shape check_inputs(const at::Tensor& query, const at::Tensor& keys, int64_t k, const Opt& lengths,
                   const Opt& mask, const Opt& offsets, bool check_length_values);

// topk_attention_embedding's check (d = the tables' total width, L from the ids).
// Id values are not read here: the kernels never read out of bounds (CPU raises
// ValueError, CUDA scores NaN).
Shape check_embedding_inputs(const at::Tensor& query, const at::TensorList& tables, const at::TensorList& ids,
                             int64_t k, const Opt& lengths, double scale, const Opt& mask, const Opt& offsets,
                             bool check_length_values);

// Raises ValueError unless float32(scale) is finite (the kernels scale float32
// scores by it: 1e39 would make every score inf). Called before check_inputs.
void check_scale(double scale, const char* op = "topk_attention");

// The forward's selection as a backward op receives it: indices (B, k) or (B, T, k)
// int64 as the query's rank, grad of the same shape. Returns k.
int64_t check_selection(const char* op, const at::Tensor& grad, const at::Tensor& query, const at::Tensor& indices);

// Jagged rows' starts as every kernel reads them, clamp(offsets[b], 0, N) for b < B, int64
// contiguous; undefined without offsets.
at::Tensor jagged_starts(const Opt& offsets, const Shape& s);

// Uninitialised (scores float32, indices int64) of shape (B, k) or (B, T, k).
std::tuple<at::Tensor, at::Tensor> empty_outputs(const at::Tensor& like, const Shape& s, int64_t k);

}  // namespace dare
