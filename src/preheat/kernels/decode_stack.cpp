// The whole decoder stack for a step in which every sequence decodes one token, in one call.
//
// A decode step of a small model is a few hundred tiny ops (about 25 a layer); called from
// Python each costs several microseconds of interpreter and binding overhead, as much as
// the arithmetic itself. This runs the same ATen ops and the same preheat kernels, in the
// same order and on the same shapes per row, as LlamaLayer in models/llama.py, so a row's
// result is bitwise what the Python loop gives (the batch- and cache-invariance tests hold
// across both paths); only the overhead between ops is gone.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <vector>

namespace {

using MatmulOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
using AttentionOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, double, int64_t);

// Registered by quant_matmul.cpp and paged_attention.cpp (loaded before this library is used).
at::Tensor quant_matmul(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale,
                        const at::Tensor& min) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("preheat::quant_matmul", "")
                       .typed<MatmulOp>();
  return op.call(x, codes, scale, min);
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("preheat::paged_decode_attention", "")
                       .typed<AttentionOp>();
  return op.call(q, k_cache, v_cache, block_tables, context_lens, scale, /*window=*/0);
}

// layers/linear.py QuantLinear: the kernel, trimmed to the real outputs, then the bias.
struct QuantLinear {
  at::Tensor codes, scale, min, bias;  // bias undefined when the layer has none
  int64_t out_features;

  at::Tensor operator()(const at::Tensor& x) const {
    at::Tensor y = quant_matmul(x, codes, scale, min);
    if (y.size(-1) != out_features) y = y.narrow(-1, 0, out_features);
    return bias.defined() ? y + bias : y;
  }
};

struct Layer {
  at::Tensor attn_norm, mlp_norm;
  QuantLinear qkv, o, gate_up, down;
};

class DecodeStack : public torch::CustomClassHolder {
 public:
  // tensors: per layer attn_norm, mlp_norm, then (codes, scale, min, bias) for qkv, o,
  // gate_up and down (an empty bias tensor for none); out_features: per layer the four
  // linears' output sizes.
  DecodeStack(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps,
              std::vector<at::Tensor> tensors, std::vector<int64_t> out_features)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps) {
    constexpr size_t kPerLayer = 2 + 4 * 4;
    TORCH_CHECK(tensors.size() % kPerLayer == 0 && out_features.size() == tensors.size() / kPerLayer * 4,
                "DecodeStack: ", tensors.size(), " tensors and ", out_features.size(), " sizes");
    for (size_t i = 0; i < tensors.size(); i += kPerLayer) {
      const size_t l = i / kPerLayer;
      auto linear = [&](size_t k) {
        const at::Tensor& bias = tensors[i + 2 + 4 * k + 3];
        return QuantLinear{tensors[i + 2 + 4 * k], tensors[i + 3 + 4 * k], tensors[i + 4 + 4 * k],
                           bias.numel() ? bias : at::Tensor(), out_features[4 * l + k]};
      };
      layers_.push_back(Layer{tensors[i], tensors[i + 1], linear(0), linear(1), linear(2), linear(3)});
    }
  }

  // x [batch, hidden]; cos, sin [batch, 1, head_dim] (rotary.py's tables); kv_cache
  // [layers, 2, blocks, block_size, kv_heads, head_dim]; slots [batch] (each token's cache
  // slot); block_tables [batch, max_blocks]; context_lens [batch]. Returns x after the stack.
  // stop: empty, or one int64 that another thread or process may change (models/
  // stop_signal.py): once it differs from stop_value, the pass ends before its next layer
  // and returns an undefined tensor (None in Python).
  at::Tensor forward(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                     const at::Tensor& kv_cache, const at::Tensor& slots,
                     const at::Tensor& block_tables, const at::Tensor& context_lens,
                     double scale, const at::Tensor& stop, int64_t stop_value) const {
    TORCH_CHECK(kv_cache.size(0) == static_cast<int64_t>(layers_.size()), "DecodeStack: the KV cache has ",
                kv_cache.size(0), " layers, the model ", layers_.size());
    TORCH_CHECK(stop.numel() == 0 || (stop.numel() == 1 && stop.scalar_type() == at::kLong),
                "DecodeStack: stop must be empty or one int64");
    const int64_t* stop_cell = stop.numel() ? stop.data_ptr<int64_t>() : nullptr;
    const int64_t hidden = x.size(-1);
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (stop_cell != nullptr && __atomic_load_n(stop_cell, __ATOMIC_RELAXED) != stop_value) {
        return at::Tensor();
      }
      const Layer& layer = layers_[i];
      const at::Tensor cache = kv_cache.select(0, static_cast<int64_t>(i));
      at::Tensor h = at::rms_norm(x, {hidden}, layer.attn_norm, eps_);
      const at::Tensor qkv = layer.qkv(h).view({-1, heads_ + 2 * kv_heads_, head_dim_});
      // rotary.py apply_rotary: q and k heads together.
      const at::Tensor qk_in = qkv.narrow(1, 0, heads_ + kv_heads_);
      const at::Tensor qk = at::addcmul(qk_in * cos, qk_in.roll({head_dim_ / 2}, {-1}), sin);
      const at::Tensor q = qk.narrow(1, 0, heads_);
      const at::Tensor k = qk.narrow(1, heads_, kv_heads_);
      const at::Tensor v = qkv.narrow(1, heads_ + kv_heads_, kv_heads_);
      // attention.py paged_attention: store this token's k/v, then attend.
      at::Tensor flat = cache.view({2, -1, kv_heads_, head_dim_});
      flat.select(0, 0).index_copy_(0, slots, k.to(cache.scalar_type()));
      flat.select(0, 1).index_copy_(0, slots, v.to(cache.scalar_type()));
      const at::Tensor attn = paged_decode_attention(q.to(at::kFloat), cache.select(0, 0), cache.select(0, 1),
                                                     block_tables, context_lens, scale)
                                  .to(q.scalar_type());
      x = x + layer.o(attn.view({-1, heads_ * head_dim_}));
      h = at::rms_norm(x, {hidden}, layer.mlp_norm, eps_);
      const std::vector<at::Tensor> gate_up = layer.gate_up(h).chunk(2, -1);
      x = x + layer.down(at::silu(gate_up[0]) * gate_up[1]);
    }
    return x;
  }

 private:
  int64_t heads_, kv_heads_, head_dim_;
  double eps_;
  std::vector<Layer> layers_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(preheat, m) {
  m.class_<DecodeStack>("DecodeStack")
      .def(torch::init<int64_t, int64_t, int64_t, double, std::vector<at::Tensor>, std::vector<int64_t>>())
      .def("forward", &DecodeStack::forward);
}
