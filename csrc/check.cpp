#include "check.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <string>

#include <ATen/ATen.h>

namespace dare {
namespace {

// Python spells dtypes "torch.float32"; the messages must read the same from
// the raw op and from the Python API.
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kFloat8_e4m3fn: return "torch.float8_e4m3fn";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Messages are built here and handed to TORCH_CHECK_* as one std::string:
// with torch 2.11 wheels and g++ 13 (the GPU machine), TORCH_CHECK given an
// integer argument crashed (SIGSEGV) instead of raising; strings are safe.
std::string num(int64_t v) { return std::to_string(v); }

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// Python's repr of a float that is not finite in float32 (inf, nan, |x| > 3.4e38):
// the shortest round-trip digits, which for these is scientific, as in Python.
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

}  // namespace

void check_scale(double scale, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && std::abs(scale) <= double(std::numeric_limits<float>::max()),
                    std::string(op) + ": scale must be finite in float32, got " + float_repr(scale));
}

namespace {

// The lengths check of both ops (`device_of`: the argument that sets the device).
void check_lengths(const char* op, const std::optional<at::Tensor>& lengths, int64_t B, int64_t L,
                   const at::Device& device, const char* device_of, bool check_values) {
  if (!lengths.has_value()) return;
  const std::string o = op;
  const at::Tensor& len = *lengths;
  TORCH_CHECK_TYPE(len.scalar_type() == at::kInt || len.scalar_type() == at::kLong,
                   o + ": lengths must be int32 or int64, got " + dtype_name(len.scalar_type()));
  TORCH_CHECK_VALUE(len.dim() == 1 && len.size(0) == B,
                    o + ": lengths must have shape (B,)=(" + num(B) + ",), got shape " + shape_str(len));
  TORCH_CHECK_VALUE(len.device() == device, o + ": lengths must be on the " + device_of + " device " + device.str() +
                                                ", got " + len.device().str());
  if (check_values && B > 0) {
    const int64_t lo = len.min().item<int64_t>();
    const int64_t hi = len.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi <= L, o + ": lengths values must be in [0, L=" + num(L) + "], got min " +
                                              num(lo) + ", max " + num(hi));
  }
}

std::string values_str(const at::Tensor& o) {
  const at::Tensor v = o.to(at::kLong).cpu().contiguous();
  const int64_t n = v.numel();
  const int64_t* p = v.const_data_ptr<int64_t>();
  std::string s = "[";
  for (int64_t i = 0; i < n; ++i) {
    if (n > 8 && i == 4) {
      s += ", ...";
      i = n - 3;
    }
    s += (i ? ", " : "") + num(p[i]);
  }
  return s + "]";
}

// Which positions take part (twin of _check.check_layout): lengths and/or mask
// (B, L) bool, or jagged rows (offsets (B+1,) alone; L is then N).
void check_layout(const char* op, const Opt& lengths, const Opt& mask, const Opt& offsets, int64_t B, int64_t L,
                  const at::Device& device, const char* device_of, bool check_values) {
  const std::string o = op;
  if (offsets.has_value()) {
    TORCH_CHECK_VALUE(!lengths.has_value(),
                      o + ": lengths must be None with offsets (row b's length is offsets[b+1] - offsets[b])");
    TORCH_CHECK_VALUE(!mask.has_value(),
                      o + ": mask must be None with offsets (jagged rows hold only the positions that take part)");
    const at::Tensor& off = *offsets;
    TORCH_CHECK_TYPE(off.scalar_type() == at::kInt || off.scalar_type() == at::kLong,
                     o + ": offsets must be int32 or int64, got " + dtype_name(off.scalar_type()));
    TORCH_CHECK_VALUE(off.dim() == 1 && off.size(0) == B + 1, o + ": offsets must have shape (B+1,)=(" + num(B + 1) +
                                                                  ",), got shape " + shape_str(off));
    TORCH_CHECK_VALUE(off.device() == device, o + ": offsets must be on the " + device_of + " device " +
                                                  device.str() + ", got " + off.device().str());
    if (check_values) {
      const at::Tensor v = off.to(at::kLong);
      const bool ok = v[0].item<int64_t>() >= 0 && v[B].item<int64_t>() <= L &&
                      (B == 0 || (v.slice(0, 1).ge(v.slice(0, 0, B))).all().item<bool>());
      TORCH_CHECK_VALUE(ok, o + ": offsets must be nondecreasing from offsets[0] >= 0 to offsets[B] <= N=" + num(L) +
                                ", got " + values_str(off));
    }
    return;
  }
  check_lengths(op, lengths, B, L, device, device_of, check_values);
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, o + ": mask must be torch.bool (True = takes part, e.g. ids != 0), got " +
                                                         dtype_name(m.scalar_type()));
    TORCH_CHECK_VALUE(m.dim() == 2 && m.size(0) == B && m.size(1) == L, o + ": mask must have shape (B, L)=(" +
                                                                            num(B) + ", " + num(L) + "), got shape " +
                                                                            shape_str(m));
    TORCH_CHECK_VALUE(m.device() == device, o + ": mask must be on the " + device_of + " device " + device.str() +
                                                ", got " + m.device().str());
  }
}

void check_k(const std::string& op, int64_t k, int64_t L, bool jagged) {
  if (jagged) {
    TORCH_CHECK_VALUE(k >= 1 && k < (int64_t(1) << 31), op + ": k must satisfy 1 <= k < 2**31, got " + num(k));
  } else {
    TORCH_CHECK_VALUE(k >= 1 && k <= L, op + ": k must satisfy 1 <= k <= L=" + num(L) + ", got " + num(k));
  }
}

}  // namespace

Shape check_inputs(const at::Tensor& query, const at::Tensor& keys, int64_t k, const Opt& lengths,
                   const Opt& mask, const Opt& offsets, bool check_length_values) {
  const bool jagged = offsets.has_value();
  if (jagged) {
    TORCH_CHECK_VALUE(keys.dim() == 2,
                      "topk_attention: with offsets, keys must have shape (N, d), got shape " + shape_str(keys));
  } else {
    TORCH_CHECK_VALUE(keys.dim() == 3,
                      "topk_attention: keys must have shape (B, L, d), got shape " + shape_str(keys));
  }
  TORCH_CHECK_VALUE(query.dim() == 2 || query.dim() == 3,
                    "topk_attention: query must have shape (B, d) or (B, T, d), got shape " +
                        shape_str(query));
  const bool fp8 = keys.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK_TYPE(is_supported_float(keys.scalar_type()) || fp8,
                   "topk_attention: keys must be float32, float16, bfloat16 or float8_e4m3fn, got " +
                       dtype_name(keys.scalar_type()));
  if (fp8) {
    TORCH_CHECK_TYPE(is_supported_float(query.scalar_type()),
                     "topk_attention: with float8_e4m3fn keys, query must be float32, float16 or bfloat16, got " +
                         dtype_name(query.scalar_type()));
  } else {
    TORCH_CHECK_TYPE(query.scalar_type() == keys.scalar_type(),
                     "topk_attention: query dtype must equal keys dtype " +
                         dtype_name(keys.scalar_type()) + ", got " + dtype_name(query.scalar_type()));
  }
  TORCH_CHECK_VALUE(query.device() == keys.device(),
                    "topk_attention: query must be on the keys device " + keys.device().str() +
                        ", got " + query.device().str());
  const int64_t B = jagged ? query.size(0) : keys.size(0), L = keys.size(-2), d = keys.size(-1);
  if (!jagged) {
    TORCH_CHECK_VALUE(query.size(0) == B,
                      "topk_attention: query batch size must equal keys batch size B=" + num(B) +
                          ", got " + num(query.size(0)));
  }
  TORCH_CHECK_VALUE(query.size(-1) == d,
                    "topk_attention: query feature size must equal keys feature size d=" + num(d) +
                        ", got " + num(query.size(-1)));
  TORCH_CHECK_VALUE(d >= 1, "topk_attention: keys feature size d must be >= 1, got " + num(d));
  TORCH_CHECK_VALUE(L < (int64_t(1) << 31), std::string("topk_attention: keys ") +
                                                (jagged ? "rows N" : "length L") + " must be < 2**31, got " + num(L));
  check_k("topk_attention", k, L, jagged);
  check_layout("topk_attention", lengths, mask, offsets, B, L, keys.device(), "keys", check_length_values);
  const bool multi = query.dim() == 3;
  return Shape{B, multi ? query.size(1) : 1, L, d, multi, jagged};
}


Shape check_embedding_inputs(const at::Tensor& query, const at::TensorList& tables, const at::TensorList& ids,
                             int64_t k, const Opt& lengths, double scale, const Opt& mask, const Opt& offsets,
                             bool check_length_values) {
  const std::string op = "topk_attention_embedding";
  const int64_t F = int64_t(tables.size());
  check_scale(scale, op.c_str());
  TORCH_CHECK_VALUE(F >= 1 && F <= kMaxFields,
                    op + ": tables must hold 1 to " + num(kMaxFields) + " fields, got " + num(F));
  TORCH_CHECK_VALUE(int64_t(ids.size()) == F,
                    op + ": ids must hold one Tensor per table (" + num(F) + "), got " + num(int64_t(ids.size())));
  TORCH_CHECK_VALUE(query.dim() == 2 || query.dim() == 3,
                    op + ": query must have shape (B, d) or (B, T, d), got shape " + shape_str(query));
  TORCH_CHECK_TYPE(is_supported_float(query.scalar_type()),
                   op + ": query must be float32, float16 or bfloat16, got " + dtype_name(query.scalar_type()));
  const int64_t B = query.size(0);
  const bool jagged = offsets.has_value();
  int64_t L = -1, d = 0;
  for (int64_t f = 0; f < F; ++f) {
    const at::Tensor& t = tables[f];
    const at::Tensor& i = ids[f];
    const std::string tf = "tables[" + num(f) + "]", idf = "ids[" + num(f) + "]";
    TORCH_CHECK_VALUE(t.dim() == 2, op + ": " + tf + " must have shape (N, d), got shape " + shape_str(t));
    TORCH_CHECK_TYPE(t.scalar_type() == query.scalar_type(), op + ": " + tf + " dtype must equal query dtype " +
                                                                 dtype_name(query.scalar_type()) + ", got " +
                                                                 dtype_name(t.scalar_type()));
    TORCH_CHECK_VALUE(t.device() == query.device(), op + ": " + tf + " must be on the query device " +
                                                        query.device().str() + ", got " + t.device().str());
    TORCH_CHECK_VALUE(t.size(0) >= 1 && t.size(1) >= 1,
                      op + ": " + tf + " must have at least one row and one column, got shape " + shape_str(t));
    TORCH_CHECK_TYPE(i.scalar_type() == at::kInt || i.scalar_type() == at::kLong,
                     op + ": " + idf + " must be int32 or int64, got " + dtype_name(i.scalar_type()));
    TORCH_CHECK_VALUE(i.device() == query.device(), op + ": " + idf + " must be on the query device " +
                                                        query.device().str() + ", got " + i.device().str());
    TORCH_CHECK_VALUE(!jagged || i.dim() == 1, op + ": with offsets, " + idf +
                                                   " must have shape (N,) (jagged values), got shape " + shape_str(i));
    TORCH_CHECK_VALUE((i.dim() == 2 && i.size(0) == B) || i.dim() == 1,
                      op + ": " + idf + " must have shape (B, L) with B=" + num(B) + " or (L,), got shape " +
                          shape_str(i));
    if (L < 0) {
      L = i.size(-1);
    } else {
      TORCH_CHECK_VALUE(i.size(-1) == L, op + ": " + idf + " length must equal ids[0] length " +
                                             (jagged ? "N=" : "L=") + num(L) + ", got " + num(i.size(-1)));
    }
    d += t.size(1);
  }
  TORCH_CHECK_VALUE(query.size(-1) == d, op + ": query feature size must equal the tables' total width d=" + num(d) +
                                             ", got " + num(query.size(-1)));
  TORCH_CHECK_VALUE(L < (int64_t(1) << 31),
                    op + ": ids length " + (jagged ? "N" : "L") + " must be < 2**31, got " + num(L));
  check_k(op, k, L, jagged);
  check_layout(op.c_str(), lengths, mask, offsets, B, L, query.device(), "query", check_length_values);
  const bool multi = query.dim() == 3;
  return Shape{B, multi ? query.size(1) : 1, L, d, multi, jagged};
}

std::tuple<at::Tensor, at::Tensor> empty_outputs(const at::Tensor& like, const Shape& s, int64_t k) {
  const std::vector<int64_t> shape = s.multi_target ? std::vector<int64_t>{s.B, s.T, k}
                                                    : std::vector<int64_t>{s.B, k};
  return {at::empty(shape, like.options().dtype(at::kFloat)), at::empty(shape, like.options().dtype(at::kLong))};
}

int64_t check_selection(const char* op, const at::Tensor& grad, const at::Tensor& query, const at::Tensor& indices) {
  const std::string name(op);
  const bool shaped = indices.dim() == query.dim() && indices.dim() >= 1 &&
                      indices.sizes().slice(0, indices.dim() - 1) == query.sizes().slice(0, query.dim() - 1);
  TORCH_CHECK_VALUE(shaped && indices.scalar_type() == at::kLong,
                    name + ": indices must be int64 of shape (B, k) or (B, T, k) as the query's (B, [T,] d) " +
                        shape_str(query) + ", got " + shape_str(indices) + " " + dtype_name(indices.scalar_type()));
  TORCH_CHECK_VALUE(grad.sizes() == indices.sizes(),
                    name + ": grad must have indices' shape " + shape_str(indices) + ", got " + shape_str(grad));
  TORCH_CHECK_VALUE(grad.device() == query.device() && indices.device() == query.device(),
                    name + ": grad and indices must be on the query's device " + query.device().str() + ", got " +
                        grad.device().str() + " and " + indices.device().str());
  return indices.size(-1);
}

at::Tensor jagged_starts(const Opt& offsets, const Shape& s) {
  if (!offsets.has_value()) return at::Tensor();
  return offsets->to(at::kLong).slice(0, 0, s.B).clamp(0, s.L).contiguous();
}

}  // namespace dare
