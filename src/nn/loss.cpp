#include "nn/loss.hpp"

#include <cmath>

#include "core/error.hpp"

namespace trainer {

float SoftmaxCrossEntropy::ff(const Tensor& logits, const std::vector<int32_t>& labels) {
  TRAINER_CHECK(logits.rank() == 2 && logits.layout() == Layout::plain,
                "softmax cross-entropy: expected plain logits [N, K], got {} ({})", shape_str(logits.shape()),
                layout_name(logits.layout()));
  const int64_t N = logits.dim(0), K = logits.dim(1);
  TRAINER_CHECK(N > 0 && K > 0, "softmax cross-entropy: empty logits {}", shape_str(logits.shape()));
  TRAINER_CHECK(static_cast<int64_t>(labels.size()) == N,
                "softmax cross-entropy: {} labels for {} rows of logits", labels.size(), N);
  for (int64_t n = 0; n < N; ++n)
    TRAINER_CHECK(labels[n] >= 0 && labels[n] < K,
                  "softmax cross-entropy: label {} in row {} is outside [0, {})", labels[n], n, K);
  labels_ = labels;
  probs_.resize(logits.shape(), Layout::plain);
  const float* z = logits.data();
  float* p = probs_.data();
  // A batch's rows are few and short (K classes), so one thread does them all; the loss sums in
  // double in row order.
  double loss = 0;
  int64_t correct = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* zr = z + n * K;
    float* pr = p + n * K;
    // Subtracting the row maximum keeps exp() in range; the first maximum is the prediction.
    int64_t arg = 0;
    for (int64_t k = 1; k < K; ++k)
      if (zr[k] > zr[arg]) arg = k;
    const float zmax = zr[arg];
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const float e = std::exp(zr[k] - zmax);
      pr[k] = e;
      sum += e;
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t k = 0; k < K; ++k) pr[k] *= inv;
    // -log softmax(z)[label] = log(sum exp(z - max)) - (z[label] - max), exact even where p underflows.
    loss += std::log(sum) - static_cast<double>(zr[labels[n]] - zmax);
    correct += arg == labels[n];
  }
  correct_ = correct;
  return static_cast<float>(loss / static_cast<double>(N));
}

void SoftmaxCrossEntropy::bp(Tensor& dlogits) const {
  TRAINER_CHECK(!probs_.empty(), "softmax cross-entropy: bp called before ff");
  const int64_t N = probs_.dim(0), K = probs_.dim(1);
  dlogits.resize(probs_.shape(), Layout::plain);
  const float* p = probs_.data();
  float* d = dlogits.data();
  const float inv_n = 1.0f / static_cast<float>(N);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) d[n * K + k] = (p[n * K + k] - (k == labels_[n] ? 1.0f : 0.0f)) * inv_n;
}

}  // namespace trainer
