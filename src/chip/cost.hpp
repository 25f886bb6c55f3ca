// The cost stage's vocabulary: event counts, the energy they cost, and the cost of one Op.
// Every energy is an event count times a per-event energy of the ChipSpec (see energy.hpp), so the
// breakdown always sums to the total. Exact mode counts integers (held in doubles, exact below 2^53);
// statistical mode holds expectations.
#pragma once

#include <array>
#include <string>

#include "chip/spec.hpp"
#include "ops/op.hpp"

namespace trainer {

struct Events {
  double mac_fired = 0;  // multiply-accumulates that fire (operands both nonzero, or every slot when dense)
  double mac_slots = 0;  // PE slots spent on products: fired, or gated because the streamed operand is zero
  double register_read_bits = 0, register_write_bits = 0;
  std::array<double, kNumBuffers> sram_read_bits{}, sram_write_bits{};
  double dram_read_bits = 0, dram_write_bits = 0;
  double metadata_events = 0;  // compressed entries decoded by PEs + elements encoded by the compressor
  double vector_ops = 0;       // element operations of the element-wise (BN / ReLU / pooling / update) unit
  double cycles = 0;           // the Op's cycles, the basis of leakage

  Events& operator+=(const Events& o);
};

// Energy by component, in pJ.
struct EnergyBreakdown {
  double mac = 0;
  double register_file = 0;
  std::array<double, kNumBuffers> sram{};
  double dram = 0;
  double metadata = 0;
  double vector = 0;
  double leakage = 0;
  double total() const;
  EnergyBreakdown& operator+=(const EnergyBreakdown& o);
};

// Which operand is held compressed and how the array is split, for one Op on the PE array.
struct Mapping {
  bool skipping = false;                  // zero skipping on: one operand walked compressed
  Compressed compressed = Compressed::b;  // meaningful only when skipping
  int shape = 0;                          // index into ChipSpec::regroupings
};

struct OpCost {
  int32_t layer = -1;
  std::string layer_name;
  std::string kind;
  Phase phase = Phase::ff;
  std::string unit;  // "pe_array", "vector", "fused" (no traffic of its own), "none"
  std::string compressed =
      "-";  // operand walked compressed ("x", "w", "dy"), or "-" when dense / not on the array
  std::string regroup = "-";  // array split, e.g. "16x16", or "-"
  uint64_t calls = 1;         // Ops summed into this record (reports sum a layer's phase over steps)
  double dense_macs = 0;      // conventional MAC count of the phase (the basis of dense-equivalent FLOPs)
  double effectual_macs = 0;  // products whose operands are both nonzero (and whose output is needed)
  double skipped_dead_output_macs = 0;  // effectual products not done because training discards the output
  double compute_cycles = 0;            // the array or the element-wise unit alone
  double stall_cycles = 0;              // waiting for DRAM, a buffer port or the compressor
  double cycles = 0;
  double peak_macs_per_cycle = 0;
  Events events;
  EnergyBreakdown energy;

  // Fraction of MAC slots used by products (fired or gated) over the Op's cycles; <= 1.
  double pe_utilization() const;
  // Effectual MACs over the Op's cycles at peak; <= 1.
  double effectual_utilization() const;
};

}  // namespace trainer
