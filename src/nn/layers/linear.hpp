// Linear: fully connected, y = x w^T + b. x: [N, in] plain (a 4-D activation goes through flatten
// first); w: [out, in]; y: [N, out] plain.
#pragma once

#include <string>
#include <vector>

#include "kernels/linear_dnnl.hpp"
#include "nn/layer.hpp"

namespace trainer {

class Linear : public Layer {
 public:
  Linear(std::string name, int64_t in_features, int64_t out_features, bool bias = true);

  const char* kind() const override { return "linear"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  // PyTorch's default: kaiming_uniform(a = sqrt(5)), i.e. w and b ~ U(-1/sqrt(in), 1/sqrt(in)).
  void init(Rng& rng) override;

  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
  void wg(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy) override;

  std::vector<Param*> params() override;
  Op describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const override;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  bool has_bias() const { return has_bias_; }
  Param& weight() { return weight_; }
  Param& bias() { return bias_; }  // empty tensors when !has_bias()
  std::string implementations(int64_t batch) { return dnnl_.implementations(batch); }

 private:
  void check_input(const Tensor& x) const;

  int64_t in_, out_;
  bool has_bias_;
  Param weight_, bias_;
  LinearDnnl dnnl_;
};

}  // namespace trainer
