// Which positions of a row the CPU kernels offer (check.h's layouts), read in
// place: jagged rows through offsets, masks through their strides. Nothing is
// converted to padded tensors; only lengths/offsets become int64.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>

#include "../check.h"

namespace dare {
namespace cpu {

struct Layout {
  const int64_t* lengths;  // (B,) or nullptr
  const int64_t* offsets;  // (B+1,) or nullptr: row b is values [offsets[b], offsets[b+1])
  const bool* mask;        // (B, L) or nullptr, element (b, j) at b * mask_sb + j * mask_sl
  int64_t mask_sb, mask_sl, L;

  // Row b's first value (jagged), counted in positions.
  int64_t start(int64_t b) const { return offsets ? offsets[b] : 0; }
  int64_t len(int64_t b) const { return offsets ? offsets[b + 1] - offsets[b] : lengths ? lengths[b] : L; }
  bool takes_part(int64_t b, int64_t j) const { return !mask || mask[b * mask_sb + j * mask_sl]; }

  // Copies row b's mask over positions [j0, j0 + n) into keep (contiguous, so
  // every target of the row reuses it) and returns how many are set.
  // Two plain loops, so both vectorise for a contiguous mask: the copy and
  // count run on every chunk (left padding: about half the chunks are empty).
  int64_t load_keep(int64_t b, int64_t j0, int64_t n, bool* __restrict keep) const {
    const bool* m = mask + b * mask_sb + j0 * mask_sl;
    if (mask_sl == 1) {
      std::memcpy(keep, m, size_t(n));
    } else {
      for (int64_t j = 0; j < n; ++j) keep[j] = m[j * mask_sl];
    }
    int64_t kept = 0;
    for (int64_t j = 0; j < n; ++j) kept += keep[j];
    return kept;
  }
};

// `hold` keeps the int64 copies of lengths/offsets alive for the call.
inline Layout make_layout(const Opt& lengths, const Opt& mask, const Opt& offsets, int64_t L,
                          std::vector<at::Tensor>& hold) {
  Layout l{nullptr, nullptr, nullptr, 0, 0, L};
  if (lengths.has_value()) l.lengths = hold.emplace_back(lengths->to(at::kLong).contiguous()).const_data_ptr<int64_t>();
  if (offsets.has_value()) l.offsets = hold.emplace_back(offsets->to(at::kLong).contiguous()).const_data_ptr<int64_t>();
  if (mask.has_value()) {
    l.mask = mask->const_data_ptr<bool>();
    l.mask_sb = mask->stride(0);
    l.mask_sl = mask->stride(1);
  }
  return l;
}

}  // namespace cpu
}  // namespace dare
