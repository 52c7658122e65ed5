// Launch planning shared by the CUDA ops' host code: rows split into spans when
// there are too few to fill the GPU, the candidate list's size, and the split
// rows' workspace (partial lists and tickets).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "topk_kernel.h"

namespace dare {

int sm_count(int device);

// Sets p.splits, p.span and p.cap for `rows` CTAs' worth of rows of p.L keys of
// key_bytes each (p.k and p.kpow2 set), and returns the workspace of split rows
// (p.partial, p.tickets; tickets zeroed on the current stream), undefined if
// rows are not split. `like` gives the device.
at::Tensor plan_spans(Params& p, int64_t rows, int64_t key_bytes, const at::Tensor& like);

}  // namespace dare
