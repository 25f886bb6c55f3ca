#include "kernels/linear_dnnl.hpp"

#include <fmt/format.h>

#include <unordered_map>

#include "core/error.hpp"
#include "kernels/dnnl_context.hpp"

namespace trainer {

namespace {

using dnnl::memory;
using tag = memory::format_tag;
constexpr memory::data_type f32 = memory::data_type::f32;
constexpr size_t kMaxCachedBatchSizes = 8;

// oneDNN takes non-const handles for every operand; inputs are only read.
void* handle(const Tensor& t) { return const_cast<float*>(t.data()); }

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

memory unbound(const memory::desc& md) { return memory(md, cpu_engine(), DNNL_MEMORY_NONE); }

}  // namespace

struct LinearDnnl::Entry {
  int64_t N = 0;
  memory::desc x_md, y_md, w_md, b_md;

  dnnl::inner_product_forward::primitive_desc ff_pd;
  dnnl::primitive ff;
  memory ff_x, ff_w, ff_b, ff_y;
  std::unordered_map<int, memory> ff_args;

  bool has_bp = false;
  dnnl::inner_product_backward_data::primitive_desc bp_pd;
  dnnl::primitive bp;
  memory bp_dy, bp_w, bp_dx;
  std::unordered_map<int, memory> bp_args;

  bool has_wg = false;
  dnnl::inner_product_backward_weights::primitive_desc wg_pd;
  dnnl::primitive wg;
  memory wg_x, wg_dy, wg_dw, wg_db;
  std::unordered_map<int, memory> wg_args;
};

LinearDnnl::LinearDnnl(int64_t I, int64_t O, bool bias) : I_(I), O_(O), bias_(bias) {
  TRAINER_CHECK(I > 0 && O > 0, "linear: invalid sizes in={} out={}", I, O);
}

LinearDnnl::~LinearDnnl() = default;

LinearDnnl::Entry& LinearDnnl::entry(int64_t N) {
  for (auto& e : cache_)
    if (e->N == N) return *e;
  if (cache_.size() >= kMaxCachedBatchSizes) cache_.erase(cache_.begin());

  auto e = std::make_unique<Entry>();
  e->N = N;
  e->x_md = memory::desc({N, I_}, f32, tag::nc);
  e->y_md = memory::desc({N, O_}, f32, tag::nc);
  e->w_md = memory::desc({O_, I_}, f32, tag::oi);
  if (bias_) e->b_md = memory::desc({O_}, f32, tag::a);

  dnnl::inner_product_forward::desc d(dnnl::prop_kind::forward_training, e->x_md, e->w_md, e->b_md, e->y_md);
  e->ff_pd = dnnl::inner_product_forward::primitive_desc(d, user_scratchpad(), cpu_engine());
  e->ff = dnnl::inner_product_forward(e->ff_pd);
  e->ff_x = unbound(e->x_md);
  e->ff_w = unbound(e->w_md);
  e->ff_y = unbound(e->y_md);
  e->ff_args = {{DNNL_ARG_SRC, e->ff_x},
                {DNNL_ARG_WEIGHTS, e->ff_w},
                {DNNL_ARG_DST, e->ff_y},
                {DNNL_ARG_SCRATCHPAD, memory(e->ff_pd.scratchpad_desc(), cpu_engine())}};
  if (bias_) {
    e->ff_b = unbound(e->b_md);
    e->ff_args[DNNL_ARG_BIAS] = e->ff_b;
  }
  cache_.push_back(std::move(e));
  return *cache_.back();
}

void LinearDnnl::ensure_bp(Entry& e) {
  if (e.has_bp) return;
  dnnl::inner_product_backward_data::desc d(e.x_md, e.w_md, e.y_md);
  e.bp_pd = dnnl::inner_product_backward_data::primitive_desc(d, user_scratchpad(), cpu_engine(), e.ff_pd);
  e.bp = dnnl::inner_product_backward_data(e.bp_pd);
  e.bp_dy = unbound(e.y_md);
  e.bp_w = unbound(e.w_md);
  e.bp_dx = unbound(e.x_md);
  e.bp_args = {{DNNL_ARG_DIFF_DST, e.bp_dy},
               {DNNL_ARG_WEIGHTS, e.bp_w},
               {DNNL_ARG_DIFF_SRC, e.bp_dx},
               {DNNL_ARG_SCRATCHPAD, memory(e.bp_pd.scratchpad_desc(), cpu_engine())}};
  e.has_bp = true;
}

void LinearDnnl::ensure_wg(Entry& e) {
  if (e.has_wg) return;
  dnnl::inner_product_backward_weights::desc d(e.x_md, e.w_md, e.b_md, e.y_md);
  e.wg_pd = dnnl::inner_product_backward_weights::primitive_desc(d, user_scratchpad(), cpu_engine(), e.ff_pd);
  e.wg = dnnl::inner_product_backward_weights(e.wg_pd);
  e.wg_x = unbound(e.x_md);
  e.wg_dy = unbound(e.y_md);
  e.wg_dw = unbound(e.w_md);
  e.wg_args = {{DNNL_ARG_SRC, e.wg_x},
               {DNNL_ARG_DIFF_DST, e.wg_dy},
               {DNNL_ARG_DIFF_WEIGHTS, e.wg_dw},
               {DNNL_ARG_SCRATCHPAD, memory(e.wg_pd.scratchpad_desc(), cpu_engine())}};
  if (bias_) {
    e.wg_db = unbound(e.b_md);
    e.wg_args[DNNL_ARG_DIFF_BIAS] = e.wg_db;
  }
  e.has_wg = true;
}

void LinearDnnl::ff(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y) {
  TRAINER_CHECK(x.rank() == 2 && x.dim(1) == I_ && x.layout() == Layout::plain,
                "linear: x should be plain [N, {}], got {} ({})", I_, shape_str(x.shape()),
                layout_name(x.layout()));
  check_shape(w, {O_, I_}, "linear: weights");
  TRAINER_CHECK((b != nullptr) == bias_, "linear: bias given to a layer {} one", bias_ ? "with" : "without");
  if (b) check_shape(*b, {O_}, "linear: bias");
  const int64_t N = x.dim(0);
  Entry& e = entry(N);
  y.resize({N, O_});
  e.ff_x.set_data_handle(handle(x));
  e.ff_w.set_data_handle(handle(w));
  e.ff_y.set_data_handle(y.data());
  if (b) e.ff_b.set_data_handle(handle(*b));
  e.ff.execute(cpu_stream(), e.ff_args);
  cpu_stream().wait();
}

void LinearDnnl::bp(const Tensor& dy, const Tensor& w, Tensor& dx) {
  TRAINER_CHECK(dy.rank() == 2 && dy.dim(1) == O_, "linear: dy should be [N, {}], got {}", O_,
                shape_str(dy.shape()));
  check_shape(w, {O_, I_}, "linear: weights");
  const int64_t N = dy.dim(0);
  Entry& e = entry(N);
  ensure_bp(e);
  dx.resize({N, I_});
  e.bp_dy.set_data_handle(handle(dy));
  e.bp_w.set_data_handle(handle(w));
  e.bp_dx.set_data_handle(dx.data());
  e.bp.execute(cpu_stream(), e.bp_args);
  cpu_stream().wait();
}

void LinearDnnl::wg(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db) {
  TRAINER_CHECK(x.rank() == 2 && x.dim(1) == I_ && x.layout() == Layout::plain,
                "linear: x should be plain [N, {}], got {} ({})", I_, shape_str(x.shape()),
                layout_name(x.layout()));
  const int64_t N = x.dim(0);
  check_shape(dy, {N, O_}, "linear: dy");
  TRAINER_CHECK((db != nullptr) == bias_, "linear: bias gradient asked of a layer {} bias",
                bias_ ? "with" : "without");
  Entry& e = entry(N);
  ensure_wg(e);
  dw.resize({O_, I_});
  if (db) db->resize({O_});
  e.wg_x.set_data_handle(handle(x));
  e.wg_dy.set_data_handle(handle(dy));
  e.wg_dw.set_data_handle(dw.data());
  if (db) e.wg_db.set_data_handle(db->data());
  e.wg.execute(cpu_stream(), e.wg_args);
  cpu_stream().wait();
}

std::string LinearDnnl::implementations(int64_t N) {
  Entry& e = entry(N);
  ensure_bp(e);
  ensure_wg(e);
  return fmt::format("ff={} bp={} wg={}", e.ff_pd.impl_info_str(), e.bp_pd.impl_info_str(),
                     e.wg_pd.impl_info_str());
}

}  // namespace trainer
