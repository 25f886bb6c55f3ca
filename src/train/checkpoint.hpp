// Checkpoints: the whole state a run needs to continue bit-identically from an epoch boundary.
//
// File layout (little-endian):
//   0  char[8]  magic "TRNRCKPT"
//   8  u32      format version (1)
//   12 u32      crc32 (zlib) of the payload
//   16 u64      payload size in bytes
//   24 payload:
//        u32 n, n bytes   meta: JSON (model, width, input [C, H, W], classes, epoch, global_step,
//                         sgd_steps, recipe: the keys that decide the run's numbers)
//        u32 count        tensors, each:
//          u8 role (0 param value, 1 SGD momentum of that param, 2 buffer), u32 n + name,
//          u32 rank, i64 dims[rank], f32 values[prod(dims)] (plain layout)
//        (version 2) u32 count  named byte blobs (state of other parts, e.g. the pruning policy's masks
//                               under "pruning"), each: u32 n + name, u64 n + bytes
// Version 1 files (no blobs) are still read.
// Written atomically (<file>.tmp, fsync, rename), so a crash or a diverging run leaves the previous
// checkpoint intact. The loop's data order and augmentation are functions of (seed, epoch), so no RNG
// stream needs saving.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "nn/graph.hpp"
#include "train/optimizer.hpp"

namespace trainer {

struct CheckpointInfo {
  std::string model;
  int64_t width = 0;
  Shape input;  // [C, H, W]
  int64_t classes = 0;
  int64_t epoch = 0;        // epochs completed
  int64_t global_step = 0;  // optimizer steps completed
  nlohmann::json recipe = nlohmann::json::object();
};

struct CheckpointTensor {
  enum class Role : uint8_t { param = 0, momentum = 1, buffer = 2 };
  Role role = Role::param;
  std::string name;
  Tensor value;  // plain
};

struct Checkpoint {
  CheckpointInfo info;
  int64_t sgd_steps = 0;  // 0: the momentum buffers hold no history yet
  std::vector<CheckpointTensor> tensors;
  std::map<std::string, std::vector<uint8_t>> blobs;  // opaque state by name (e.g. "pruning")
};

// The model's parameters and buffers and the optimizer's momentum (sgd may be null).
Checkpoint capture_checkpoint(Graph& graph, const Sgd* sgd, CheckpointInfo info);
// Writes atomically; throws trainer::Error naming the file on any I/O failure (the .tmp is removed).
void write_checkpoint(const std::string& path, const Checkpoint& ckpt);
// Reads and verifies magic, version, size and checksum; throws trainer::Error naming the file for a
// missing, truncated, corrupt or foreign file.
Checkpoint read_checkpoint(const std::string& path);
// Copies values into the model (and momentum into sgd when given). Every parameter and buffer of the
// model must be in the checkpoint with the same shape and vice versa; otherwise throws trainer::Error
// naming the file, the tensor, both shapes and the model the checkpoint was written for.
void restore_checkpoint(const Checkpoint& ckpt, const std::string& path, Graph& graph, Sgd* sgd);

// "model 'resnet20' (width 16) on [1, 28, 28] images, 10 classes"
std::string describe_model(const CheckpointInfo& info);

}  // namespace trainer
