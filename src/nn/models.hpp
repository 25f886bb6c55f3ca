// The model zoo, each model built from a short readable description (see models.cpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/conv_choice.hpp"
#include "nn/graph.hpp"

namespace trainer {

struct ModelOptions {
  // Channels of the first stage (ResNet, VGG); 0 = the model's usual width (16 for the CIFAR ResNets
  // and vgg8, 64 for resnet18). LeNet-5 ignores it.
  int64_t width = 0;
};

// name: lenet5 | resnet8 | resnet14 | resnet20 | resnet<6n+2> | resnet18 | vgg8
// input: [C, H, W] of one image. Throws trainer::Error for an unknown name or an input the model
// cannot take (naming the model and the shape).
std::unique_ptr<Graph> build_model(const std::string& name, const Shape& input, int64_t num_classes,
                                   const ModelOptions& options = {});
std::vector<std::string> model_names();

// The distinct convolution shapes of a graph for one image of `image` ([C, H, W]), in the order the
// layers come (what `trainer calibrate --model` measures, and what a calibration's per-shape entries
// are matched against).
std::vector<ConvShape> conv_shapes(const Graph& graph, const Shape& image);

}  // namespace trainer
