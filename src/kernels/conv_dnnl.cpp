#include "kernels/conv_dnnl.hpp"

#include <fmt/format.h>

#include <cstring>
#include <unordered_map>

#include "core/error.hpp"
#include "kernels/dnnl_context.hpp"

namespace trainer {

namespace {

using dnnl::memory;
using tag = memory::format_tag;
constexpr memory::data_type f32 = memory::data_type::f32;
// Training, evaluation and the smaller last batch of each: a handful of geometries per layer.
constexpr size_t kMaxCachedGeometries = 8;

tag activation_tag(Layout l) { return l == Layout::nChw16c ? tag::nChw16c : tag::nchw; }

// oneDNN takes non-const handles for every operand; inputs are only read.
void* handle(const Tensor& t) { return const_cast<float*>(t.data()); }

// How oneDNN's implementations rank for training-sized batches: its own jit kernels (jit, jit_1x1,
// brgconv...) first, then the im2col + GEMM ones, then the reference loops (orders of magnitude slower).
int impl_rank(const char* impl) {
  if (std::strncmp(impl, "ref", 3) == 0) return 0;
  if (std::strstr(impl, "gemm") != nullptr) return 1;
  return 2;
}

// Scratchpads are ours, allocated once per primitive, so executing allocates nothing.
dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Picks the primitive descriptor: the caller's exact activation layouts when oneDNN has a jit kernel
// for them (no reorders), else the layouts oneDNN prefers (tag::any, reorders around it) when that
// ranks higher. The choice depends only on the shapes, never on timings, so runs stay reproducible.
// `leave_gemm`: keep a GEMM kernel rather than reorder around it. Measured on LeNet-5's first conv
// (1->6, 5x5, 28x28, batch 128, 2 threads): the blocked jit kernel plus reorders beats GEMM in ff
// (0.40 vs 0.83 ms) and wg (0.39 vs 2.1 ms), but loses in bp (3.6 vs 1.2 ms: a 1-channel dx padded
// to 16), so bp leaves GEMM alone.
template <typename PD, typename Make>
PD choose(const Make& make, const memory::desc& x_md, const memory::desc& y_md, const memory::desc& x_any,
          const memory::desc& y_any, bool leave_gemm) {
  PD exact;
  int exact_rank = -1;
  try {
    exact = make(x_md, y_md);
    exact_rank = impl_rank(exact.impl_info_str());
  } catch (const dnnl::error&) {
  }
  if (exact_rank == 2 || (exact_rank == 1 && leave_gemm)) return exact;
  try {
    PD any = make(x_any, y_any);
    if (impl_rank(any.impl_info_str()) > exact_rank) return any;
  } catch (const dnnl::error&) {
    if (exact_rank < 0) throw;
  }
  return exact;
}

// An operand as the caller holds it (user) and as the primitive reads or writes it (prim). When the
// formats agree they are the same memory and nothing is copied; otherwise each call reorders.
struct Operand {
  memory user, prim;
  dnnl::reorder to_prim, to_user;
  bool direct = true;

  Operand() = default;
  // shared_prim: a primitive-format buffer owned by another operand with the same format.
  Operand(const memory::desc& user_md, const memory::desc& prim_md, bool input,
          const memory* shared_prim = nullptr)
      : user(user_md, cpu_engine(), DNNL_MEMORY_NONE), direct(user_md == prim_md) {
    if (direct) {
      prim = user;
      return;
    }
    prim = shared_prim ? *shared_prim : memory(prim_md, cpu_engine());
    if (input)
      to_prim = dnnl::reorder(user, prim);
    else
      to_user = dnnl::reorder(prim, user);
  }
  // An input: binds the caller's buffer and brings it into the primitive's format (unless `fresh`:
  // prim already holds it).
  void in(const Tensor& t, bool fresh = false) {
    user.set_data_handle(handle(t));
    if (!direct && !fresh) to_prim.execute(cpu_stream(), user, prim);
  }
  // An output: binds the caller's buffer; after the primitive ran, finish() brings the result there.
  void out(Tensor& t) { user.set_data_handle(t.data()); }
  void finish() {
    if (!direct) to_user.execute(cpu_stream(), prim, user);
  }
};

memory scratchpad(const memory::desc& md) { return memory(md, cpu_engine()); }

}  // namespace

struct ConvDnnl::Entry {
  int64_t N = 0, H = 0, W = 0;
  Layout x_layout = Layout::plain;
  memory::desc x_md, y_md, x_any, y_any, w_md, w_any, b_md;  // caller's formats, and "any"
  memory::dims strides, pads;

  dnnl::convolution_forward::primitive_desc ff_pd;
  dnnl::primitive ff;
  Operand ff_x, ff_w, ff_y;
  memory ff_b;
  std::unordered_map<int, memory> ff_args;
  uint64_t ff_stamp = 0;             // ConvDnnl::ff_count_ when ff_w.prim was last filled
  const float* ff_w_data = nullptr;  // from which buffer

  bool has_bp = false;
  bool bp_shares_ff_weights = false;  // bp reads weights in ff's format: reuse ff's reordered copy
  dnnl::convolution_backward_data::primitive_desc bp_pd;
  dnnl::primitive bp;
  Operand bp_dy, bp_w, bp_dx;
  std::unordered_map<int, memory> bp_args;

  bool has_wg = false;
  dnnl::convolution_backward_weights::primitive_desc wg_pd;
  dnnl::primitive wg;
  Operand wg_x, wg_dy, wg_dw;
  memory wg_db;
  std::unordered_map<int, memory> wg_args;
};

ConvDnnl::ConvDnnl(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad, bool bias)
    : C_(C), K_(K), R_(R), S_(S), stride_(stride), pad_(pad), bias_(bias) {
  TRAINER_CHECK(C > 0 && K > 0 && R > 0 && S > 0 && stride > 0 && pad >= 0,
                "conv: invalid sizes C={} K={} R={} S={} stride={} pad={}", C, K, R, S, stride, pad);
}

ConvDnnl::~ConvDnnl() = default;

ConvGeom ConvDnnl::geom(const Shape& x) const {
  TRAINER_CHECK(x.size() == 4 && x[1] == C_, "conv: x should be [N, {}, H, W], got {}", C_, shape_str(x));
  ConvGeom g{x[0], x[1], x[2], x[3], K_, R_, S_, stride_, pad_};
  TRAINER_CHECK(x[2] + 2 * pad_ >= R_ && x[3] + 2 * pad_ >= S_,
                "conv: a {}x{} kernel does not fit the input {} padded by {}", R_, S_, shape_str(x), pad_);
  return g;
}

ConvDnnl::Entry& ConvDnnl::entry(const Tensor& x) {
  const ConvGeom g = geom(x.shape());
  for (auto& e : cache_)
    if (e->N == g.N && e->H == g.H && e->W == g.W && e->x_layout == x.layout()) return *e;
  if (cache_.size() >= kMaxCachedGeometries) cache_.erase(cache_.begin());

  auto e = std::make_unique<Entry>();
  e->N = g.N;
  e->H = g.H;
  e->W = g.W;
  e->x_layout = x.layout();
  const memory::dims x_dims{g.N, g.C, g.H, g.W}, y_dims{g.N, g.K, g.P(), g.Q()}, w_dims{g.K, g.C, g.R, g.S};
  e->x_md = memory::desc(x_dims, f32, activation_tag(x.layout()));
  e->y_md = memory::desc(y_dims, f32, activation_tag(y_layout()));
  e->x_any = memory::desc(x_dims, f32, tag::any);
  e->y_any = memory::desc(y_dims, f32, tag::any);
  e->w_md = memory::desc(w_dims, f32, tag::oihw);
  e->w_any = memory::desc(w_dims, f32, tag::any);
  if (bias_) e->b_md = memory::desc({g.K}, f32, tag::a);
  e->strides = {stride_, stride_};
  e->pads = {pad_, pad_};

  const dnnl::primitive_attr attr = user_scratchpad();
  auto make = [&](const memory::desc& xs, const memory::desc& ys) {
    // forward_training: the same kernels as inference for convolution, and the hint bp/wg expect.
    dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                      xs, e->w_any, e->b_md, ys, e->strides, e->pads, e->pads);
    return dnnl::convolution_forward::primitive_desc(d, attr, cpu_engine());
  };
  e->ff_pd =
      choose<dnnl::convolution_forward::primitive_desc>(make, e->x_md, e->y_md, e->x_any, e->y_any, false);
  e->ff = dnnl::convolution_forward(e->ff_pd);
  e->ff_x = Operand(e->x_md, e->ff_pd.src_desc(), true);
  e->ff_w = Operand(e->w_md, e->ff_pd.weights_desc(), true);
  e->ff_y = Operand(e->y_md, e->ff_pd.dst_desc(), false);
  e->ff_args = {{DNNL_ARG_SRC, e->ff_x.prim},
                {DNNL_ARG_WEIGHTS, e->ff_w.prim},
                {DNNL_ARG_DST, e->ff_y.prim},
                {DNNL_ARG_SCRATCHPAD, scratchpad(e->ff_pd.scratchpad_desc())}};
  if (bias_) {
    e->ff_b = memory(e->b_md, cpu_engine(), DNNL_MEMORY_NONE);
    e->ff_args[DNNL_ARG_BIAS] = e->ff_b;
  }
  cache_.push_back(std::move(e));
  return *cache_.back();
}

void ConvDnnl::ensure_bp(Entry& e) {
  if (e.has_bp) return;
  const dnnl::primitive_attr attr = user_scratchpad();
  auto make = [&](const memory::desc& xs, const memory::desc& ys) {
    dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct, xs, e.w_any, ys, e.strides,
                                            e.pads, e.pads);
    return dnnl::convolution_backward_data::primitive_desc(d, attr, cpu_engine(), e.ff_pd);
  };
  e.bp_pd =
      choose<dnnl::convolution_backward_data::primitive_desc>(make, e.x_md, e.y_md, e.x_any, e.y_any, true);
  e.bp = dnnl::convolution_backward_data(e.bp_pd);
  e.bp_dy = Operand(e.y_md, e.bp_pd.diff_dst_desc(), true);
  e.bp_dx = Operand(e.x_md, e.bp_pd.diff_src_desc(), false);
  e.bp_shares_ff_weights = e.bp_pd.weights_desc() == e.ff_pd.weights_desc();
  e.bp_w = Operand(e.w_md, e.bp_pd.weights_desc(), true, e.bp_shares_ff_weights ? &e.ff_w.prim : nullptr);
  e.bp_args = {{DNNL_ARG_DIFF_DST, e.bp_dy.prim},
               {DNNL_ARG_WEIGHTS, e.bp_w.prim},
               {DNNL_ARG_DIFF_SRC, e.bp_dx.prim},
               {DNNL_ARG_SCRATCHPAD, scratchpad(e.bp_pd.scratchpad_desc())}};
  e.has_bp = true;
}

void ConvDnnl::ensure_wg(Entry& e) {
  if (e.has_wg) return;
  const dnnl::primitive_attr attr = user_scratchpad();
  // diff_weights in oneDNN's own format: asking for OIHW directly selects its reference kernel.
  auto make = [&](const memory::desc& xs, const memory::desc& ys) {
    dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct, xs, e.w_any, e.b_md, ys,
                                               e.strides, e.pads, e.pads);
    return dnnl::convolution_backward_weights::primitive_desc(d, attr, cpu_engine(), e.ff_pd);
  };
  e.wg_pd = choose<dnnl::convolution_backward_weights::primitive_desc>(make, e.x_md, e.y_md, e.x_any, e.y_any,
                                                                       false);
  e.wg = dnnl::convolution_backward_weights(e.wg_pd);
  e.wg_x = Operand(e.x_md, e.wg_pd.src_desc(), true);
  e.wg_dy = Operand(e.y_md, e.wg_pd.diff_dst_desc(), true);
  e.wg_dw = Operand(e.w_md, e.wg_pd.diff_weights_desc(), false);
  e.wg_args = {{DNNL_ARG_SRC, e.wg_x.prim},
               {DNNL_ARG_DIFF_DST, e.wg_dy.prim},
               {DNNL_ARG_DIFF_WEIGHTS, e.wg_dw.prim},
               {DNNL_ARG_SCRATCHPAD, scratchpad(e.wg_pd.scratchpad_desc())}};
  if (bias_) {
    TRAINER_CHECK(e.wg_pd.diff_bias_desc() == e.b_md,
                  "conv: oneDNN wants the bias gradient in another format");
    e.wg_db = memory(e.b_md, cpu_engine(), DNNL_MEMORY_NONE);
    e.wg_args[DNNL_ARG_DIFF_BIAS] = e.wg_db;
  }
  e.has_wg = true;
}

void ConvDnnl::ff(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y) {
  Entry& e = entry(x);
  check_shape(w, {K_, C_, R_, S_}, "conv: weights");
  TRAINER_CHECK((b != nullptr) == bias_, "conv: bias given to a convolution {} one",
                bias_ ? "with" : "without");
  if (b) check_shape(*b, {K_}, "conv: bias");
  const ConvGeom g = geom(x.shape());
  y.resize({g.N, g.K, g.P(), g.Q()}, y_layout());

  e.ff_x.in(x);
  e.ff_w.in(w);
  e.ff_y.out(y);
  if (b) e.ff_b.set_data_handle(handle(*b));
  e.ff.execute(cpu_stream(), e.ff_args);
  e.ff_y.finish();
  cpu_stream().wait();
  e.ff_stamp = ++ff_count_;
  e.ff_w_data = w.data();
}

void ConvDnnl::bp(const Tensor& x, const Tensor& dy, const Tensor& w, Tensor& dx) {
  Entry& e = entry(x);
  ensure_bp(e);
  const ConvGeom g = geom(x.shape());
  check_shape(dy, {g.N, g.K, g.P(), g.Q()}, "conv: dy");
  TRAINER_CHECK(dy.layout() == y_layout(), "conv: dy is {}, y was written {}", layout_name(dy.layout()),
                layout_name(y_layout()));
  check_shape(w, {K_, C_, R_, S_}, "conv: weights");
  dx.resize(x.shape(), x.layout());

  // Weights change only in the optimizer, after bp: the copy the last ff reordered is still current.
  const bool fresh = e.bp_shares_ff_weights && e.ff_stamp == ff_count_ && e.ff_w_data == w.data();
  e.bp_dy.in(dy);
  e.bp_w.in(w, fresh);
  e.bp_dx.out(dx);
  e.bp.execute(cpu_stream(), e.bp_args);
  e.bp_dx.finish();
  cpu_stream().wait();
}

void ConvDnnl::wg(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db) {
  Entry& e = entry(x);
  ensure_wg(e);
  const ConvGeom g = geom(x.shape());
  check_shape(dy, {g.N, g.K, g.P(), g.Q()}, "conv: dy");
  TRAINER_CHECK(dy.layout() == y_layout(), "conv: dy is {}, y was written {}", layout_name(dy.layout()),
                layout_name(y_layout()));
  TRAINER_CHECK((db != nullptr) == bias_, "conv: bias gradient asked of a convolution {} bias",
                bias_ ? "with" : "without");
  dw.resize({K_, C_, R_, S_});
  if (db) db->resize({K_});

  e.wg_x.in(x);
  e.wg_dy.in(dy);
  e.wg_dw.out(dw);
  if (db) e.wg_db.set_data_handle(db->data());
  e.wg.execute(cpu_stream(), e.wg_args);
  e.wg_dw.finish();
  cpu_stream().wait();
}

std::string ConvDnnl::implementations(const Tensor& x) {
  Entry& e = entry(x);
  ensure_bp(e);
  ensure_wg(e);
  // "(+reorders)": oneDNN had no optimised kernel for the caller's activation layouts.
  auto describe = [](const char* impl, const Operand& a, const Operand& b) {
    return fmt::format("{}{}", impl, a.direct && b.direct ? "" : "(+reorders)");
  };
  return fmt::format("ff={} bp={} wg={}", describe(e.ff_pd.impl_info_str(), e.ff_x, e.ff_y),
                     describe(e.bp_pd.impl_info_str(), e.bp_dx, e.bp_dy),
                     describe(e.wg_pd.impl_info_str(), e.wg_x, e.wg_dy));
}

}  // namespace trainer
