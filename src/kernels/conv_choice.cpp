#include "kernels/conv_choice.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "core/timer.hpp"
#include "kernels/conv_dnnl.hpp"
#include "kernels/sparse_conv.hpp"
#include "kernels/sparse_weights.hpp"

namespace trainer {

const char* conv_kernel_name(ConvKernel k) { return k == ConvKernel::dense ? "dense" : "sparse"; }

const char* conv_phase_name(ConvPhase p) {
  switch (p) {
    case ConvPhase::ff:
      return "ff";
    case ConvPhase::bp:
      return "bp";
    case ConvPhase::wg:
      return "wg";
  }
  return "?";
}

namespace {

constexpr ConvPhase kPhases[3] = {ConvPhase::ff, ConvPhase::bp, ConvPhase::wg};
constexpr ConvKernel kKernels[2] = {ConvKernel::dense, ConvKernel::sparse};
constexpr const char* kCoeffNames[3] = {"ns_per_call", "ns_per_mac", "ns_per_elem"};
constexpr int kFormatVersion = 1;

double& coeff_ref(KernelCoeffs& c, int i) {
  return i == 0 ? c.ns_per_call : i == 1 ? c.ns_per_mac : c.ns_per_elem;
}
double coeff_val(const KernelCoeffs& c, int i) {
  return i == 0 ? c.ns_per_call : i == 1 ? c.ns_per_mac : c.ns_per_elem;
}

}  // namespace

double conv_activation_elems(ConvPhase /*phase*/, const ConvGeom& g) {
  // ff: x + y; bp: dy + dx; wg: x + dy: the input-sized and the output-sized operand in every phase.
  return static_cast<double>(g.N) * static_cast<double>(g.C * g.H * g.W + g.K * g.P() * g.Q());
}

ConvShape ConvShape::of(const ConvGeom& g) { return {g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad}; }

ConvGeom ConvShape::geom(int64_t N) const {
  ConvGeom g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = S, g.stride = stride, g.pad = pad;
  return g;
}

std::string ConvShape::name() const {
  std::string n = fmt::format("{}->{} {}x{}", C, K, R, S);
  if (stride != 1) n += fmt::format(" s{}", stride);
  if (2 * pad != R - 1 || 2 * pad != S - 1) n += fmt::format(" p{}", pad);
  return n + fmt::format(" @{}x{}", H, W);
}

// ---------------------------------------------------------------------------------------------------
// The model

const ShapeCosts* ConvCostModel::entry_for(const ConvGeom& g) const {
  const ConvShape s = ConvShape::of(g);
  for (const ShapeCosts& e : shapes)
    if (e.shape == s) return &e;
  return nullptr;
}

const KernelCoeffs& ConvCostModel::coeffs_for(ConvPhase phase, ConvKernel kernel, const ConvGeom& g) const {
  if (const ShapeCosts* e = entry_for(g)) return e->coeffs[static_cast<int>(phase)][static_cast<int>(kernel)];
  return at(phase, kernel);
}

double ConvCostModel::estimate_ns(ConvPhase phase, ConvKernel kernel, const ConvGeom& g, double density,
                                  bool reorder) const {
  const KernelCoeffs& c = coeffs_for(phase, kernel, g);
  if (kernel == ConvKernel::dense || std::isnan(density)) density = 1.0;
  density = std::clamp(density, 0.0, 1.0);
  const double macs = density * static_cast<double>(g.macs());
  const double elems = conv_activation_elems(phase, g);
  double t = c.ns_per_call + c.ns_per_mac * macs + c.ns_per_elem * elems;
  if (reorder) t += reorder_ns_per_elem * elems;
  return t;
}

ConvKernel ConvCostModel::choose(ConvPhase phase, const ConvGeom& g, double density,
                                 bool activations_nchw16n) const {
  const double dense = estimate_ns(phase, ConvKernel::dense, g, 1.0, activations_nchw16n);
  const double sparse = estimate_ns(phase, ConvKernel::sparse, g, density, !activations_nchw16n);
  // The kernel that needs no conversion keeps the call unless the other is estimated faster by the
  // margin: in a pruned run (NCHW16n) that is the sparse kernel, else oneDNN.
  if (activations_nchw16n)
    return dense < sparse * (1.0 - sparse_margin) ? ConvKernel::dense : ConvKernel::sparse;
  return sparse < dense * (1.0 - sparse_margin) ? ConvKernel::sparse : ConvKernel::dense;
}

double ConvCostModel::break_even_density(ConvPhase phase, const ConvGeom& g, bool activations_nchw16n) const {
  return break_even(phase, g, activations_nchw16n, !activations_nchw16n);
}

double ConvCostModel::kernel_break_even_density(ConvPhase phase, const ConvGeom& g) const {
  return break_even(phase, g, false, false);
}

double ConvCostModel::break_even(ConvPhase phase, const ConvGeom& g, bool dense_reorders,
                                 bool sparse_reorders) const {
  // Sparse is chosen below the density where its estimate meets dense's scaled by the margin: dense's
  // times (1 - margin) where oneDNN holds the call (it needs no conversion, or neither does), divided by
  // it where the sparse kernel does (dense pays the reorder).
  const bool sparse_holds = dense_reorders && !sparse_reorders;
  const double est = estimate_ns(phase, ConvKernel::dense, g, 1.0, dense_reorders);
  const double dense = sparse_holds ? est / (1.0 - sparse_margin) : est * (1.0 - sparse_margin);
  const double fixed = estimate_ns(phase, ConvKernel::sparse, g, 0.0, sparse_reorders);
  const double per_density =
      coeffs_for(phase, ConvKernel::sparse, g).ns_per_mac * static_cast<double>(g.macs());
  if (!(per_density > 0.0)) return fixed < dense ? 1.0 : 0.0;
  const double d = (dense - fixed) / per_density;
  return std::clamp(d, 0.0, 1.0);
}

ConvCostModel ConvCostModel::defaults() { return defaults_for(builtin_set()); }

std::string ConvCostModel::builtin_set() {
  const std::string backend = sparse_conv_backend();
  if (backend == "avx512" && cpu_is_amd()) return "avx512-amd";
  return backend;
}

namespace {

// One backend's built-in set: coeffs[phase][kernel] = {ns_per_call, ns_per_mac, ns_per_elem}, each from
// `trainer calibrate --threads 2 --batch 64 --repeats 30` on the machine docs/sparse-training.md names
// ("Built-in defaults").
struct BuiltInCosts {
  const char* backend;
  KernelCoeffs coeffs[3][2];
  double reorder_ns_per_elem;
};

const BuiltInCosts kBuiltInCosts[] = {
    // 2-vCPU Intel Xeon VM with AVX-512 (oneDNN 2.6, gcc 12 -O3 -march=native), load average 0.9.
    {"avx512",
     {{{41736.6, 0.00459261, 0.0972477}, {51640.6, 0.0140556, 0.0310134}},
      {{57890.7, 0.00466121, 0.131978}, {53074.6, 0.0131737, 0.0337482}},
      {{0, 0.00635335, 0.0799059}, {41754.6, 0.0181247, 0.0665204}}},
     0.418548},
    // 2-vCPU AMD EPYC (Zen 4) VM with AVX-512 (oneDNN 2.6 jit:avx512_core, gcc 12 -O3 -march=native),
    // idle. Per multiply the sparse kernels cost about what they cost on the Intel machine and oneDNN
    // 1.4-1.7x more, so sparse pays from higher densities here (docs/sparse-training.md).
    {"avx512-amd",
     {{{23325.6, 0.00773802, 0.0617433}, {2446.2, 0.0143503, 0.0236087}},
      {{29356.3, 0.00719541, 0.0813743}, {3193.85, 0.013174, 0.0392213}},
      {{4985.42, 0.00883358, 0.024167}, {10653.3, 0.0159915, 0.0123828}}},
     0.524995},
    // 2-vCPU AMD EPYC (Zen 3) VM, AVX2 + FMA, no AVX-512; oneDNN runs its jit:avx2 kernels.
    {"avx2",
     {{{78486.7, 0.0119645, 0.257959}, {878.103, 0.0211237, 0.0479997}},
      {{67114.6, 0.0102213, 0.282199}, {9493.07, 0.0185946, 0.0681799}},
      {{0, 0.0152845, 0.285676}, {20460.4, 0.0240843, 0.0187999}}},
     0.737328},
    // The AVX2 machine with this project built for baseline x86-64 (-DTRAINER_NATIVE=OFF): the sparse
    // kernels in their portable form, oneDNN still dispatching its AVX2 code at run time. FF and BP cost
    // about 13-14x the AVX2 ones per multiply (WG 2.7x): sparse FF and BP pay only below 4-9% density,
    // WG below about a quarter.
    {"portable",
     {{{67225.4, 0.0137579, 0.291724}, {0, 0.275397, 0.0390691}},
      {{95758.8, 0.0109869, 0.282094}, {17879.9, 0.266183, 0.116026}},
      {{15245.1, 0.0146166, 0.306252}, {17414, 0.0639158, 0.0450096}}},
     0.463023},
};

}  // namespace

ConvCostModel ConvCostModel::defaults_for(const std::string& backend) {
  const BuiltInCosts* set = nullptr;
  for (const BuiltInCosts& c : kBuiltInCosts)
    if (backend == c.backend) set = &c;
  if (!set)
    fail(
        "cost model: no built-in defaults for the sparse-kernel backend '{}' (expected avx512, avx512-amd, "
        "avx2 or portable)",
        backend);
  ConvCostModel m;
  for (int p = 0; p < 3; ++p)
    for (int k = 0; k < 2; ++k) m.coeffs[p][k] = set->coeffs[p][k];
  m.reorder_ns_per_elem = set->reorder_ns_per_elem;
  m.threads = 2;
  m.source = fmt::format("built-in defaults ({})", backend);
  return m;
}

// ---------------------------------------------------------------------------------------------------
// JSON

namespace {

using json = nlohmann::ordered_json;

[[noreturn]] void bad_key(const std::string& path, const std::string& key, const std::string& what) {
  fail("calibration '{}': key '{}' {}", path, key, what);
}

const json& member(const json& obj, const std::string& name, const std::string& path,
                   const std::string& key) {
  if (!obj.is_object()) bad_key(path, key.substr(0, key.rfind('.')), "must be an object");
  const auto it = obj.find(name);
  if (it == obj.end()) bad_key(path, key, "missing");
  return *it;
}

double non_negative(const json& obj, const std::string& name, const std::string& path,
                    const std::string& key) {
  const json& v = member(obj, name, path, key);
  if (!v.is_number() || !(v.get<double>() >= 0.0) || !std::isfinite(v.get<double>()))
    bad_key(path, key, fmt::format("must be a non-negative number (got {})", v.dump()));
  return v.get<double>();
}

int64_t integer_in(const json& obj, const std::string& name, int64_t lo, int64_t hi, const std::string& path,
                   const std::string& key) {
  const json& v = member(obj, name, path, key);
  if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
    bad_key(path, key, fmt::format("must be an integer in [{}, {}] (got {})", lo, hi, v.dump()));
  return v.get<int64_t>();
}

// obj["ff" | "bp" | "wg"]["dense" | "sparse"]{ns_per_call, ns_per_mac, ns_per_elem}; keys named from
// prefix ("" or "shapes[2].").
void read_coeffs(const json& obj, const std::string& prefix, const std::string& path,
                 std::array<std::array<KernelCoeffs, 2>, 3>& out) {
  for (ConvPhase p : kPhases) {
    const std::string pk = prefix + conv_phase_name(p);
    const json& pj = member(obj, conv_phase_name(p), path, pk);
    if (!pj.is_object()) bad_key(path, pk, "must be an object");
    for (ConvKernel k : kKernels) {
      const std::string kk = pk + "." + conv_kernel_name(k);
      const json& kj = member(pj, conv_kernel_name(k), path, kk);
      if (!kj.is_object()) bad_key(path, kk, "must be an object");
      for (int i = 0; i < 3; ++i)
        coeff_ref(out[static_cast<int>(p)][static_cast<int>(k)], i) =
            non_negative(kj, kCoeffNames[i], path, kk + "." + kCoeffNames[i]);
    }
  }
}

void write_coeffs(const std::array<std::array<KernelCoeffs, 2>, 3>& c, json& j) {
  for (ConvPhase p : kPhases)
    for (ConvKernel k : kKernels) {
      json e;
      for (int i = 0; i < 3; ++i)
        e[kCoeffNames[i]] = coeff_val(c[static_cast<int>(p)][static_cast<int>(k)], i);
      j[conv_phase_name(p)][conv_kernel_name(k)] = e;
    }
}

constexpr const char* kShapeKeys[8] = {"C", "H", "W", "K", "R", "S", "stride", "pad"};

int64_t& shape_ref(ConvShape& s, int i) {
  int64_t* f[8] = {&s.C, &s.H, &s.W, &s.K, &s.R, &s.S, &s.stride, &s.pad};
  return *f[i];
}

}  // namespace

ConvCostModel ConvCostModel::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRAINER_CHECK(in.good(), "calibration '{}': cannot open it", path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TRAINER_CHECK(!in.bad(), "calibration '{}': read failed", path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail("calibration '{}': not valid JSON (truncated?): {}", path, e.what());
  }
  TRAINER_CHECK(j.is_object(), "calibration '{}': expected a JSON object at the top level", path);

  const json& version = member(j, "version", path, "version");
  if (!version.is_number_integer() || version.get<int64_t>() != kFormatVersion)
    bad_key(path, "version", fmt::format("must be {} (got {})", kFormatVersion, version.dump()));

  ConvCostModel m;
  m.source = path;
  const json& threads = member(j, "threads", path, "threads");
  if (!threads.is_number_integer() || threads.get<int64_t>() < 0 || threads.get<int64_t>() > 1 << 20)
    bad_key(path, "threads", fmt::format("must be a non-negative integer (got {})", threads.dump()));
  m.threads = static_cast<int>(threads.get<int64_t>());
  m.reorder_ns_per_elem = non_negative(j, "reorder_ns_per_elem", path, "reorder_ns_per_elem");
  if (j.contains("sparse_margin")) {  // optional (files written before it had none)
    m.sparse_margin = non_negative(j, "sparse_margin", path, "sparse_margin");
    if (!(m.sparse_margin < 0.5))
      bad_key(path, "sparse_margin", fmt::format("must be below 0.5 (got {})", m.sparse_margin));
  }
  read_coeffs(j, "", path, m.coeffs);
  // Optional: per-shape entries (`trainer calibrate --model`).
  if (const auto it = j.find("shapes"); it != j.end()) {
    if (!it->is_array()) bad_key(path, "shapes", "must be an array");
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string key = fmt::format("shapes[{}]", i);
      const json& e = (*it)[i];
      if (!e.is_object()) bad_key(path, key, "must be an object");
      ShapeCosts sc;
      for (int f = 0; f < 8; ++f) {
        const bool is_pad = f == 7;
        shape_ref(sc.shape, f) =
            integer_in(e, kShapeKeys[f], is_pad ? 0 : 1, int64_t{1} << 20, path, key + "." + kShapeKeys[f]);
      }
      const ConvShape& sh = sc.shape;
      if (sh.H + 2 * sh.pad < sh.R || sh.W + 2 * sh.pad < sh.S)
        bad_key(path, key, fmt::format("is {}: the kernel is larger than the padded input", sh.name()));
      for (size_t k = 0; k < m.shapes.size(); ++k)
        if (m.shapes[k].shape == sh)
          bad_key(path, key, fmt::format("repeats the shape of shapes[{}] ({})", k, sh.name()));
      read_coeffs(e, key + ".", path, sc.coeffs);
      m.shapes.push_back(sc);
    }
  }
  return m;
}

void ConvCostModel::save(const std::string& path) const {
  json j;
  j["format"] = "trainer convolution cost model (docs/sparse-training.md)";
  j["version"] = kFormatVersion;
  j["threads"] = threads;
  j["reorder_ns_per_elem"] = reorder_ns_per_elem;
  j["sparse_margin"] = sparse_margin;
  write_coeffs(coeffs, j);
  if (!shapes.empty()) {
    json arr = json::array();
    for (const ShapeCosts& sc : shapes) {
      json e;
      ConvShape sh = sc.shape;
      e["name"] = sh.name();  // for the reader; the numbers below are what is loaded
      for (int f = 0; f < 8; ++f) e[kShapeKeys[f]] = shape_ref(sh, f);
      write_coeffs(sc.coeffs, e);
      arr.push_back(e);
    }
    j["shapes"] = arr;
  }
  const std::string text = j.dump(2) + "\n";
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  TRAINER_CHECK(f != nullptr, "calibration '{}': cannot create '{}'", path, tmp);
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!written || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("calibration '{}': cannot write the file", path);
  }
}

// ---------------------------------------------------------------------------------------------------
// Fitting

namespace {

// Least squares on the columns in `use` (rows already weighted); false when they are (nearly) linearly
// dependent. Columns are scaled to unit max before forming the normal equations.
bool solve_subset(const std::vector<std::array<double, 3>>& a, const std::vector<double>& b,
                  const std::array<bool, 3>& use, std::array<double, 3>& x) {
  int idx[3], n = 0;
  for (int i = 0; i < 3; ++i)
    if (use[i]) idx[n++] = i;
  double scale[3] = {0, 0, 0};
  for (const auto& row : a)
    for (int i = 0; i < n; ++i) scale[i] = std::max(scale[i], std::abs(row[idx[i]]));
  for (int i = 0; i < n; ++i)
    if (!(scale[i] > 0.0)) return false;
  double m[3][4] = {};
  for (size_t r = 0; r < a.size(); ++r)
    for (int i = 0; i < n; ++i) {
      const double ai = a[r][idx[i]] / scale[i];
      for (int k = 0; k < n; ++k) m[i][k] += ai * a[r][idx[k]] / scale[k];
      m[i][n] += ai * b[r];
    }
  double max_diag = 0.0;
  for (int i = 0; i < n; ++i) max_diag = std::max(max_diag, m[i][i]);
  for (int col = 0; col < n; ++col) {  // Gaussian elimination with partial pivoting
    int piv = col;
    for (int r = col + 1; r < n; ++r)
      if (std::abs(m[r][col]) > std::abs(m[piv][col])) piv = r;
    if (!(std::abs(m[piv][col]) > 1e-10 * max_diag)) return false;
    for (int k = 0; k <= n; ++k) std::swap(m[col][k], m[piv][k]);
    for (int r = col + 1; r < n; ++r) {
      const double f = m[r][col] / m[col][col];
      for (int k = col; k <= n; ++k) m[r][k] -= f * m[col][k];
    }
  }
  double y[3] = {0, 0, 0};
  for (int i = n - 1; i >= 0; --i) {
    double s = m[i][n];
    for (int k = i + 1; k < n; ++k) s -= m[i][k] * y[k];
    y[i] = s / m[i][i];
  }
  x = {0.0, 0.0, 0.0};
  for (int i = 0; i < n; ++i) x[idx[i]] = y[i] / scale[i];
  return true;
}

}  // namespace

FitResult fit_kernel_coeffs(const std::vector<FitPoint>& points) {
  FitResult out;
  out.points = static_cast<int>(points.size());
  if (points.empty()) return out;
  std::vector<std::array<double, 3>> a;
  std::vector<double> b;
  for (const FitPoint& p : points) {
    TRAINER_CHECK(
        p.ns > 0.0 && std::isfinite(p.ns) && p.macs >= 0.0 && p.elems >= 0.0,
        "cost model fit: a point needs a positive time and non-negative counts (got {} ns, {} macs, "
        "{} elems)",
        p.ns, p.macs, p.elems);
    a.push_back({1.0 / p.ns, p.macs / p.ns, p.elems / p.ns});  // relative error: rows weighted by 1/t
    b.push_back(1.0);
  }
  // Every subset of the three unknowns, largest first; the best non-negative solution is the NNLS one.
  double best = INFINITY;
  std::array<double, 3> best_x = {0.0, 0.0, 0.0};
  for (int mask : {7, 3, 5, 6, 1, 2, 4}) {
    const std::array<bool, 3> use = {(mask & 1) != 0, (mask & 2) != 0, (mask & 4) != 0};
    std::array<double, 3> x;
    if (!solve_subset(a, b, use, x)) continue;
    if (x[0] < 0.0 || x[1] < 0.0 || x[2] < 0.0) continue;
    double ss = 0.0;
    for (size_t r = 0; r < a.size(); ++r) {
      const double e = a[r][0] * x[0] + a[r][1] * x[1] + a[r][2] * x[2] - b[r];
      ss += e * e;
    }
    if (ss < best * (1.0 - 1e-12)) {
      best = ss;
      best_x = x;
    }
  }
  out.coeffs = {best_x[0], best_x[1], best_x[2]};
  for (const FitPoint& p : points) {
    const double model = best_x[0] + best_x[1] * p.macs + best_x[2] * p.elems;
    out.max_rel_error = std::max(out.max_rel_error, std::abs(model - p.ns) / p.ns);
  }
  return out;
}

ConvCostModel fit_cost_model(const CalibrationData& data, std::FILE* log) {
  ConvCostModel m;
  m.threads = data.threads;
  m.source = "calibration";
  for (ConvPhase p : kPhases)
    for (ConvKernel k : kKernels) {
      std::vector<FitPoint> pts;
      for (const CalibrationSample& s : data.samples)
        if (s.generic && s.phase == p && s.kernel == k)
          pts.push_back({s.executed_macs, s.activation_elems, s.ns});
      const FitResult r = fit_kernel_coeffs(pts);
      m.at(p, k) = r.coeffs;
      if (log)
        fmt::print(log,
                   "fit {} {:<6}: ns_per_call {:9.1f}  ns_per_mac {:.4e}  ns_per_elem {:.4e}  "
                   "({} points, max relative error {:.1f}%)\n",
                   conv_phase_name(p), conv_kernel_name(k), r.coeffs.ns_per_call, r.coeffs.ns_per_mac,
                   r.coeffs.ns_per_elem, r.points, 100 * r.max_rel_error);
    }
  // Per-shape entries. Within one shape the activation elements are a constant, so the sparse fit has
  // two unknowns (per call, per multiply); the dense kernel was timed once per phase, and its entry is
  // that time over its multiplies, so that it scales with the batch.
  std::vector<ConvShape> own;
  for (const CalibrationSample& s : data.samples)
    if (s.own_entry && std::find(own.begin(), own.end(), ConvShape::of(s.geom)) == own.end())
      own.push_back(ConvShape::of(s.geom));
  for (const ConvShape& shape : own) {
    ShapeCosts e;
    e.shape = shape;
    std::string line = fmt::format("fit shape {:<22}:", shape.name());
    for (ConvPhase p : kPhases) {
      std::vector<FitPoint> pts;
      double dense_ns = 0.0, dense_macs = 0.0;
      for (const CalibrationSample& s : data.samples) {
        if (!s.own_entry || s.phase != p || !(ConvShape::of(s.geom) == shape)) continue;
        if (s.kernel == ConvKernel::dense) {
          TRAINER_CHECK(
              s.ns > 0.0 && std::isfinite(s.ns) && s.executed_macs > 0.0,
              "cost model fit: shape {}: a dense sample needs a positive time and multiplies (got {} "
              "ns, {} macs)",
              shape.name(), s.ns, s.executed_macs);
          dense_ns = s.ns, dense_macs = s.executed_macs;
        } else {
          pts.push_back({s.executed_macs, 0.0, s.ns});
        }
      }
      KernelCoeffs& d = e.coeffs[static_cast<int>(p)][static_cast<int>(ConvKernel::dense)];
      d.ns_per_mac = dense_macs > 0.0 ? dense_ns / dense_macs : 0.0;
      const FitResult r = fit_kernel_coeffs(pts);
      e.coeffs[static_cast<int>(p)][static_cast<int>(ConvKernel::sparse)] = r.coeffs;
      line += fmt::format("  {} sparse max error {:.1f}%", conv_phase_name(p), 100 * r.max_rel_error);
    }
    m.shapes.push_back(e);
    if (log) fmt::print(log, "{}\n", line);
  }
  // Through the origin, relative error: minimise sum ((a e_i - t_i) / t_i)^2.
  double num = 0.0, den = 0.0;
  for (const ReorderSample& s : data.reorders) {
    if (!(s.ns > 0.0)) continue;
    num += s.elems / s.ns;
    den += (s.elems / s.ns) * (s.elems / s.ns);
  }
  m.reorder_ns_per_elem = den > 0.0 ? num / den : 0.0;
  if (log && !data.reorders.empty()) {
    double err = 0.0;
    for (const ReorderSample& s : data.reorders)
      if (s.ns > 0.0) err = std::max(err, std::abs(m.reorder_ns_per_elem * s.elems - s.ns) / s.ns);
    fmt::print(log, "fit reorder  : ns_per_elem {:.4f} ({} points, max relative error {:.1f}%)\n",
               m.reorder_ns_per_elem, data.reorders.size(), 100 * err);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------------
// Measuring

namespace {

struct CalShape {
  const char* name;
  int64_t C, H, K, R, stride, pad;
};

// ResNet-20-style layers (at 28/14/7 resolution): the three stages' 3x3 convs, the stride-2 3x3 entries
// of stages 2 and 3, and their 1x1 stride-2 shortcuts.
constexpr CalShape kShapes[] = {
    {"16->16 3x3 @28x28", 16, 28, 16, 3, 1, 1},    {"32->32 3x3 @14x14", 32, 14, 32, 3, 1, 1},
    {"64->64 3x3 @7x7", 64, 7, 64, 3, 1, 1},       {"16->32 3x3 s2 @28x28", 16, 28, 32, 3, 2, 1},
    {"32->64 3x3 s2 @14x14", 32, 14, 64, 3, 2, 1}, {"16->32 1x1 s2 @28x28", 16, 28, 32, 1, 2, 0},
    {"32->64 1x1 s2 @14x14", 32, 14, 64, 1, 2, 0},
};
constexpr int kQuickShapes[] = {1, 5};
constexpr double kDensities[] = {1.0, 0.5, 0.3, 0.2, 0.1, 0.05};
constexpr double kQuickDensities[] = {1.0, 0.3, 0.05};

class ThreadsGuard {
 public:
  explicit ThreadsGuard(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadsGuard() { omp_set_num_threads(saved_); }
  ThreadsGuard(const ThreadsGuard&) = delete;
  ThreadsGuard& operator=(const ThreadsGuard&) = delete;

 private:
  int saved_;
};

Tensor random_tensor(const Shape& shape, Layout layout, Rng& rng) {
  Tensor t(shape, Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(2 * rng.uniform() - 1);
  return layout == Layout::plain ? t : t.to_layout(layout);
}

}  // namespace

namespace {

// Everything one calibration shape needs, created before any timing.
struct ShapeRun {
  std::string name;
  bool generic = true;  // a built-in shape (the generic fit)
  bool own = false;     // in CalibrationOptions::own_shapes (an entry of its own)
  uint64_t seed = 0;
  ConvGeom g;
  Tensor x16c, dy16c, x16n, dy16n, w;
  std::unique_ptr<ConvDnnl> conv;
  Tensor y, dx, dw;
  struct Sparse {
    double density = 1.0;
    SparseWeights sw;
    SparseConvScratch scratch;  // one per weight structure, so that its cached tap programs stay valid
    std::vector<float> values;
    SparseCounters counters[3];
  };
  std::vector<std::unique_ptr<Sparse>> sparse;
  Tensor ysp, dxsp;       // the sparse kernels' outputs (shared: only written)
  Tensor reorder_src[4];  // x and dy in nChw16c and in NCHW16n
  Tensor reorder_dst[4];  // where they are converted to (kept, as Conv2d keeps its buffers)
};

// One timed call: the fastest of the timed passes lands in *ns.
struct Job {
  std::function<void()> run;
  double* ns;
};

}  // namespace

CalibrationData measure_conv_kernels(const CalibrationOptions& o, std::FILE* log) {
  TRAINER_CHECK(o.threads >= 1 && o.threads <= 1024, "calibration: threads must be in [1, 1024] (got {})",
                o.threads);
  TRAINER_CHECK(o.batch >= 1 && o.batch <= 4096, "calibration: batch must be in [1, 4096] (got {})", o.batch);
  TRAINER_CHECK(o.repeats >= 1 && o.repeats <= 1000, "calibration: repeats must be in [1, 1000] (got {})",
                o.repeats);
  ThreadsGuard threads(o.threads);
  CalibrationData data;
  data.threads = o.threads;
  data.batch = o.batch;
  if (o.quick)
    data.densities.assign(std::begin(kQuickDensities), std::end(kQuickDensities));
  else
    data.densities.assign(std::begin(kDensities), std::end(kDensities));
  std::vector<int> shapes;
  if (o.quick)
    shapes.assign(std::begin(kQuickShapes), std::end(kQuickShapes));
  else
    for (int i = 0; i < static_cast<int>(std::size(kShapes)); ++i) shapes.push_back(i);

  // Operands, weights and kernels for every point first.
  const int64_t N = o.batch;
  std::vector<std::unique_ptr<ShapeRun>> runs;
  for (int si : shapes) {
    auto r = std::make_unique<ShapeRun>();
    const CalShape& cs = kShapes[si];
    r->name = cs.name;
    r->seed = 0x5eedc0de + static_cast<uint64_t>(si);
    r->g = ConvShape{cs.C, cs.H, cs.H, cs.K, cs.R, cs.R, cs.stride, cs.pad}.geom(N);
    runs.push_back(std::move(r));
  }
  for (size_t i = 0; i < o.own_shapes.size(); ++i) {
    const ConvShape& sh = o.own_shapes[i];
    TRAINER_CHECK(sh.C >= 1 && sh.K >= 1 && sh.R >= 1 && sh.S >= 1 && sh.stride >= 1 && sh.pad >= 0 &&
                      sh.H + 2 * sh.pad >= sh.R && sh.W + 2 * sh.pad >= sh.S,
                  "calibration: shape {} ({}x{} input, pad {}) is not a valid convolution", sh.name(), sh.H,
                  sh.W, sh.pad);
    const auto same =
        std::find_if(runs.begin(), runs.end(), [&](const auto& r) { return ConvShape::of(r->g) == sh; });
    if (same != runs.end()) {  // measured anyway
      (*same)->own = true;
      continue;
    }
    auto r = std::make_unique<ShapeRun>();
    r->name = sh.name();
    r->generic = false;
    r->own = true;
    r->seed = 0x5eedc0de + 1000 + i;
    r->g = sh.geom(N);
    runs.push_back(std::move(r));
  }
  for (auto& rp : runs) {
    ShapeRun* r = rp.get();
    Rng rng(r->seed);
    const ConvGeom& g = r->g;
    const Tensor x = random_tensor({N, g.C, g.H, g.W}, Layout::plain, rng);
    const Tensor dy = random_tensor({N, g.K, g.P(), g.Q()}, Layout::plain, rng);
    r->conv = std::make_unique<ConvDnnl>(g.C, g.K, g.R, g.S, g.stride, g.pad, false);
    // dy in the layout oneDNN writes y in (nChw16c; plain where K is not a multiple of 16), as Conv2d
    // hands it over.
    r->x16c = x.to_layout(Layout::nChw16c), r->dy16c = dy.to_layout(r->conv->y_layout());
    r->x16n = x.to_layout(Layout::NCHW16n), r->dy16n = dy.to_layout(Layout::NCHW16n);
    r->w = random_tensor({g.K, g.C, g.R, g.S}, Layout::plain, rng);
    for (double density : data.densities) {
      auto sp = std::make_unique<ShapeRun::Sparse>();
      sp->density = density;
      Tensor mask({g.K, g.C, g.R, g.S});
      for (int64_t i = 0; i < mask.numel(); ++i) mask.data()[i] = rng.uniform() < density ? 1.0f : 0.0f;
      sp->sw.build(r->w, mask, g.stride, g.pad);
      sp->values.resize(static_cast<size_t>(std::max<int64_t>(sp->sw.nnz(), 1)));
      r->sparse.push_back(std::move(sp));
    }
    r->reorder_src[0] = r->x16c, r->reorder_src[1] = r->x16n, r->reorder_src[2] = r->dy16c,
    r->reorder_src[3] = r->dy16n;
  }

  // The samples, and a job per sample. Dense: oneDNN on nChw16c, as Conv2d runs it (each ff reorders
  // the weights from OIHW). Sparse: NCHW16n, weights kept at random to each density; WG as
  // sparse_conv_wg_values. Reorders: x and dy, both ways.
  for (const auto& r : runs) {
    const ConvGeom& g = r->g;
    auto add = [&](ConvPhase p, ConvKernel k, double density) {
      CalibrationSample s;
      s.shape = r->name;
      s.generic = r->generic;
      s.own_entry = r->own;
      s.geom = g;
      s.phase = p;
      s.kernel = k;
      s.weight_density = density;
      s.executed_macs = static_cast<double>(g.macs());
      s.activation_elems = conv_activation_elems(p, g);
      data.samples.push_back(std::move(s));
    };
    for (ConvPhase p : kPhases) add(p, ConvKernel::dense, 1.0);
    for (const auto& sp : r->sparse)
      for (ConvPhase p : kPhases) add(p, ConvKernel::sparse, sp->density);
    if (r->generic)
      for (const Tensor& t : r->reorder_src) data.reorders.push_back({static_cast<double>(t.numel()), 0.0});
  }
  std::vector<Job> jobs;
  {
    size_t si = 0, ri = 0;
    for (const auto& rp : runs) {
      ShapeRun& r = *rp;
      jobs.push_back({[&r] { r.conv->ff(r.x16c, r.w, nullptr, r.y); }, &data.samples[si++].ns});
      jobs.push_back({[&r] { r.conv->bp(r.x16c, r.dy16c, r.w, r.dx); }, &data.samples[si++].ns});
      jobs.push_back({[&r] { r.conv->wg(r.x16c, r.dy16c, r.dw, nullptr); }, &data.samples[si++].ns});
      for (const auto& spp : r.sparse) {
        ShapeRun::Sparse& sp = *spp;
        jobs.push_back({[&r, &sp] { sp.counters[0] = sparse_conv_ff(r.x16n, sp.sw, r.ysp, sp.scratch); },
                        &data.samples[si++].ns});
        jobs.push_back({[&r, &sp] {
                          sp.counters[1] = sparse_conv_bp(r.dy16n, sp.sw, r.x16n.shape(), r.dxsp, sp.scratch);
                        },
                        &data.samples[si++].ns});
        jobs.push_back({[&r, &sp] {
                          sp.counters[2] = sparse_conv_wg_values(r.x16n, r.dy16n, sp.sw, sp.values.data(),
                                                                 nullptr, sp.scratch);
                        },
                        &data.samples[si++].ns});
      }
      for (int i = 0; i < (r.generic ? 4 : 0); ++i) {
        const Tensor& t = r.reorder_src[i];
        Tensor& dst = r.reorder_dst[i];
        const Layout to = t.layout() == Layout::nChw16c ? Layout::NCHW16n : Layout::nChw16c;
        jobs.push_back({[&t, &dst, to] { t.convert_to(to, dst); }, &data.reorders[ri++].ns});
      }
    }
  }

  if (log)
    fmt::print(
        log,
        "calibrating: {} threads, batch {}, {} shapes x {} densities; {} calls, each timed once per pass "
        "(the fastest of {} passes counts, after a warm-up pass)\n",
        o.threads, o.batch, runs.size(), data.densities.size(), jobs.size(), o.repeats);
  // Passes over all the calls rather than repeats of one: a burst of load from another process then
  // spoils one run of many points instead of every run of one.
  for (Job& j : jobs) {
    j.run();
    *j.ns = INFINITY;
  }
  for (int pass = 0; pass < o.repeats; ++pass)
    for (Job& j : jobs) {
      const uint64_t t0 = now_ns();
      j.run();
      *j.ns = std::min(*j.ns, std::max(static_cast<double>(now_ns() - t0), 1.0));
    }

  // What the sparse kernels executed (the same in every run).
  {
    size_t si = 0;
    for (const auto& r : runs) {
      si += 3;
      for (const auto& sp : r->sparse)
        for (int p = 0; p < 3; ++p)
          data.samples[si++].executed_macs = static_cast<double>(sp->counters[p].executed_macs);
    }
  }
  if (log) {
    size_t si = 0;
    for (const auto& r : runs) {
      const CalibrationSample* s = &data.samples[si];
      fmt::print(log, "  {:<22} dense  ff {:8.3f} ms  bp {:8.3f} ms  wg {:8.3f} ms  (oneDNN {})\n", r->name,
                 s[0].ns * 1e-6, s[1].ns * 1e-6, s[2].ns * 1e-6, r->conv->implementations(r->x16c));
      si += 3;
      for (const auto& sp : r->sparse) {
        s = &data.samples[si];
        fmt::print(
            log,
            "  {:<22} sparse ff {:8.3f} ms  bp {:8.3f} ms  wg {:8.3f} ms  (density {:.0f}%, kept {:.1f}%)\n",
            r->name, s[0].ns * 1e-6, s[1].ns * 1e-6, s[2].ns * 1e-6, 100 * sp->density,
            100 * sp->sw.density());
        si += 3;
      }
    }
  }
  return data;
}

ConvCostModel calibrate(const CalibrationOptions& options, std::FILE* log, CalibrationData* data) {
  CalibrationData measured = measure_conv_kernels(options, log);
  ConvCostModel m = fit_cost_model(measured, log);
  if (data) *data = std::move(measured);
  return m;
}

}  // namespace trainer
