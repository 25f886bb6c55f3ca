// Softmax cross-entropy over logits [N, K]: the loss phase of a step.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

class SoftmaxCrossEntropy {
 public:
  // logits: [N, K] plain; labels: N values in [0, K) (anything else throws trainer::Error).
  // Returns the mean loss over the batch; keeps the probabilities for bp().
  float ff(const Tensor& logits, const std::vector<int32_t>& labels);
  // dlogits: [N, K] = (softmax - onehot(labels)) / N, for the last ff.
  void bp(Tensor& dlogits) const;
  // Number of rows of the last ff whose arg-max equals the label.
  int64_t correct() const { return correct_; }
  const Tensor& probs() const { return probs_; }

 private:
  Tensor probs_;
  std::vector<int32_t> labels_;
  int64_t correct_ = 0;
};

}  // namespace trainer
