#include "sparsity/policy.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "core/error.hpp"
#include "sparsity/bytes.hpp"
#include "sparsity/policy_impl.hpp"

namespace trainer {

namespace {

constexpr char kMagic[8] = {'T', 'R', 'N', 'R', 'P', 'R', 'U', 'N'};
constexpr uint32_t kVersion = 1;

void check_grad(const PrunableTensor& t) {
  TRAINER_CHECK(t.grad != nullptr && t.grad->numel() == t.weight->numel(),
                "pruning: gradient of '{}' is missing or has the wrong shape (expected {})", t.name,
                shape_str(t.weight->shape()));
}

bool has_momentum(const PrunableTensor& t) {
  return t.momentum != nullptr && !t.momentum->empty() && t.momentum->numel() == t.weight->numel();
}

}  // namespace

void prune_smallest_kept(Mask& mask, const float* values, int64_t count) {
  if (count <= 0) return;
  std::vector<int64_t> kept;
  kept.reserve(static_cast<size_t>(mask.count_kept()));
  for (int64_t i = 0; i < mask.size(); ++i)
    if (mask.kept(i)) kept.push_back(i);
  count = std::min<int64_t>(count, static_cast<int64_t>(kept.size()));
  pick_by_magnitude(kept, values, count, /*largest=*/false);
  for (int64_t j = 0; j < count; ++j) mask.set(kept[static_cast<size_t>(j)], false);
}

PruningPolicy::PruningPolicy(PruningOptions options, int64_t default_begin)
    : options_(std::move(options)), distribution_(parse_distribution(options_.distribution)) {
  const auto& o = options_;
  TRAINER_CHECK(o.sparsity >= 0.0 && o.sparsity < 1.0, "pruning: sparsity must be in [0, 1), got {}",
                o.sparsity);
  TRAINER_CHECK(o.initial_sparsity >= 0.0 && o.initial_sparsity <= o.sparsity,
                "pruning: initial sparsity must be in [0, sparsity {}], got {}", o.sparsity,
                o.initial_sparsity);
  TRAINER_CHECK(o.total_steps >= 1, "pruning: total_steps (steps of the whole run) must be >= 1, got {}",
                o.total_steps);
  TRAINER_CHECK(o.update_every >= 1, "pruning: update interval (ΔT) must be >= 1 step, got {}",
                o.update_every);
  TRAINER_CHECK(std::isfinite(o.erk_power) && o.erk_power >= 0.0,
                "pruning: erk power must be a finite number >= 0, got {}", o.erk_power);
  TRAINER_CHECK(o.erk_power == 1.0 || distribution_ == Distribution::erk,
                "pruning: erk power {} given with distribution '{}' (it applies to 'erk' only)", o.erk_power,
                o.distribution);
  for (const auto& [name, s] : o.layer_sparsity)
    TRAINER_CHECK(s >= 0.0 && s < 1.0, "pruning: layer sparsity of '{}' must be in [0, 1), got {}", name, s);
  begin_ = o.begin_step >= 0 ? o.begin_step : default_begin;
  end_ = o.end_step >= 0 ? o.end_step : std::llround(0.75 * static_cast<double>(o.total_steps));
  TRAINER_CHECK(end_ > begin_,
                "pruning: end step ({}) must come after the begin step ({}); total_steps is {}", end_, begin_,
                o.total_steps);
}

void PruningPolicy::build_slots(std::vector<PrunableTensor> tensors) {
  TRAINER_CHECK(slots_.empty(), "pruning: policy '{}' is already attached", kind());
  const size_t n = tensors.size();
  std::set<std::string> names;
  for (const auto& t : tensors) {
    TRAINER_CHECK(t.weight != nullptr && t.weight->numel() > 0, "pruning: tensor '{}' has no weights",
                  t.name);
    TRAINER_CHECK(t.weight->layout() == Layout::plain, "pruning: weight '{}' must be plain, got layout {}",
                  t.name, layout_name(t.weight->layout()));
    TRAINER_CHECK(t.grad != nullptr, "pruning: tensor '{}' has no gradient tensor", t.name);
    TRAINER_CHECK(names.insert(t.name).second, "pruning: tensor name '{}' appears twice", t.name);
  }
  for (const auto& name : options_.keep_dense)
    TRAINER_CHECK(names.count(name), "pruning: keep-dense tensor '{}' is not a prunable weight of this model",
                  name);
  for (const auto& [name, s] : options_.layer_sparsity)
    TRAINER_CHECK(names.count(name), "pruning: layer sparsity given for '{}', which is not a prunable weight",
                  name);

  slots_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    Slot& s = slots_[i];
    s.t = std::move(tensors[i]);
    s.mask = Mask(s.t.weight->shape());
    const bool named_dense = std::find(options_.keep_dense.begin(), options_.keep_dense.end(), s.t.name) !=
                             options_.keep_dense.end();
    s.override_target = options_.layer_sparsity.count(s.t.name) > 0;
    TRAINER_CHECK(!(s.override_target && (named_dense || s.t.keep_dense)),
                  "pruning: tensor '{}' is kept dense and also given a layer sparsity", s.t.name);
    const bool positional = options_.keep_first_last_dense && (i == 0 || i + 1 == n);
    s.prunable = !(s.t.keep_dense || named_dense || (positional && !s.override_target));
    s.last_c = std::nan("");
  }
  const std::vector<double> finals = scheduled_targets(end_);
  for (size_t i = 0; i < n; ++i) slots_[i].final_target = finals[i];
  if (keeps_dense_weights())
    for (auto& s : slots_)
      if (s.prunable) s.dense = *s.t.weight;
}

void PruningPolicy::attach(std::vector<PrunableTensor> tensors) {
  build_slots(std::move(tensors));
  init_masks();
  apply_masks();
}

void PruningPolicy::attach(std::vector<PrunableTensor> tensors, const std::vector<uint8_t>& state) {
  build_slots(std::move(tensors));
  bytes::Reader r(state.data(), state.size(), "pruning state");
  char magic[8];
  r.get_raw(magic, sizeof(magic));
  TRAINER_CHECK(std::memcmp(magic, kMagic, sizeof(magic)) == 0,
                "pruning state: not a pruning state (bad magic)");
  const uint32_t version = r.get<uint32_t>();
  TRAINER_CHECK(version == kVersion, "pruning state: format version {} (expected {})", version, kVersion);
  const std::string kind_saved = r.get_string();
  TRAINER_CHECK(kind_saved == kind(), "pruning state: written by policy '{}', this run uses '{}'", kind_saved,
                kind());
  const std::string dist_saved = r.get_string();
  TRAINER_CHECK(dist_saved == distribution_name(distribution_),
                "pruning state: written with distribution '{}', this run uses '{}'", dist_saved,
                distribution_name(distribution_));
  PruningStats st;
  st.steps = r.get<int64_t>();
  st.dense_wg_steps = r.get<int64_t>();
  st.mask_updates = r.get<int64_t>();
  st.last_update_step = r.get<int64_t>();
  st.last_pruned = r.get<int64_t>();
  st.last_grown = r.get<int64_t>();
  st.total_pruned = r.get<int64_t>();
  st.total_grown = r.get<int64_t>();
  const uint64_t generation = r.get<uint64_t>();
  const uint32_t count = r.get<uint32_t>();
  TRAINER_CHECK(count == slots_.size(), "pruning state: holds {} tensors, this model has {}", count,
                slots_.size());
  for (auto& s : slots_) {
    const std::string name = r.get_string();
    TRAINER_CHECK(name == s.t.name, "pruning state: expected tensor '{}' next, found '{}'", s.t.name, name);
    const bool prunable = r.get<uint8_t>() != 0;
    TRAINER_CHECK(prunable == s.prunable, "pruning state: tensor '{}' was {} when saved and is {} now", name,
                  prunable ? "pruned" : "kept dense", s.prunable ? "pruned" : "kept dense");
    s.last_c = r.get<double>();
    Mask m = Mask::from_bytes(r.get_blob(), "pruning state, mask of '" + name + "'");
    TRAINER_CHECK(m.shape() == s.t.weight->shape(), "pruning state: mask of '{}' has shape {}, the weight {}",
                  name, shape_str(m.shape()), shape_str(s.t.weight->shape()));
    s.mask = std::move(m);
    const bool has_dense = r.get<uint8_t>() != 0;
    TRAINER_CHECK(has_dense == !s.dense.empty(), "pruning state: dense weights of '{}' {} but {} expected",
                  name, has_dense ? "present" : "absent", s.dense.empty() ? "none" : "some");
    if (has_dense) {
      const uint64_t numel = r.get<uint64_t>();
      TRAINER_CHECK(static_cast<int64_t>(numel) == s.dense.numel(),
                    "pruning state: dense weights of '{}' have {} values, expected {}", name, numel,
                    s.dense.numel());
      r.get_raw(s.dense.data(), sizeof(float) * numel);
    }
  }
  TRAINER_CHECK(r.at_end(), "pruning state: trailing bytes after the last tensor");
  stats_ = st;
  generation_ = generation;
  apply_masks();
}

std::vector<uint8_t> PruningPolicy::save_state() const {
  std::vector<uint8_t> out;
  bytes::Writer w(out);
  w.put_raw(kMagic, sizeof(kMagic));
  w.put<uint32_t>(kVersion);
  w.put_string(kind());
  w.put_string(distribution_name(distribution_));
  for (int64_t v : {stats_.steps, stats_.dense_wg_steps, stats_.mask_updates, stats_.last_update_step,
                    stats_.last_pruned, stats_.last_grown, stats_.total_pruned, stats_.total_grown})
    w.put<int64_t>(v);
  w.put<uint64_t>(generation_);
  w.put<uint32_t>(static_cast<uint32_t>(slots_.size()));
  for (const auto& s : slots_) {
    w.put_string(s.t.name);
    w.put<uint8_t>(s.prunable ? 1 : 0);
    w.put<double>(s.last_c);
    w.put_blob(s.mask.to_bytes());
    w.put<uint8_t>(s.dense.empty() ? 0 : 1);
    if (!s.dense.empty()) {
      w.put<uint64_t>(static_cast<uint64_t>(s.dense.numel()));
      w.put_raw(s.dense.data(), sizeof(float) * static_cast<size_t>(s.dense.numel()));
    }
  }
  return out;
}

void PruningPolicy::before_update(int64_t step) {
  ++stats_.steps;
  const bool dense_wg = needs_dense_wg(step);
  if (dense_wg) ++stats_.dense_wg_steps;
  if (const double scale = pruned_gradient_scale(); dense_wg && scale != 1.0) {
    // Before the masks move: the positions that were pruned while this step's gradient was computed.
    const auto f = static_cast<float>(scale);
    for (auto& s : slots_) {
      if (!s.prunable) continue;
      check_grad(s.t);
      float* g = s.t.grad->data();
      for (int64_t i = 0; i < s.mask.size(); ++i)
        if (!s.mask.kept(i)) g[i] *= f;
    }
  }
  if (is_update_step(step)) {
    stats_.last_pruned = stats_.last_grown = 0;
    update_masks(step);
    ++stats_.mask_updates;
    stats_.last_update_step = step;
    stats_.total_pruned += stats_.last_pruned;
    stats_.total_grown += stats_.last_grown;
    if (stats_.last_pruned + stats_.last_grown > 0) ++generation_;
  }
  for (auto& s : slots_) {
    if (!s.prunable) continue;
    if (keeps_dense_weights()) {
      // SGD updates the dense weights with the dense gradient of the masked network (DNS).
      std::memcpy(s.t.weight->data(), s.dense.data(), sizeof(float) * static_cast<size_t>(s.dense.numel()));
      if (!dense_wg) {  // WG ran at the kept positions only: no gradient for the pruned ones
        check_grad(s.t);
        mask_gradient(s.mask, *s.t.grad);
      }
    } else {
      check_grad(s.t);
      mask_gradient(s.mask, *s.t.grad);
    }
  }
}

void PruningPolicy::after_update(int64_t /*step*/) {
  for (auto& s : slots_) {
    if (!s.prunable) continue;
    if (keeps_dense_weights())
      std::memcpy(s.dense.data(), s.t.weight->data(), sizeof(float) * static_cast<size_t>(s.dense.numel()));
    s.mask.apply(*s.t.weight);
  }
}

void PruningPolicy::prune_to_initial_sparsity() {
  if (begin_ != 0 || !(options_.initial_sparsity > 0.0)) return;
  update_masks(0);
  stats_.total_pruned += stats_.last_pruned;
  stats_.last_pruned = stats_.last_grown = 0;
}

void PruningPolicy::apply_masks() {
  for (auto& s : slots_)
    if (s.prunable) s.mask.apply(*s.t.weight);
}

void PruningPolicy::finish_update(Slot& slot, const Mask& before, bool zero_grown) {
  float* w = slot.t.weight->data();
  float* mom = has_momentum(slot.t) ? slot.t.momentum->data() : nullptr;
  float* g = nullptr;
  if (zero_grown) {
    check_grad(slot.t);
    g = slot.t.grad->data();
  }
  const bool dense_kept = keeps_dense_weights();
  int64_t pruned = 0, grown = 0;
  for (int64_t i = 0; i < before.size(); ++i) {
    const bool was = before.kept(i), is = slot.mask.kept(i);
    if (was && !is) {
      ++pruned;
      if (!dense_kept) {
        w[i] = 0.0f;
        if (mom) mom[i] = 0.0f;
      }
    } else if (!was && is) {
      ++grown;
      if (zero_grown) {
        w[i] = 0.0f;
        g[i] = 0.0f;
        if (mom) mom[i] = 0.0f;
      }
    }
  }
  stats_.last_pruned += pruned;
  stats_.last_grown += grown;
}

std::vector<double> PruningPolicy::scheduled_targets(int64_t step) const {
  const CubicSchedule cs{options_.initial_sparsity, options_.sparsity, begin_, end_, options_.update_every};
  const double p = cs.progress(step);
  const double global = cs.sparsity_at(step);
  std::vector<double> out(slots_.size(), 0.0);
  std::vector<size_t> erk_slots;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (!s.prunable) continue;
    if (s.override_target) {
      const double f = options_.layer_sparsity.at(s.t.name);
      out[i] = cubic_sparsity(std::min(options_.initial_sparsity, f), f, p);
    } else if (distribution_ == Distribution::erk) {
      erk_slots.push_back(i);
    } else {
      out[i] = global;  // uniform: each tensor; global: the group's target
    }
  }
  if (!erk_slots.empty()) {
    std::vector<Shape> shapes;
    for (size_t i : erk_slots) shapes.push_back(slots_[i].t.weight->shape());
    const std::vector<double> d = erk_densities(shapes, 1.0 - global, options_.erk_power);
    for (size_t j = 0; j < erk_slots.size(); ++j) out[erk_slots[j]] = 1.0 - d[j];
  }
  return out;
}

double PruningPolicy::target_sparsity(size_t i, int64_t step) const { return targets_at(step).at(i); }

std::vector<double> PruningPolicy::targets_at(int64_t step) const { return scheduled_targets(step); }

double PruningPolicy::scheduled_sparsity(int64_t step) const {
  const std::vector<double> t = targets_at(step);
  double pruned = 0.0, total = 0.0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].prunable) continue;
    const double n = static_cast<double>(slots_[i].mask.size());
    pruned += t[i] * n;
    total += n;
  }
  return total > 0.0 ? pruned / total : 0.0;
}

double PruningPolicy::sparsity() const {
  int64_t pruned = 0, total = 0;
  for (const auto& s : slots_)
    if (s.prunable) pruned += s.mask.count_pruned(), total += s.mask.size();
  return total ? static_cast<double>(pruned) / static_cast<double>(total) : 0.0;
}

double PruningPolicy::overall_sparsity() const {
  int64_t pruned = 0, total = 0;
  for (const auto& s : slots_) pruned += s.mask.count_pruned(), total += s.mask.size();
  return total ? static_cast<double>(pruned) / static_cast<double>(total) : 0.0;
}

const Mask* PruningPolicy::find_mask(const std::string& name) const {
  for (const auto& s : slots_)
    if (s.t.name == name) return &s.mask;
  return nullptr;
}

std::unique_ptr<PruningPolicy> make_policy(const std::string& kind, const PruningOptions& options) {
  TRAINER_CHECK(options.dns_dense_every == 1 || kind == "dns",
                "pruning: a dense WG every {} steps (dns_dense_every) applies to policy 'dns' only, not '{}'",
                options.dns_dense_every, kind);
  TRAINER_CHECK(options.dns_dense_scale == 1.0 || kind == "dns",
                "pruning: a dense WG scale of {} (dns_dense_scale) applies to policy 'dns' only, not '{}'",
                options.dns_dense_scale, kind);
  if (kind == "magnitude") return make_magnitude_policy(options);
  if (kind == "dns") return make_dns_policy(options);
  if (kind == "rigl") return make_rigl_policy(options);
  fail("pruning policy '{}' is unknown (expected magnitude, dns or rigl)", kind);
}

}  // namespace trainer
