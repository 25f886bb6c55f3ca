// ChipSpec: one training processor as data (technology, PE array, buffers, DRAM, per-event energies,
// feature switches), read from YAML and validated. Every number the chip model prints is an event count
// times one of the per-event energies here; docs/chip-model.md gives each number's source.
#pragma once

#include <array>
#include <string>
#include <vector>

namespace trainer {

// Number format of the operands the PE array multiplies and the buffers hold.
enum class Precision : uint8_t { fp16 = 0, fp8 = 1 };
const char* precision_name(Precision p);
int precision_bits(Precision p);

// The operand a PE walks in compressed form (its zeros are skipped, costing no cycles); the other
// operand is streamed and its zeros only gate the multiplier. Per phase (see docs/chip-model.md):
//   ff: a = x, b = w        bp: a = dy, b = w        wg: a = x, b = dy
enum class Compressed : uint8_t { a = 0, b = 1 };

// One way to split the PE array: `groups` independent groups of rows x cols PEs.
struct RegroupShape {
  int groups = 1;
  int rows = 16;
  int cols = 16;
  std::string name() const;  // "16x16", "4x8x8"
};

struct BufferSpec {
  std::string name;  // "weights", "activations", "gradients"
  double size_kib = 0;
  int banks = 1;
  int width_bits = 64;  // bits one bank reads or writes per cycle
  double read_pj_per_bit = 0;
  double write_pj_per_bit = 0;
  double size_bits() const { return size_kib * 1024.0 * 8.0; }
  double bits_per_cycle() const { return static_cast<double>(banks) * width_bits; }
};

// Indices of ChipSpec::buffers.
enum BufferId : int { kWeightBuffer = 0, kActivationBuffer = 1, kGradientBuffer = 2, kNumBuffers = 3 };

enum class DataflowObjective : uint8_t { cycles = 0, energy = 1, edp = 2 };

struct Features {
  bool zero_skipping = false;      // compressed operands; zeros of the compressed operand cost no cycles
  bool speculation = false;        // skip outputs training will discard (see docs/chip-model.md)
  bool adaptive_dataflow = false;  // choose the compressed operand per Op by the model's own estimate
  bool pe_regrouping = false;      // choose the array split per Op among pe_array.regroupings
  bool reformulated_bn = false;    // BN statistics/apply fused into neighbouring operations
};

struct ChipSpec {
  std::string name;
  std::string source;  // file it was read from (for messages)

  // technology
  double node_nm = 28;
  double voltage_v = 0.8;
  double clock_mhz = 200;
  Precision precision = Precision::fp16;

  // PE array
  int pes = 256;
  std::array<int, 2> macs_per_pe{1, 2};  // per precision: fp16, fp8
  int accumulator_bits = 32;
  int fill_drain_cycles = 0;              // per tile: operand broadcast pipeline fill + output drain
  std::vector<RegroupShape> regroupings;  // [0] is the fixed shape when pe_regrouping is off
  int vector_lanes = 16;                  // element-wise unit (BN, ReLU, pooling, update): elements/cycle

  std::array<BufferSpec, kNumBuffers> buffers;

  // DRAM
  double dram_gb_per_s = 12.8;
  double dram_pj_per_bit = 10;

  // per-event energies (pJ)
  std::array<double, 2> mac_pj{0, 0};  // per precision: fp16, fp8; one multiply-accumulate that fires
  double register_read_pj_per_bit = 0;
  double register_write_pj_per_bit = 0;
  double metadata_pj = 0;   // one index event: decode of a compressed entry or encode of an element
  double vector_op_pj = 0;  // one element operation of the element-wise unit
  double leakage_pj_per_cycle = 0;

  // compression (bitmap format: one bit per dense element plus the nonzero values)
  int decode_latency_cycles = 0;          // extra pipeline stages per tile when walking compressed data
  double encode_elements_per_cycle = 64;  // compressor throughput over the dense compressed operand

  // speculation unit
  bool skip_pruned_weight_gradients = true;  // wg: no dW for weights that are pruned (zero)

  Features features;
  Compressed fixed_dataflow = Compressed::b;
  DataflowObjective objective = DataflowObjective::cycles;

  int value_bits() const { return precision_bits(precision); }
  int macs_per_pe_now() const { return macs_per_pe[static_cast<int>(precision)]; }
  double mac_pj_now() const { return mac_pj[static_cast<int>(precision)]; }
  double peak_macs_per_cycle() const { return static_cast<double>(pes) * macs_per_pe_now(); }
  double dram_bits_per_cycle() const { return dram_gb_per_s * 8e9 / (clock_mhz * 1e6); }
};

// Reads and validates a chip spec. Errors (trainer::Error) name the file, the key (e.g.
// "buffers.weights.size_kib"), its line, and what was expected; unknown keys are errors.
ChipSpec load_chip_spec(const std::string& path);
// The same from YAML text; `source` names it in messages.
ChipSpec parse_chip_spec(const std::string& yaml_text, const std::string& source);
// Checks cross-field constraints (regroupings cover the array, positive sizes...). Called by the loaders.
void validate_chip_spec(const ChipSpec& spec);

}  // namespace trainer
