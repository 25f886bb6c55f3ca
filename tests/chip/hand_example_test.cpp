// A tiny convolution on a tiny array, computed by hand cycle for cycle and pJ for pJ.
#include <gtest/gtest.h>

#include "chip/model.hpp"
#include "chip_test_util.hpp"

namespace trainer {
namespace {

// x: [1, 1, 3, 3]          w: [2, 1, 2, 2]              y: [1, 2, 2, 2]  (stride 1, no padding)
//   1 7 2                    w0 = 1 0    w1 = 1 1
//   0 3 0                         0 1         1 0
//   4 0 5
Op tiny_conv() {
  Tensor x({1, 1, 3, 3});
  const float xv[9] = {1, 7, 2, 0, 3, 0, 4, 0, 5};
  std::copy(xv, xv + 9, x.data());
  Tensor w({2, 1, 2, 2});
  const float wv[8] = {1, 0, 0, 1, 1, 1, 1, 0};
  std::copy(wv, wv + 8, w.data());
  Op op;
  op.layer = 0;
  op.layer_name = "tiny";
  op.kind = "conv2d";
  op.phase = Phase::ff;
  op.x_shape = {1, 1, 3, 3};
  op.w_shape = {2, 1, 2, 2};
  op.y_shape = {1, 2, 2, 2};
  op.dense_macs = 32;
  op.x_nz = std::make_shared<const Bitmap>(Bitmap::nonzeros_of(x));
  op.w_nz = std::make_shared<const Bitmap>(Bitmap::nonzeros_of(w));
  return op;
}

// The chip: testing::tiny_chip(): one group of 2x2 PEs, fp16 (1 MAC per PE per cycle, 16-bit values,
// 32-bit accumulators), fill/drain 1 cycle per tile, decode latency 1 cycle per tile when compressed,
// 1 KiB buffers of 4 banks x 64 bits (256 bits/cycle), DRAM 128 bits/cycle at 1 pJ/bit, MAC 1 pJ,
// register read/write 0.001/0.002 pJ/bit, SRAM read/write 0.01/0.02 pJ/bit, metadata 0.1 pJ,
// leakage 2 pJ/cycle.
//
// GEMM view of ff: rows = output positions (p, q) = 4, cols = output channels k = 2, reduction
// (c, r, s) = 4. Tiles of 2 rows x 2 cols: 2 row tiles x 1 column tile.
// Lines of a (receptive fields):  (0,0): 1 7 0 3 -> 3 nonzeros   (0,1): 7 2 3 0 -> 3
//                                 (1,0): 0 3 4 0 -> 2            (1,1): 3 0 0 5 -> 2
// Lines of b: w0 -> 2 nonzeros, w1 -> 3.
// Effectual products per output (window meets kernel taps):
//   w0 (taps (0,0), (1,1)):        2, 1, 0, 2
//   w1 (taps (0,0), (0,1), (1,0)): 2, 3, 2, 1       total 13.
TEST(HandExample, WeightsCompressed) {
  ChipSpec spec = testing::tiny_chip();
  spec.features.zero_skipping = true;
  const Op op = tiny_conv();
  const ConvWork w = analyse_exact(op);
  EXPECT_EQ(w.effectual_macs, 13);
  const ChipModel model(spec, CostMode::exact);
  const OpCost c = model.cost_mapping(op, w, Mapping{true, Compressed::b, 0}, true);

  // Cycles: each tile takes max(nnz w0, nnz w1) = 3, plus fill/drain 1 and decode 1 = 5; 2 tiles = 10.
  EXPECT_EQ(c.compute_cycles, 10);
  // MAC slots: every row walks every column's nonzeros: 4 rows x (2 + 3) = 20; 13 fire.
  EXPECT_EQ(c.events.mac_slots, 20);
  EXPECT_EQ(c.events.mac_fired, 13);
  // Stored (bitmap + nonzero values): x 9 + 6 x 16 = 105 bits; w 8 + 5 x 16 = 88 bits; y dense 8 x 16 = 128.
  // SRAM reads: x once per column tile (105), w once per row tile (2 x 88 = 176), y once to DRAM (128).
  // Both operands fit in half a buffer (4096 bits): DRAM reads 105 + 88 = 193, written into the buffers.
  // y: written to the activation buffer (128) and to DRAM (128).
  EXPECT_EQ(c.events.sram_read_bits[kActivationBuffer], 105 + 128);
  EXPECT_EQ(c.events.sram_write_bits[kActivationBuffer], 105 + 128);
  EXPECT_EQ(c.events.sram_read_bits[kWeightBuffer], 176);
  EXPECT_EQ(c.events.sram_write_bits[kWeightBuffer], 88);
  EXPECT_EQ(c.events.dram_read_bits, 193);
  EXPECT_EQ(c.events.dram_write_bits, 128);
  // Registers: per slot 2 operands x 16 bits written and read (640 each); per fired MAC the 32-bit
  // accumulator read and written (416 each); each of the 8 outputs read once to drain (256).
  EXPECT_EQ(c.events.register_write_bits, 640 + 416);
  EXPECT_EQ(c.events.register_read_bits, 640 + 416 + 256);
  // Metadata: one decode per slot (20) + one encode per element of w (8).
  EXPECT_EQ(c.events.metadata_events, 28);
  // Memory needs: DRAM 321 bits / 128 = 3 cycles; activation buffer 466 / 256 = 2; weights 264 / 256 = 2;
  // compressor 8 / 64 = 1. All under 10: no stall.
  EXPECT_EQ(c.cycles, 10);
  EXPECT_EQ(c.stall_cycles, 0);
  // Energy (pJ): MAC 13 x 1 = 13; registers 1312 x 0.001 + 1056 x 0.002 = 3.424;
  // SRAM weights 176 x 0.01 + 88 x 0.02 = 3.52; activations 233 x 0.01 + 233 x 0.02 = 6.99;
  // DRAM 321 x 1 = 321; metadata 28 x 0.1 = 2.8; leakage 10 x 2 = 20. Total 370.734.
  EXPECT_DOUBLE_EQ(c.energy.mac, 13);
  EXPECT_NEAR(c.energy.register_file, 3.424, 1e-12);
  EXPECT_NEAR(c.energy.sram[kWeightBuffer], 3.52, 1e-12);
  EXPECT_NEAR(c.energy.sram[kActivationBuffer], 6.99, 1e-12);
  EXPECT_EQ(c.energy.sram[kGradientBuffer], 0);
  EXPECT_DOUBLE_EQ(c.energy.dram, 321);
  EXPECT_NEAR(c.energy.metadata, 2.8, 1e-12);
  EXPECT_DOUBLE_EQ(c.energy.leakage, 20);
  EXPECT_NEAR(c.energy.total(), 370.734, 1e-9);
  // Utilization: 20 slots and 13 effectual MACs over 10 cycles x 4 PEs.
  EXPECT_DOUBLE_EQ(c.pe_utilization(), 0.5);
  EXPECT_DOUBLE_EQ(c.effectual_utilization(), 13.0 / 40.0);
}

TEST(HandExample, ActivationsCompressed) {
  ChipSpec spec = testing::tiny_chip();
  spec.features.zero_skipping = true;
  const Op op = tiny_conv();
  const ChipModel model(spec, CostMode::exact);
  const OpCost c = model.cost_mapping(op, analyse_exact(op), Mapping{true, Compressed::a, 0}, true);
  // Row tile 0: lines of 3 and 3 nonzeros -> 3 + 2 = 5; row tile 1: 2 and 2 -> 2 + 2 = 4. Total 9.
  EXPECT_EQ(c.compute_cycles, 9);
  // Slots: every column walks every row's nonzeros: 2 x (3 + 3 + 2 + 2) = 20.
  EXPECT_EQ(c.events.mac_slots, 20);
  // Metadata: 20 decodes + 9 encodes (x is the compressed operand).
  EXPECT_EQ(c.events.metadata_events, 29);
  EXPECT_EQ(c.compressed, "x");
}

TEST(HandExample, Dense) {
  const ChipSpec spec = testing::tiny_chip();  // every feature off
  const Op op = tiny_conv();
  const ChipModel model(spec, CostMode::exact);
  const OpCost c = model.cost_op(op);
  // Each tile: reduction 4 + fill/drain 1 = 5; 2 tiles = 10. Every slot fires: 4 x 2 x 4 = 32.
  EXPECT_EQ(c.compute_cycles, 10);
  EXPECT_EQ(c.events.mac_fired, 32);
  EXPECT_EQ(c.effectual_macs, 13);
  // Dense storage: x 144 bits, w 128, y 128. SRAM: activations read 144 + 128, written 144 + 128;
  // weights read 2 x 128, written 128. DRAM 272 + 128 = 400 bits -> 4 cycles; no stall.
  EXPECT_EQ(c.events.dram_read_bits, 272);
  EXPECT_EQ(c.cycles, 10);
  // Energy: MAC 32; registers (2048 + 256) x 0.001 + 2048 x 0.002 = 6.4; SRAM weights 2.56 + 2.56 = 5.12;
  // activations 2.72 + 5.44 = 8.16; DRAM 400; leakage 20. Total 471.68.
  EXPECT_NEAR(c.energy.register_file, 6.4, 1e-12);
  EXPECT_NEAR(c.energy.sram[kWeightBuffer], 5.12, 1e-12);
  EXPECT_NEAR(c.energy.sram[kActivationBuffer], 8.16, 1e-12);
  EXPECT_NEAR(c.energy.total(), 471.68, 1e-9);
}

// Batch norm ff over x [1, 2, 2, 2] (8 elements, dense, 128 bits) on the element-wise unit (4 lanes).
TEST(HandExample, BatchNormUnits) {
  Op op;
  op.layer = 1;
  op.layer_name = "bn";
  op.kind = "batchnorm2d";
  op.phase = Phase::ff;
  op.x_shape = op.y_shape = {1, 2, 2, 2};
  ChipSpec spec = testing::tiny_chip();
  const OpCost conv = ChipModel(spec, CostMode::exact).cost_op(op);
  // Conventional: 5 ops per element = 40 ops -> 10 cycles. x read 3 times (it fits: DRAM once, 128 bits),
  // y written once (128 bits to the buffer and to DRAM). DRAM 256 bits -> 2 cycles; buffer reads
  // 3 x 128 + 128 = 512, writes 128 + 128 = 256 -> 3 cycles.
  EXPECT_EQ(conv.unit, "vector");
  EXPECT_EQ(conv.cycles, 10);
  // Energy: 40 x 0.5 = 20; SRAM 512 x 0.01 + 256 x 0.02 = 10.24; DRAM 256; leakage 20. Total 306.24.
  EXPECT_NEAR(conv.energy.total(), 306.24, 1e-9);
  spec.features.reformulated_bn = true;
  const OpCost fused = ChipModel(spec, CostMode::exact).cost_op(op);
  // Reformulated: 4 ops per element in the neighbours' epilogue/prologue, no traffic, no cycles of its own.
  EXPECT_EQ(fused.unit, "fused");
  EXPECT_EQ(fused.cycles, 0);
  EXPECT_DOUBLE_EQ(fused.energy.total(), 16);
}

}  // namespace
}  // namespace trainer
