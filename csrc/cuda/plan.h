// Launch planning shared by the CUDA ops' host code: rows split into spans when
// there are too few to fill the GPU, the candidate list's size, and the split
// rows' workspace (partial lists and tickets).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "kernels.h"

namespace dare {

int sm_count(int device);

// The most shared memory a CTA may opt into on `device` (bytes).
int smem_optin(int device);

// Sets p.splits, p.span and p.cap for `rows` CTAs' worth of rows of `len` keys
// (padded rows: p.L; jagged rows, whose lengths the host does not read: their
// mean, N / B) of key_bytes each (p.k and p.kpow2 set), and returns the
// workspace of split rows (p.partial, p.tickets; tickets zeroed on the current
// stream), undefined if rows are not split. `like` gives the device.
at::Tensor plan_spans(Params& p, int64_t rows, int64_t len, int64_t key_bytes, const at::Tensor& like);

// The layout fields of p (offsets, mask and its strides) from the op's
// arguments; returns the int64 offsets it points at (kept alive by the caller).
at::Tensor set_layout(Params& p, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& offsets);

// The mean jagged row length the spans are planned for (at least 1), or p.L.
int64_t plan_length(const Params& p, int64_t B);

}  // namespace dare
