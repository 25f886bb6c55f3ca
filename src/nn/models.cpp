// The model zoo. Each model reads as its description: a NetBuilder tracks the current node and its
// channel count, so a model is a list of layers and blocks in the order they run.
#include "nn/models.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "core/error.hpp"
#include "nn/layers/basic.hpp"
#include "nn/layers/batchnorm2d.hpp"
#include "nn/layers/conv2d.hpp"
#include "nn/layers/linear.hpp"

namespace trainer {

namespace {

class NetBuilder {
 public:
  explicit NetBuilder(int64_t in_channels) : graph_(std::make_unique<Graph>()), channels_(in_channels) {}

  // Layers name themselves "<scope>.<what><index>" so that a run's tables read like the description.
  NetBuilder& conv(int64_t out, int64_t k, int64_t stride = 1, int64_t pad = -1, bool bias = false) {
    if (pad < 0) pad = k / 2;
    at_ = graph_->add(std::make_unique<Conv2d>(name("conv"), channels_, out, k, stride, pad, bias), {at_});
    channels_ = out;
    return *this;
  }
  NetBuilder& bn() {
    at_ = graph_->add(std::make_unique<BatchNorm2d>(name("bn"), channels_), {at_});
    return *this;
  }
  NetBuilder& relu() {
    at_ = graph_->add(std::make_unique<ReLU>(name("relu")), {at_});
    return *this;
  }
  NetBuilder& maxpool(int64_t k, int64_t stride = 0) {
    at_ = graph_->add(std::make_unique<MaxPool2d>(name("maxpool"), k, stride), {at_});
    return *this;
  }
  NetBuilder& global_avg_pool() {
    at_ = graph_->add(std::make_unique<GlobalAvgPool>(name("gap")), {at_});
    return *this;
  }
  NetBuilder& flatten(int64_t features) {
    at_ = graph_->add(std::make_unique<Flatten>(name("flatten")), {at_});
    channels_ = features;
    return *this;
  }
  NetBuilder& linear(int64_t out, bool bias = true) {
    at_ = graph_->add(std::make_unique<Linear>(name("fc"), channels_, out, bias), {at_});
    channels_ = out;
    return *this;
  }

  // Basic residual block (He et al. 2016): conv3x3-bn-relu-conv3x3-bn, plus the shortcut (identity, or
  // 1x1 conv + bn when the shape changes), then relu.
  NetBuilder& basic_block(int64_t out, int64_t stride) {
    const int block_input = at_;
    const int64_t in = channels_;
    scope_push("block");
    conv(out, 3, stride).bn().relu().conv(out, 3, 1).bn();
    const int main_path = at_;
    int shortcut = block_input;
    if (stride != 1 || in != out) {
      at_ = block_input;
      channels_ = in;
      scope_push("shortcut");
      conv(out, 1, stride, 0).bn();
      scope_pop();
      shortcut = at_;
    }
    at_ = graph_->add(std::make_unique<Add>(name("add")), {main_path, shortcut});
    channels_ = out;
    relu();
    scope_pop();
    return *this;
  }

  void scope_push(const std::string& s) {
    scopes_.push_back(fmt::format("{}{}", s, counters_[scope_key() + "/" + s]++));
  }
  void scope_pop() { scopes_.pop_back(); }
  int64_t channels() const { return channels_; }
  std::unique_ptr<Graph> build() { return std::move(graph_); }

 private:
  std::string scope_key() const {
    std::string k;
    for (const auto& s : scopes_) k += "/" + s;
    return k;
  }
  std::string name(const std::string& what) {
    const int idx = counters_[scope_key() + "/" + what]++;
    std::string out;
    for (const auto& s : scopes_) out += s + ".";
    return out + what + std::to_string(idx);
  }
  std::unique_ptr<Graph> graph_;
  int at_ = Graph::kInput;
  int64_t channels_;
  std::vector<std::string> scopes_;
  std::map<std::string, int> counters_;
};

// LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, as commonly trained on (Fashion-)MNIST:
// conv5x5(6, pad 2) - pool - conv5x5(16) - pool - fc120 - fc84 - fc(classes).
std::unique_ptr<Graph> lenet5(const Shape& in, int64_t classes) {
  NetBuilder b(in[0]);
  b.conv(6, 5, 1, 2, /*bias=*/true).relu().maxpool(2);
  b.conv(16, 5, 1, 0, /*bias=*/true).relu().maxpool(2);
  const int64_t h = ((in[1] + 4 - 4) / 2 - 4) / 2, w = ((in[2] + 4 - 4) / 2 - 4) / 2;
  TRAINER_CHECK(h > 0 && w > 0, "model lenet5: input {} is too small (needs at least 12x12)", shape_str(in));
  b.flatten(16 * h * w).linear(120).relu().linear(84).relu().linear(classes);
  return b.build();
}

// CIFAR-style ResNet-(6n+2) (He et al. 2016, sec. 4.2): stem conv3x3(w), three stages of n basic
// blocks at widths w, 2w, 4w (stride 2 at the start of stages 2 and 3), global average pool, fc.
std::unique_ptr<Graph> cifar_resnet(int64_t blocks_per_stage, const Shape& in, int64_t classes, int64_t w) {
  NetBuilder b(in[0]);
  b.scope_push("stem");
  b.conv(w, 3).bn().relu();
  b.scope_pop();
  for (int stage = 0; stage < 3; ++stage) {
    b.scope_push("stage");
    for (int64_t i = 0; i < blocks_per_stage; ++i) b.basic_block(w << stage, (stage > 0 && i == 0) ? 2 : 1);
    b.scope_pop();
  }
  b.global_avg_pool().linear(classes);
  return b.build();
}

// ResNet-18 with basic blocks [2, 2, 2, 2] at widths w..8w, CIFAR-style stem (conv3x3, no max pool),
// as used for CIFAR-10 training (e.g. by the sparse-training literature).
std::unique_ptr<Graph> resnet18(const Shape& in, int64_t classes, int64_t w) {
  NetBuilder b(in[0]);
  b.scope_push("stem");
  b.conv(w, 3).bn().relu();
  b.scope_pop();
  for (int stage = 0; stage < 4; ++stage) {
    b.scope_push("stage");
    for (int i = 0; i < 2; ++i) b.basic_block(w << stage, (stage > 0 && i == 0) ? 2 : 1);
    b.scope_pop();
  }
  b.global_avg_pool().linear(classes);
  return b.build();
}

// A small VGG-style net: [conv3x3-bn-relu x2, maxpool] at widths w, 2w, 4w, then fc(8w)-relu-fc.
std::unique_ptr<Graph> vgg8(const Shape& in, int64_t classes, int64_t w) {
  NetBuilder b(in[0]);
  int64_t h = in[1], wd = in[2];
  for (int stage = 0; stage < 3; ++stage) {
    b.scope_push("stage");
    b.conv(w << stage, 3).bn().relu().conv(w << stage, 3).bn().relu().maxpool(2);
    b.scope_pop();
    h /= 2;
    wd /= 2;
  }
  TRAINER_CHECK(h > 0 && wd > 0, "model vgg8: input {} is too small (needs at least 8x8)", shape_str(in));
  b.flatten(b.channels() * h * wd).linear(8 * w).relu().linear(classes);
  return b.build();
}

}  // namespace

std::vector<std::string> model_names() {
  return {"lenet5", "resnet8", "resnet14", "resnet20", "resnet18", "vgg8"};
}

std::unique_ptr<Graph> build_model(const std::string& name, const Shape& input, int64_t num_classes,
                                   const ModelOptions& options) {
  TRAINER_CHECK(input.size() == 3 && input[0] > 0 && input[1] > 0 && input[2] > 0,
                "model {}: input must be [C, H, W] with positive sizes, got {}", name, shape_str(input));
  TRAINER_CHECK(num_classes >= 2, "model {}: needs at least 2 classes, got {}", name, num_classes);
  TRAINER_CHECK(options.width >= 0, "model {}: width must be positive, got {}", name, options.width);
  const int64_t width = options.width;
  std::unique_ptr<Graph> g;
  if (name == "lenet5") {
    g = lenet5(input, num_classes);
  } else if (name == "resnet18") {
    g = resnet18(input, num_classes, width ? width : 64);
  } else if (name == "vgg8") {
    g = vgg8(input, num_classes, width ? width : 16);
  } else if (name.rfind("resnet", 0) == 0 && name.size() > 6 &&
             name.find_first_not_of("0123456789", 6) == std::string::npos) {
    const int depth = std::stoi(name.substr(6));
    TRAINER_CHECK(depth >= 8 && (depth - 2) % 6 == 0,
                  "model {}: CIFAR-style ResNets have depth 6n+2 (8, 14, 20, 26, 32, 44, 56, 110)", name);
    g = cifar_resnet((depth - 2) / 6, input, num_classes, width ? width : 16);
  } else {
    std::string known;
    for (const auto& m : model_names()) known += (known.empty() ? "" : ", ") + m;
    fail("unknown model '{}'; known models: {} (and resnet<6n+2>)", name, known);
  }
  Shape batch_shape{1, input[0], input[1], input[2]};
  g->check(batch_shape);
  return g;
}

std::vector<ConvShape> conv_shapes(const Graph& graph, const Shape& image) {
  TRAINER_CHECK(image.size() == 3, "conv_shapes: expected one image's shape [C, H, W], got {}",
                shape_str(image));
  const Shape batched = {1, image[0], image[1], image[2]};
  std::vector<Shape> out(graph.size());
  std::vector<ConvShape> shapes;
  for (size_t i = 0; i < graph.size(); ++i) {
    std::vector<Shape> in;
    for (int j : graph.inputs_of(static_cast<int>(i))) in.push_back(j == Graph::kInput ? batched : out[j]);
    const Layer& layer = graph.layer(static_cast<int>(i));
    out[i] = layer.infer_shape(in);
    const auto* conv = dynamic_cast<const Conv2d*>(&layer);
    if (!conv || in.size() != 1 || in[0].size() != 4) continue;
    const ConvShape s{conv->in_channels(), in[0][2],       in[0][3],       conv->out_channels(),
                      conv->kernel(),      conv->kernel(), conv->stride(), conv->padding()};
    if (std::find(shapes.begin(), shapes.end(), s) == shapes.end()) shapes.push_back(s);
  }
  return shapes;
}

}  // namespace trainer
