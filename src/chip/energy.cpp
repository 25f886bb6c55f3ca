#include "chip/energy.hpp"

namespace trainer {

Events& Events::operator+=(const Events& o) {
  mac_fired += o.mac_fired;
  mac_slots += o.mac_slots;
  register_read_bits += o.register_read_bits;
  register_write_bits += o.register_write_bits;
  for (int b = 0; b < kNumBuffers; ++b) {
    sram_read_bits[b] += o.sram_read_bits[b];
    sram_write_bits[b] += o.sram_write_bits[b];
  }
  dram_read_bits += o.dram_read_bits;
  dram_write_bits += o.dram_write_bits;
  metadata_events += o.metadata_events;
  vector_ops += o.vector_ops;
  cycles += o.cycles;
  return *this;
}

double EnergyBreakdown::total() const {
  double t = mac + register_file + dram + metadata + vector + leakage;
  for (double s : sram) t += s;
  return t;
}

EnergyBreakdown& EnergyBreakdown::operator+=(const EnergyBreakdown& o) {
  mac += o.mac;
  register_file += o.register_file;
  for (int b = 0; b < kNumBuffers; ++b) sram[b] += o.sram[b];
  dram += o.dram;
  metadata += o.metadata;
  vector += o.vector;
  leakage += o.leakage;
  return *this;
}

EnergyBreakdown energy_of(const Events& ev, const ChipSpec& spec) {
  EnergyBreakdown e;
  e.mac = ev.mac_fired * spec.mac_pj_now();
  e.register_file = ev.register_read_bits * spec.register_read_pj_per_bit +
                    ev.register_write_bits * spec.register_write_pj_per_bit;
  for (int b = 0; b < kNumBuffers; ++b)
    e.sram[b] = ev.sram_read_bits[b] * spec.buffers[b].read_pj_per_bit +
                ev.sram_write_bits[b] * spec.buffers[b].write_pj_per_bit;
  e.dram = (ev.dram_read_bits + ev.dram_write_bits) * spec.dram_pj_per_bit;
  e.metadata = ev.metadata_events * spec.metadata_pj;
  e.vector = ev.vector_ops * spec.vector_op_pj;
  e.leakage = ev.cycles * spec.leakage_pj_per_cycle;
  return e;
}

}  // namespace trainer
