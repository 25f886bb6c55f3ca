#include "sparsity/policy.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numbers>
#include <set>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "nn/layer.hpp"
#include "train/optimizer.hpp"

using namespace trainer;

namespace {

// Stand-in for a model: conv and linear weights in model order, their gradients and SGD with momentum and
// weight decay (the real optimizer, so that "pruned stay zero" is checked against what training does).
struct FakeModel {
  std::vector<std::unique_ptr<Param>> params;
  std::unique_ptr<Sgd> sgd;
  Rng rng;

  explicit FakeModel(std::vector<std::pair<std::string, Shape>> shapes, uint64_t seed = 1,
                     SgdOptions opt = SgdOptions{0.9f, false, 5e-4f})
      : rng(seed) {
    std::vector<Param*> ptrs;
    for (auto& [name, shape] : shapes) {
      auto p = std::make_unique<Param>();
      p->name = name;
      p->value = Tensor(shape);
      p->grad = Tensor(shape);
      for (int64_t i = 0; i < p->value.numel(); ++i) p->value.data()[i] = static_cast<float>(rng.normal());
      ptrs.push_back(p.get());
      params.push_back(std::move(p));
    }
    sgd = std::make_unique<Sgd>(ptrs, opt);
  }

  static FakeModel small(uint64_t seed = 1) {
    return FakeModel({{"conv1.weight", {8, 3, 3, 3}},
                      {"conv2.weight", {16, 8, 3, 3}},
                      {"conv3.weight", {32, 16, 3, 3}},
                      {"fc.weight", {10, 32}}},
                     seed);
  }

  std::vector<PrunableTensor> tensors() {
    std::vector<PrunableTensor> out;
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor* mom = sgd->momentum_buffers().empty() ? nullptr : &sgd->momentum_buffers()[i];
      out.push_back({params[i]->name, &params[i]->value, &params[i]->grad, mom, false});
    }
    return out;
  }

  void random_grads(float scale = 0.1f) {
    for (auto& p : params)
      for (int64_t i = 0; i < p->grad.numel(); ++i)
        p->grad.data()[i] = scale * static_cast<float>(rng.normal());
  }

  // One training step as the loop drives it, with random "WG".
  void step(PruningPolicy& policy, int64_t t, float lr = 0.05f) {
    random_grads();
    policy.before_update(t);
    sgd->step(lr);
    policy.after_update(t);
  }
};

PruningOptions options(double sparsity, int64_t total, int64_t every, const std::string& dist = "uniform") {
  PruningOptions o;
  o.sparsity = sparsity;
  o.total_steps = total;
  o.update_every = every;
  o.distribution = dist;
  return o;
}

void expect_pruned_are_zero(const PruningPolicy& p) {
  for (size_t i = 0; i < p.size(); ++i) {
    const Mask& m = p.mask(i);
    const float* w = p.tensor(i).weight->data();
    for (int64_t j = 0; j < m.size(); ++j) {
      if (!m.kept(j)) {
        ASSERT_EQ(w[j], 0.0f) << p.tensor(i).name << "[" << j << "]";
      }
    }
  }
}

int64_t expected_pruned(double target, int64_t n) { return std::llround(target * static_cast<double>(n)); }

// Over tensors 1 and 2 together (values[i]: what the masks were chosen from): no pruned |value| above a
// kept one, i.e. one magnitude threshold split them.
void expect_one_threshold(const PruningPolicy& p, const std::vector<const float*>& values) {
  float max_pruned = 0.0f, min_kept = 1e30f;
  for (size_t i = 1; i <= 2; ++i)
    for (int64_t j = 0; j < p.mask(i).size(); ++j) {
      const float a = std::fabs(values[i][j]);
      if (p.mask(i).kept(j))
        min_kept = std::min(min_kept, a);
      else
        max_pruned = std::max(max_pruned, a);
    }
  EXPECT_LE(max_pruned, min_kept);
}

}  // namespace

TEST(PruningPolicy, FactoryRejectsBadKindsAndOptions) {
  EXPECT_THROW(make_policy("lottery", options(0.9, 100, 10)), Error);
  try {
    make_policy("lottery", options(0.9, 100, 10));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lottery"), std::string::npos);
  }
  EXPECT_THROW(make_policy("magnitude", options(1.0, 100, 10)), Error);
  EXPECT_THROW(make_policy("magnitude", options(0.9, 0, 10)), Error);
  EXPECT_THROW(make_policy("magnitude", options(0.9, 100, 10, "erdos")), Error);
  auto o = options(0.9, 100, 10);
  o.begin_step = 80;
  o.end_step = 50;
  EXPECT_THROW(make_policy("magnitude", o), Error);
  o = options(0.9, 100, 10, "erk");
  o.erk_power = -1.0;
  EXPECT_THROW(make_policy("magnitude", o), Error);
  o = options(0.9, 100, 10, "uniform");
  o.erk_power = 0.5;  // applies to erk only
  EXPECT_THROW(make_policy("magnitude", o), Error);
  o = options(0.9, 100, 10);
  o.dns_dense_every = 0;
  EXPECT_THROW(make_policy("dns", o), Error);
  o.dns_dense_every = 2;  // applies to dns only
  EXPECT_THROW(make_policy("rigl", o), Error);
  EXPECT_THROW(make_policy("magnitude", o), Error);
  EXPECT_STREQ(make_policy("dns", o)->kind(), "dns");
  o.dns_dense_every = 1;
  for (double bad : {0.0, -1.0, std::nan("")}) {
    o.dns_dense_scale = bad;
    EXPECT_THROW(make_policy("dns", o), Error) << bad;
  }
  o.dns_dense_scale = 2.0;  // applies to dns only
  EXPECT_THROW(make_policy("rigl", o), Error);
  EXPECT_STREQ(make_policy("dns", o)->kind(), "dns");
  for (const char* kind : {"magnitude", "dns", "rigl"})
    EXPECT_STREQ(make_policy(kind, options(0.5, 100, 10))->kind(), kind);
}

TEST(PruningPolicy, AttachValidatesNames) {
  FakeModel m = FakeModel::small();
  auto o = options(0.5, 100, 10);
  o.keep_dense = {"conv9.weight"};
  EXPECT_THROW(make_policy("magnitude", o)->attach(m.tensors()), Error);
  o = options(0.5, 100, 10);
  o.layer_sparsity = {{"nope", 0.5}};
  EXPECT_THROW(make_policy("magnitude", o)->attach(m.tensors()), Error);
  auto t = m.tensors();
  t[2].name = t[1].name;
  EXPECT_THROW(make_policy("magnitude", options(0.5, 100, 10))->attach(t), Error);
}

TEST(PruningPolicy, FirstAndLastKeptDenseByDefaultAndConfigurable) {
  {
    FakeModel m = FakeModel::small();
    auto p = make_policy("rigl", options(0.8, 100, 10));
    p->attach(m.tensors());
    EXPECT_FALSE(p->is_prunable(0));
    EXPECT_TRUE(p->is_prunable(1));
    EXPECT_TRUE(p->is_prunable(2));
    EXPECT_FALSE(p->is_prunable(3));
    EXPECT_EQ(p->mask(0).count_pruned(), 0);
    EXPECT_EQ(p->mask(3).count_pruned(), 0);
    EXPECT_EQ(p->mask(1).count_pruned(), expected_pruned(0.8, 16 * 8 * 9));
  }
  {
    FakeModel m = FakeModel::small();
    auto o = options(0.8, 100, 10);
    o.keep_first_last_dense = false;
    o.keep_dense = {"conv2.weight"};
    auto p = make_policy("rigl", o);
    p->attach(m.tensors());
    EXPECT_TRUE(p->is_prunable(0));
    EXPECT_FALSE(p->is_prunable(1));
    EXPECT_TRUE(p->is_prunable(3));
    EXPECT_EQ(p->mask(0).count_pruned(), expected_pruned(0.8, 8 * 27));
  }
  {
    FakeModel m = FakeModel::small();
    auto t = m.tensors();
    t[2].keep_dense = true;  // the caller's flag
    auto o = options(0.8, 100, 10);
    o.layer_sparsity = {{"fc.weight", 0.5}};  // an explicit target prunes the last layer after all
    auto p = make_policy("rigl", o);
    p->attach(t);
    EXPECT_FALSE(p->is_prunable(0));
    EXPECT_FALSE(p->is_prunable(2));
    EXPECT_TRUE(p->is_prunable(3));
    EXPECT_EQ(p->mask(3).count_pruned(), expected_pruned(0.5, 320));
  }
}

// Magnitude: the sparsity of each pruned tensor equals the cubic schedule's target at every update step
// (to the nearest weight), masks only shrink, pruned weights stay exactly zero through SGD with momentum
// and weight decay, no dense WG is ever requested.
TEST(MagnitudePolicy, FollowsTheCubicScheduleMonotonically) {
  FakeModel m = FakeModel::small();
  auto o = options(0.8, 400, 20);
  o.begin_step = 40;
  o.end_step = 250;
  auto p = make_policy("magnitude", o);
  p->attach(m.tensors());
  const CubicSchedule cs{0.0, 0.8, 40, 250, 20};
  std::vector<Mask> last;
  for (size_t i = 0; i < p->size(); ++i) last.push_back(p->mask(i));
  int updates = 0;
  for (int64_t t = 0; t < 400; ++t) {
    EXPECT_FALSE(p->needs_dense_wg(t));
    m.step(*p, t);
    for (size_t i = 0; i < p->size(); ++i) {
      ASSERT_TRUE(p->mask(i).is_subset_of(last[i])) << "step " << t << " tensor " << i;
      last[i] = p->mask(i);
      if (!p->is_prunable(i)) {
        ASSERT_EQ(p->mask(i).count_pruned(), 0);
        continue;
      }
      if (cs.is_update_step(t)) {
        EXPECT_NEAR(p->target_sparsity(i, t), cs.sparsity_at(t), 1e-12);
        ASSERT_EQ(p->mask(i).count_pruned(), expected_pruned(cs.sparsity_at(t), p->mask(i).size()))
            << "step " << t << " tensor " << i;
      }
    }
    updates += cs.is_update_step(t);
    expect_pruned_are_zero(*p);
  }
  EXPECT_NEAR(p->sparsity(), 0.8, 1.0 / 4608);
  EXPECT_LT(p->overall_sparsity(), p->sparsity());  // the dense first and last tensors count in overall
  EXPECT_EQ(p->stats().steps, 400);
  EXPECT_EQ(p->stats().dense_wg_steps, 0);
  EXPECT_EQ(p->stats().mask_updates, updates);
  EXPECT_EQ(p->stats().total_grown, 0);
  EXPECT_EQ(p->stats().total_pruned, expected_pruned(0.8, 16 * 8 * 9) + expected_pruned(0.8, 32 * 16 * 9));
}

// A gradual schedule that begins at step 0 above zero sparsity starts the run there: the masks hold the
// initial sparsity (the smallest initial magnitudes pruned, the weights zero) before step 0's passes,
// step 0's update prunes nothing more, and the pruned count is in the totals. Beginning later, or at zero
// sparsity, the run starts dense.
TEST(PruningPolicy, GradualScheduleFromStepZeroStartsAtTheInitialSparsity) {
  for (const char* kind : {"magnitude", "dns"}) {
    SCOPED_TRACE(kind);
    FakeModel m = FakeModel::small(3);
    auto o = options(0.8, 100, 10);
    o.begin_step = 0;
    o.end_step = 50;
    o.initial_sparsity = 0.5;
    auto p = make_policy(kind, o);
    const Tensor before = *m.tensors()[1].weight;
    p->attach(m.tensors());
    const int64_t n = p->mask(1).size();
    EXPECT_EQ(p->mask(1).count_pruned(), expected_pruned(0.5, n));
    expect_pruned_are_zero(*p);
    // The pruned are the smallest in magnitude: every pruned |w| <= every kept |w|.
    float max_pruned = 0.0f, min_kept = 1e30f;
    for (int64_t j = 0; j < n; ++j) {
      const float a = std::fabs(before.data()[j]);
      if (p->mask(1).kept(j))
        min_kept = std::min(min_kept, a);
      else
        max_pruned = std::max(max_pruned, a);
    }
    EXPECT_LE(max_pruned, min_kept);
    EXPECT_EQ(p->stats().mask_updates, 0);
    EXPECT_EQ(p->stats().total_pruned, p->mask(1).count_pruned() + p->mask(2).count_pruned());
    const uint64_t gen = p->generation();
    m.random_grads();
    p->before_update(0);
    EXPECT_EQ(p->stats().last_pruned, 0);
    EXPECT_EQ(p->generation(), gen);
  }
  struct Start {
    int64_t begin_step;
    double initial_sparsity;
  };
  for (const Start st : {Start{0, 0.0}, Start{10, 0.5}}) {
    FakeModel m = FakeModel::small(3);
    auto o = options(0.8, 100, 10);
    o.begin_step = st.begin_step;
    o.end_step = 50;
    o.initial_sparsity = st.initial_sparsity;
    auto p = make_policy("magnitude", o);
    p->attach(m.tensors());
    EXPECT_EQ(p->mask(1).count_pruned(), 0) << "begin " << o.begin_step;
  }
}

// WG leaves pruned positions untouched: after before_update the gradient is zero where the mask is, and
// the optimizer step alone (no after_update guard) keeps those weights at exactly zero.
TEST(MagnitudePolicy, MaskedWgKeepsPrunedWeightsZeroThroughTheOptimizer) {
  FakeModel m = FakeModel::small(5);
  auto o = options(0.7, 100, 10);
  o.begin_step = 0;
  o.end_step = 50;
  auto p = make_policy("magnitude", o);
  p->attach(m.tensors());
  for (int64_t t = 0; t < 100; ++t) {
    m.random_grads();
    p->before_update(t);
    for (size_t i = 0; i < p->size(); ++i)
      for (int64_t j = 0; j < p->mask(i).size(); ++j) {
        if (!p->mask(i).kept(j)) {
          ASSERT_EQ(p->tensor(i).grad->data()[j], 0.0f);
        }
      }
    m.sgd->step(0.1f);
    expect_pruned_are_zero(*p);
    p->after_update(t);
  }
  EXPECT_NEAR(p->sparsity(), 0.7, 1e-3);
}

// Global magnitude: one threshold across the pruned tensors.
TEST(MagnitudePolicy, GlobalPrunesTheSmallestAcrossTensors) {
  FakeModel m = FakeModel::small(9);
  // Scale conv2 down so that the global threshold takes most of its weights.
  for (int64_t i = 0; i < m.params[1]->value.numel(); ++i) m.params[1]->value.data()[i] *= 0.2f;
  std::vector<std::vector<float>> before;
  for (auto& prm : m.params) before.emplace_back(prm->value.data(), prm->value.data() + prm->value.numel());
  auto o = options(0.6, 10, 1, "global");
  o.begin_step = 0;
  o.end_step = 1;
  auto p = make_policy("magnitude", o);
  p->attach(m.tensors());
  m.random_grads();
  p->before_update(1);  // end step: the final target at once
  const int64_t n1 = 16 * 8 * 9, n2 = 32 * 16 * 9;
  EXPECT_EQ(p->mask(1).count_pruned() + p->mask(2).count_pruned(), expected_pruned(0.6, n1 + n2));
  EXPECT_GT(p->mask(1).sparsity(), 0.9);
  EXPECT_LT(p->mask(2).sparsity(), 0.6);
  expect_one_threshold(*p, {nullptr, before[1].data(), before[2].data()});
  EXPECT_DOUBLE_EQ(p->final_sparsity(1), 0.6);
}

TEST(MagnitudePolicy, ErkTargetsPerTensor) {
  FakeModel m = FakeModel::small(2);
  auto o = options(0.9, 10, 1, "erk");
  o.begin_step = 0;
  o.end_step = 1;
  auto p = make_policy("magnitude", o);
  p->attach(m.tensors());
  const std::vector<double> d = erk_densities({{16, 8, 3, 3}, {32, 16, 3, 3}}, 0.1);
  EXPECT_NEAR(p->final_sparsity(1), 1.0 - d[0], 1e-12);
  EXPECT_NEAR(p->final_sparsity(2), 1.0 - d[1], 1e-12);
  EXPECT_GT(d[0], d[1]);  // the smaller tensor stays denser
  m.random_grads();
  p->before_update(1);
  EXPECT_EQ(p->mask(1).count_pruned(), expected_pruned(1.0 - d[0], 16 * 8 * 9));
  EXPECT_EQ(p->mask(2).count_pruned(), expected_pruned(1.0 - d[1], 32 * 16 * 9));
  EXPECT_NEAR(p->sparsity(), 0.9, 1e-3);

  // With a power, the targets follow erk_densities at that power; the masks still meet them.
  FakeModel m2 = FakeModel::small(2);
  o.erk_power = 0.5;
  auto q = make_policy("magnitude", o);
  q->attach(m2.tensors());
  const std::vector<double> h = erk_densities({{16, 8, 3, 3}, {32, 16, 3, 3}}, 0.1, 0.5);
  EXPECT_NEAR(q->final_sparsity(1), 1.0 - h[0], 1e-12);
  EXPECT_NEAR(q->final_sparsity(2), 1.0 - h[1], 1e-12);
  EXPECT_LT(h[0], d[0]);
  m2.random_grads();
  q->before_update(1);
  EXPECT_EQ(q->mask(1).count_pruned(), expected_pruned(1.0 - h[0], 16 * 8 * 9));
  EXPECT_NEAR(q->sparsity(), 0.9, 1e-3);
}

TEST(MagnitudePolicy, LayerSparsityOverridesTheDistribution) {
  FakeModel m = FakeModel::small(2);
  auto o = options(0.9, 10, 1, "uniform");
  o.begin_step = 0;
  o.end_step = 1;
  o.layer_sparsity = {{"conv2.weight", 0.5}};
  auto p = make_policy("magnitude", o);
  p->attach(m.tensors());
  m.random_grads();
  p->before_update(1);
  EXPECT_EQ(p->mask(1).count_pruned(), expected_pruned(0.5, 16 * 8 * 9));
  EXPECT_EQ(p->mask(2).count_pruned(), expected_pruned(0.9, 32 * 16 * 9));
}

// DNS: the solved threshold makes each tensor's sparsity equal the schedule at every update, the dense
// weights keep their values at pruned positions, and every step needs (and counts) a dense WG.
TEST(DnsPolicy, TracksTheScheduleAndKeepsDenseWeights) {
  FakeModel m = FakeModel::small(3);
  auto o = options(0.75, 300, 10, "erk");
  o.begin_step = 20;
  o.end_step = 200;
  auto p = make_policy("dns", o);
  p->attach(m.tensors());
  int64_t spliced = 0;
  for (int64_t t = 0; t < 300; ++t) {
    EXPECT_TRUE(p->needs_dense_wg(t));
    m.step(*p, t, 0.2f);
    if (p->is_update_step(t)) {
      for (size_t i = 1; i <= 2; ++i)
        ASSERT_EQ(p->mask(i).count_pruned(), expected_pruned(p->target_sparsity(i, t), p->mask(i).size()))
            << "step " << t << " tensor " << i;
      spliced += p->stats().last_grown;
    }
    expect_pruned_are_zero(*p);
  }
  EXPECT_GT(spliced, 0);  // random gradients move weights across the band: surgery splices some back
  EXPECT_EQ(p->stats().dense_wg_steps, 300);
  EXPECT_NEAR(p->sparsity(), 0.75, 1e-3);
  int64_t pruned_nonzero = 0;
  for (size_t i = 1; i <= 2; ++i) {
    EXPECT_TRUE(std::isfinite(p->dns_c(i)));
    const Tensor& dense = p->dense_weight(i);
    for (int64_t j = 0; j < dense.numel(); ++j) {
      if (!p->mask(i).kept(j)) {
        pruned_nonzero += dense.data()[j] != 0.0f;
      } else {
        ASSERT_EQ(dense.data()[j], p->tensor(i).weight->data()[j]);
      }
    }
  }
  EXPECT_GT(pruned_nonzero, 0);
}

// --dns-surgery schedule: the last update at end_step, the mask fixed after it, and no dense WG from there
// on (the gradient reaching SGD is zero at the pruned positions, as under magnitude).
TEST(DnsPolicy, ScheduleSurgeryFixesTheMaskAtTheScheduleEnd) {
  FakeModel m = FakeModel::small(3);
  auto o = options(0.75, 300, 10, "erk");
  o.begin_step = 20;
  o.end_step = 200;
  o.dns_surgery_after_end = false;
  auto p = make_policy("dns", o);
  p->attach(m.tensors());
  std::vector<Mask> at_end;
  for (int64_t t = 0; t < 300; ++t) {
    EXPECT_EQ(p->needs_dense_wg(t), t < 200) << t;
    EXPECT_EQ(p->is_update_step(t), t >= 20 && t <= 200 && t % 10 == 0) << t;
    m.random_grads(1.0f);  // large: under "always" these would splice weights back after step 200
    p->before_update(t);
    if (t >= 200)
      for (size_t i = 1; i <= 2; ++i)
        for (int64_t j = 0; j < p->mask(i).size(); ++j)
          if (!p->mask(i).kept(j)) {
            ASSERT_EQ(p->tensor(i).grad->data()[j], 0.0f) << t << " " << i;
          }
    m.sgd->step(0.2f);
    p->after_update(t);
    if (t == 200)
      for (size_t i = 0; i < p->size(); ++i) at_end.push_back(p->mask(i));
    expect_pruned_are_zero(*p);
  }
  EXPECT_EQ(p->stats().last_update_step, 200);
  EXPECT_EQ(p->stats().dense_wg_steps, 200);
  for (size_t i = 0; i < p->size(); ++i) EXPECT_EQ(p->mask(i), at_end[i]) << i;
  EXPECT_NEAR(p->sparsity(), 0.75, 1e-3);
}

// --dns-dense-every K: the dense WG on steps 0, K, 2K, ... only; on those the gradient at the positions
// pruned during the step is multiplied by --dns-dense-scale (here 3), on the others the pruned positions
// get none.
TEST(DnsPolicy, DenseWgEveryKStepsScalesThePrunedGradient) {
  FakeModel m = FakeModel::small(3);
  auto o = options(0.75, 300, 10, "erk");
  o.begin_step = 20;
  o.end_step = 200;
  o.dns_dense_every = 4;
  o.dns_dense_scale = 3.0;
  auto p = make_policy("dns", o);
  p->attach(m.tensors());
  int64_t spliced = 0, scaled = 0;
  for (int64_t t = 0; t < 300; ++t) {
    const bool dense = t % 4 == 0;
    ASSERT_EQ(p->needs_dense_wg(t), dense) << t;
    m.random_grads(1.0f);
    std::vector<Mask> before;
    std::vector<std::vector<float>> g0;
    for (size_t i = 0; i < p->size(); ++i) {
      before.push_back(p->mask(i));
      const Tensor& g = *p->tensor(i).grad;
      g0.emplace_back(g.data(), g.data() + g.numel());
    }
    p->before_update(t);
    for (size_t i = 0; i < p->size(); ++i) {
      const float* g = p->tensor(i).grad->data();
      for (int64_t j = 0; j < p->mask(i).size(); ++j) {
        const float was = g0[i][static_cast<size_t>(j)];
        if (dense) {
          ASSERT_EQ(g[j], before[i].kept(j) ? was : 3.0f * was) << t << " " << i << " " << j;
          scaled += !before[i].kept(j);
        } else {
          ASSERT_EQ(g[j], p->mask(i).kept(j) ? was : 0.0f) << t << " " << i << " " << j;
        }
      }
    }
    m.sgd->step(0.2f);
    p->after_update(t);
    if (p->is_update_step(t)) spliced += p->stats().last_grown;
    expect_pruned_are_zero(*p);
  }
  EXPECT_GT(scaled, 0);
  EXPECT_GT(spliced, 0);  // the pruned weights still move (by the scaled gradient): some come back
  EXPECT_EQ(p->stats().dense_wg_steps, 75);
  EXPECT_NEAR(p->sparsity(), 0.75, 1e-3);
}

// With the same gradient at every step (no momentum, no weight decay), K = 4 with the scale 4 moves a
// pruned weight's dense value as far over 8 steps as K = 1 does (two scaled gradients stand for eight
// plain ones); with the default scale 1 a pruned weight moves a quarter as far, a kept one as far.
TEST(DnsPolicy, DenseWgEveryKStepsMovesPrunedWeightsByTheScaledGradient) {
  std::vector<std::vector<float>> dense;
  for (const auto& [k, scale] : std::vector<std::pair<int64_t, double>>{{1, 1.0}, {4, 4.0}, {4, 1.0}}) {
    FakeModel m({{"fc.weight", {10, 10}}}, 1, SgdOptions{0.0f, false, 0.0f});
    float* w = m.params[0]->value.data();
    for (int64_t i = 0; i < 100; ++i) w[i] = (i % 2 ? -1.0f : 1.0f) * (i < 50 ? 1.0f : 0.1f);
    auto o = options(0.5, 100, 100);
    o.initial_sparsity = 0.5;  // pruned from attach on, so step 0 already scales the pruned gradient
    o.begin_step = 0;
    o.end_step = 50;
    o.keep_first_last_dense = false;
    o.dns_c = 0.0;
    o.dns_dense_every = k;
    o.dns_dense_scale = scale;
    auto p = make_policy("dns", o);
    p->attach(m.tensors());
    ASSERT_EQ(p->mask(0).count_pruned(), 50);
    for (int64_t t = 0; t < 8; ++t) {
      m.params[0]->grad.fill(0.01f);
      p->before_update(t);
      m.sgd->step(0.5f);
      p->after_update(t);
    }
    for (int64_t i = 0; i < 100; ++i) ASSERT_EQ(p->mask(0).kept(i), i < 50) << i;
    const Tensor& d = p->dense_weight(0);
    dense.emplace_back(d.data(), d.data() + d.numel());
  }
  for (size_t i = 0; i < 100; ++i) {
    const float start = (i % 2 ? -1.0f : 1.0f) * (i < 50 ? 1.0f : 0.1f);
    EXPECT_NEAR(dense[0][i], start - 8 * 0.5f * 0.01f, 1e-6) << i;
    EXPECT_NEAR(dense[1][i], dense[0][i], 1e-6) << i;
    EXPECT_NEAR(dense[2][i], start - (i < 50 ? 8 : 2) * 0.5f * 0.01f, 1e-6) << i;
  }
}

// DNS's rule with a fixed c = 0 (t = μ): prune below 0.9t, splice from 1.1t, keep the state in between.
TEST(DnsPolicy, SplicesBackAWeightThatGrowsAboveTheBand) {
  FakeModel m({{"fc.weight", {10, 10}}}, 1, SgdOptions{0.0f, false, 0.0f});
  float* w = m.params[0]->value.data();
  for (int64_t i = 0; i < 100; ++i) w[i] = (i % 2 ? -1.0f : 1.0f) * (i < 50 ? 1.0f : 0.1f);
  auto o = options(0.5, 100, 10);
  o.begin_step = 0;
  o.end_step = 50;
  o.keep_first_last_dense = false;
  o.dns_c = 0.0;
  auto p = make_policy("dns", o);
  p->attach(m.tensors());
  // Step 0: μ = 0.55, t = 0.55: the 0.1 weights (< 0.495) go.
  m.params[0]->grad.zero();
  p->before_update(0);
  m.sgd->step(1.0f);
  p->after_update(0);
  for (int64_t i = 0; i < 100; ++i) ASSERT_EQ(p->mask(0).kept(i), i < 50) << i;
  EXPECT_EQ(w[60], 0.0f);
  EXPECT_EQ(p->dense_weight(0).data()[60], 0.1f);
  // Steps 1..10: the dense gradient drives weight 60 to 0.8 (above 1.1t), weight 61 to -0.55 (in the band,
  // pruned: stays pruned) and weight 10 to 0.55 (in the band, kept: stays kept). lr 1, no momentum: w =
  // target.
  for (int64_t t = 1; t <= 10; ++t) {
    float* g = m.params[0]->grad.data();
    m.params[0]->grad.zero();
    p->before_update(t);  // the dense weights are in place now
    if (t == 1) {
      g[60] = w[60] - 0.8f;
      g[61] = w[61] + 0.55f;
      g[10] = w[10] - 0.55f;
    }
    m.sgd->step(1.0f);
    p->after_update(t);
    if (t < 10) {
      EXPECT_EQ(w[60], 0.0f);  // still masked until the next update
    }
  }
  // At step 10: μ = 0.557, so 0.9t = 0.501 and 1.1t = 0.613.
  EXPECT_TRUE(p->mask(0).kept(60));
  EXPECT_FLOAT_EQ(w[60], 0.8f);  // back with its trained value
  EXPECT_FALSE(p->mask(0).kept(61));
  EXPECT_TRUE(p->mask(0).kept(10));
  EXPECT_FLOAT_EQ(w[10], 0.55f);
  EXPECT_EQ(p->stats().last_grown, 1);
  EXPECT_EQ(p->stats().last_pruned, 0);
}

// With the solved threshold, a pruned weight that grows past every kept one must come back.
TEST(DnsPolicy, TrackingModeSplicesTheWeightThatGrewMost) {
  FakeModel m({{"fc.weight", {20, 20}}}, 4, SgdOptions{0.0f, false, 0.0f});
  auto o = options(0.5, 100, 10);
  o.begin_step = 0;
  o.end_step = 10;
  o.initial_sparsity = 0.5;
  o.keep_first_last_dense = false;
  auto p = make_policy("dns", o);
  p->attach(m.tensors());
  m.params[0]->grad.zero();
  p->before_update(0);
  m.sgd->step(1.0f);
  p->after_update(0);
  EXPECT_EQ(p->mask(0).count_pruned(), 200);
  int64_t victim = 0;
  while (p->mask(0).kept(victim)) ++victim;
  for (int64_t t = 1; t <= 10; ++t) {
    m.params[0]->grad.zero();
    p->before_update(t);
    if (t == 1) m.params[0]->grad.data()[victim] = -100.0f;  // w += 100
    m.sgd->step(1.0f);
    p->after_update(t);
  }
  EXPECT_TRUE(p->mask(0).kept(victim));
  EXPECT_GT(m.params[0]->value.data()[victim], 99.0f);
  EXPECT_EQ(p->mask(0).count_pruned(), 200);
}

// RigL: fixed sparsity from the start; at an update, the dropped are the smallest active magnitudes, the
// grown the largest dense gradients among the inactive, the grown start at zero (weight and momentum).
TEST(RiglPolicy, DropsSmallestGrowsLargestGradientAtZero) {
  FakeModel m = FakeModel::small(7);
  auto o = options(0.8, 400, 100);
  o.seed = 3;
  auto p = make_policy("rigl", o);
  p->attach(m.tensors());
  EXPECT_EQ(p->end_step(), 300);
  for (size_t i = 1; i <= 2; ++i) {
    EXPECT_EQ(p->mask(i).count_pruned(), expected_pruned(0.8, p->mask(i).size()));
  }
  expect_pruned_are_zero(*p);
  for (int64_t t = 0; t < 100; ++t) {
    EXPECT_FALSE(p->needs_dense_wg(t));
    m.step(*p, t);
  }
  EXPECT_TRUE(p->needs_dense_wg(100));
  EXPECT_FALSE(p->needs_dense_wg(101));
  EXPECT_EQ(p->stats().dense_wg_steps, 0);

  // Step 100 with a dense gradient: big, distinct values at chosen inactive positions of conv3.
  m.random_grads(0.01f);
  const size_t L = 2;
  const Mask before = p->mask(L);
  const int64_t active = before.count_kept();
  const double frac = 0.15 * (1.0 + std::cos(std::numbers::pi * 100.0 / 300.0));
  const int64_t n_drop = std::llround(frac * static_cast<double>(active));
  ASSERT_GT(n_drop, 10);
  std::set<int64_t> hot;
  float* g = m.params[L]->grad.data();
  for (int64_t j = 0, v = 0; j < before.size() && static_cast<int64_t>(hot.size()) < n_drop; ++j)
    if (!before.kept(j)) {
      hot.insert(j);
      ++v;
      g[j] = (v % 2 ? -1.0f : 1.0f) * (10.0f + static_cast<float>(v));
    }
  std::vector<float> w_before(m.params[L]->value.data(), m.params[L]->value.data() + before.size());
  p->before_update(100);
  const Mask& after = p->mask(L);
  EXPECT_EQ(after.count_kept(), active);  // sparsity unchanged
  EXPECT_EQ(p->stats().dense_wg_steps, 1);
  std::vector<float> dropped_mag, survivor_mag;
  for (int64_t j = 0; j < before.size(); ++j) {
    if (hot.count(j)) {
      ASSERT_TRUE(after.kept(j)) << "largest gradient not grown at " << j;
      ASSERT_EQ(m.params[L]->value.data()[j], 0.0f);
      ASSERT_EQ(m.sgd->momentum_buffers()[L].data()[j], 0.0f);
    } else if (!before.kept(j)) {
      ASSERT_FALSE(after.kept(j)) << j;
    } else if (!after.kept(j)) {
      dropped_mag.push_back(std::fabs(w_before[static_cast<size_t>(j)]));
    } else {
      survivor_mag.push_back(std::fabs(w_before[static_cast<size_t>(j)]));
    }
  }
  EXPECT_EQ(static_cast<int64_t>(dropped_mag.size()), n_drop);
  EXPECT_LE(*std::max_element(dropped_mag.begin(), dropped_mag.end()),
            *std::min_element(survivor_mag.begin(), survivor_mag.end()));
  m.sgd->step(0.05f);
  p->after_update(100);
  for (int64_t j : hot) ASSERT_EQ(m.params[L]->value.data()[j], 0.0f);  // the update step does not move them
  expect_pruned_are_zero(*p);
  EXPECT_EQ(p->stats().last_grown, p->stats().last_pruned);
  // The next step trains them.
  m.step(*p, 101);
  int64_t moved = 0;
  for (int64_t j : hot) moved += m.params[L]->value.data()[j] != 0.0f;
  EXPECT_EQ(moved, static_cast<int64_t>(hot.size()));
}

TEST(RiglPolicy, StopsAtSeventyFivePercent) {
  FakeModel m = FakeModel::small(8);
  auto o = options(0.9, 400, 50, "erk");
  auto p = make_policy("rigl", o);
  p->attach(m.tensors());
  std::vector<Mask> at_end;
  uint64_t gen_at_end = 0;
  for (int64_t t = 0; t < 400; ++t) {
    m.step(*p, t);
    if (t == 299) {
      for (size_t i = 0; i < p->size(); ++i) at_end.push_back(p->mask(i));
      gen_at_end = p->generation();
    }
  }
  EXPECT_EQ(p->stats().mask_updates, 5);  // 50, 100, ..., 250
  EXPECT_EQ(p->stats().dense_wg_steps, 5);
  EXPECT_EQ(p->stats().last_update_step, 250);
  EXPECT_EQ(p->generation(), gen_at_end);
  for (size_t i = 0; i < p->size(); ++i) EXPECT_EQ(p->mask(i), at_end[i]);
  EXPECT_GT(p->stats().total_grown, 0);
  EXPECT_NEAR(p->sparsity(), 0.9, 1e-3);
  for (int64_t t = 300; t < 1000; ++t) EXPECT_FALSE(p->needs_dense_wg(t));
}

// Checkpoint and resume: a policy rebuilt from save_state() on the model's saved tensors continues exactly
// as the uninterrupted one (masks, weights, dense copies, counters).
// Global DNS: one threshold t for all the group's tensors at an update, so each tensor's own c is what
// puts its μ + c·σ at that t; the tensor with small weights gives up most.
TEST(DnsPolicy, GlobalSharesOneThresholdAcrossTensors) {
  FakeModel m = FakeModel::small(5);
  for (int64_t i = 0; i < m.params[1]->value.numel(); ++i) m.params[1]->value.data()[i] *= 0.2f;
  auto o = options(0.6, 100, 10, "global");
  o.begin_step = 0;
  o.end_step = 10;
  o.initial_sparsity = 0.3;
  auto p = make_policy("dns", o);
  p->attach(m.tensors());
  // attach pruned to the initial 30% with every weight kept before: the flip point is |w|/0.9 for all, so
  // no pruned weight is larger than a kept one, across both tensors.
  const int64_t n1 = p->mask(1).size(), n2 = p->mask(2).size();
  EXPECT_EQ(p->mask(1).count_pruned() + p->mask(2).count_pruned(), expected_pruned(0.3, n1 + n2));
  EXPECT_GT(p->mask(1).sparsity(), 0.6);  // of 30% over both, the small tensor gives up most
  EXPECT_LT(p->mask(2).sparsity(), 0.2);
  expect_one_threshold(*p, {nullptr, p->dense_weight(1).data(), p->dense_weight(2).data()});
  for (int64_t t = 1; t <= 10; ++t) {
    m.random_grads();
    p->before_update(t);
    if (t == 10) {  // the end step: the final 60% over the group, one t behind both tensors' c
      EXPECT_EQ(p->mask(1).count_pruned() + p->mask(2).count_pruned(), expected_pruned(0.6, n1 + n2));
      double thr[2];
      for (size_t i = 1; i <= 2; ++i) {
        const Tensor& d = p->dense_weight(i);
        double sum = 0.0, sum2 = 0.0;
        for (int64_t j = 0; j < d.numel(); ++j) {
          const double a = std::fabs(static_cast<double>(d.data()[j]));
          sum += a;
          sum2 += a * a;
        }
        const double mu = sum / static_cast<double>(d.numel());
        const double sigma = std::sqrt(sum2 / static_cast<double>(d.numel()) - mu * mu);
        thr[i - 1] = mu + p->dns_c(i) * sigma;
      }
      EXPECT_NEAR(thr[0], thr[1], 1e-9 * thr[1]);
      EXPECT_GT(p->dns_c(1), p->dns_c(2) + 1.0);  // conv2's weights are 5x smaller: t is far out in them
    }
    m.sgd->step(0.05f);
    p->after_update(t);
    expect_pruned_are_zero(*p);
  }
  EXPECT_GT(p->mask(1).sparsity(), 0.95);
}

// Global RigL: the initial weights' magnitudes, under one threshold, fix each tensor's sparsity; drop and
// grow keep it, and the tensor's target is what its mask holds.
TEST(RiglPolicy, GlobalFixesEachTensorsShareFromTheInitialWeights) {
  FakeModel m = FakeModel::small(6);
  for (int64_t i = 0; i < m.params[1]->value.numel(); ++i) m.params[1]->value.data()[i] *= 0.3f;
  std::vector<std::vector<float>> init;
  for (auto& prm : m.params) init.emplace_back(prm->value.data(), prm->value.data() + prm->value.numel());
  auto o = options(0.7, 400, 50, "global");
  auto p = make_policy("rigl", o);
  p->attach(m.tensors());
  const int64_t n1 = p->mask(1).size(), n2 = p->mask(2).size();
  EXPECT_EQ(p->mask(1).count_pruned() + p->mask(2).count_pruned(), expected_pruned(0.7, n1 + n2));
  EXPECT_GT(p->mask(1).sparsity(), 0.9);
  EXPECT_LT(p->mask(2).sparsity(), 0.7);
  expect_one_threshold(*p, {nullptr, init[1].data(), init[2].data()});
  const int64_t pruned1 = p->mask(1).count_pruned(), pruned2 = p->mask(2).count_pruned();
  EXPECT_DOUBLE_EQ(p->target_sparsity(1, 0), p->mask(1).sparsity());
  EXPECT_DOUBLE_EQ(p->scheduled_sparsity(0), static_cast<double>(pruned1 + pruned2) / (n1 + n2));
  int64_t grown = 0;
  for (int64_t t = 0; t < 300; ++t) {
    m.step(*p, t);
    if (p->is_update_step(t)) grown += p->stats().last_grown;
  }
  EXPECT_GT(grown, 0);
  EXPECT_EQ(p->mask(1).count_pruned(), pruned1);
  EXPECT_EQ(p->mask(2).count_pruned(), pruned2);
  EXPECT_EQ(p->mask(0).count_kept(), p->mask(0).size());  // the first conv stays dense
}

TEST(PruningPolicy, StateSurvivesCheckpointAndResume) {
  for (const char* dist : {"erk", "global"})
    for (const char* kind : {"magnitude", "dns", "rigl"}) {
      SCOPED_TRACE(std::string(kind) + " " + dist);
      auto o = options(0.8, 200, 10, dist);
      o.begin_step = 10;
      FakeModel a = FakeModel::small(11), b = FakeModel::small(99);
      auto pa = make_policy(kind, o);
      pa->attach(a.tensors());
      for (int64_t t = 0; t < 75; ++t) a.step(*pa, t);
      const std::vector<uint8_t> state = pa->save_state();
      // "Restore" the model: parameters, momentum and SGD step count as the trainer's checkpoint would.
      for (size_t i = 0; i < a.params.size(); ++i) {
        b.params[i]->value = a.params[i]->value;
        b.sgd->momentum_buffers()[i] = a.sgd->momentum_buffers()[i];
      }
      b.sgd->set_steps(a.sgd->steps());
      b.rng = a.rng;
      auto pb = make_policy(kind, o);
      pb->attach(b.tensors(), state);
      for (size_t i = 0; i < pa->size(); ++i) {
        ASSERT_EQ(pa->mask(i), pb->mask(i));
        EXPECT_EQ(pa->target_sparsity(i, 75), pb->target_sparsity(i, 75));
      }
      EXPECT_EQ(pb->stats().steps, 75);
      EXPECT_EQ(pb->generation(), pa->generation());
      for (int64_t t = 75; t < 200; ++t) {
        a.step(*pa, t);
        b.step(*pb, t);
      }
      for (size_t i = 0; i < pa->size(); ++i) {
        ASSERT_EQ(pa->mask(i), pb->mask(i));
        for (int64_t j = 0; j < a.params[i]->value.numel(); ++j)
          ASSERT_EQ(a.params[i]->value.data()[j], b.params[i]->value.data()[j]) << i << " " << j;
      }
      EXPECT_EQ(pa->save_state(), pb->save_state());
    }
}

TEST(PruningPolicy, ForeignOrCorruptStateFailsLoudly) {
  FakeModel a = FakeModel::small();
  auto o = options(0.8, 200, 10);
  auto pa = make_policy("magnitude", o);
  pa->attach(a.tensors());
  std::vector<uint8_t> state = pa->save_state();
  EXPECT_THROW(make_policy("rigl", o)->attach(a.tensors(), state), Error);
  std::vector<uint8_t> cut(state.begin(), state.end() - 3);
  EXPECT_THROW(make_policy("magnitude", o)->attach(a.tensors(), cut), Error);
  FakeModel other({{"conv1.weight", {8, 3, 3, 3}},
                   {"convX.weight", {16, 8, 3, 3}},
                   {"conv3.weight", {32, 16, 3, 3}},
                   {"fc.weight", {10, 32}}});
  try {
    make_policy("magnitude", o)->attach(other.tensors(), state);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("convX.weight"), std::string::npos) << e.what();
  }
}
