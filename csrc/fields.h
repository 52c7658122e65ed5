// topk_attention_embedding's field limit, shared by the checks and the kernels
// (the Python twin: dare_kernels/_check.py MAX_FIELDS).
#pragma once

namespace dare {
inline constexpr int kMaxFields = 4;
}  // namespace dare
