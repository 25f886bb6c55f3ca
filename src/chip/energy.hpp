// Energy: event counts times the spec's per-event energies, by component. The components are the only
// place energy is computed, so the breakdown sums to the total by construction.
#pragma once

#include "chip/cost.hpp"
#include "chip/spec.hpp"

namespace trainer {

EnergyBreakdown energy_of(const Events& ev, const ChipSpec& spec);

}  // namespace trainer
