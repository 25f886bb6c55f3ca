#include "chip/spec.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <set>

#include "core/error.hpp"

namespace trainer {

const char* precision_name(Precision p) { return p == Precision::fp8 ? "fp8" : "fp16"; }
int precision_bits(Precision p) { return p == Precision::fp8 ? 8 : 16; }

std::string RegroupShape::name() const {
  return groups == 1 ? fmt::format("{}x{}", rows, cols) : fmt::format("{}x{}x{}", groups, rows, cols);
}

namespace {

// A YAML mapping being read: remembers which keys were used so that leftovers (typos) are errors,
// and prefixes every message with the file, the dotted key and its line.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string source, std::string path)
      : node_(node), source_(std::move(source)), path_(std::move(path)) {
    if (!node_.IsMap())
      fail("chip spec '{}': key '{}'{}: expected a mapping of keys to values", source_, path_or_root(),
           line(node_));
  }

  bool has(const std::string& key) const { return node_[key].IsDefined() && !node_[key].IsNull(); }

  YAML::Node get(const std::string& key, const char* expected) {
    used_.insert(key);
    YAML::Node v = node_[key];
    if (!v.IsDefined() || v.IsNull())
      fail("chip spec '{}': missing key '{}' (expected {})", source_, full(key), expected);
    return v;
  }

  double number(const std::string& key, double min, bool min_inclusive, const char* expected) {
    YAML::Node v = get(key, expected);
    double d = 0;
    try {
      if (!v.IsScalar()) throw YAML::Exception(v.Mark(), "not a scalar");
      d = v.as<double>();
    } catch (const YAML::Exception&) {
      fail("chip spec '{}': key '{}'{}: expected {}, got '{}'", source_, full(key), line(v), expected,
           text(v));
    }
    if (!std::isfinite(d) || d < min || (!min_inclusive && d == min))
      fail("chip spec '{}': key '{}'{}: expected {}, got {}", source_, full(key), line(v), expected, text(v));
    return d;
  }

  int integer(const std::string& key, int min, const char* expected) {
    YAML::Node v = get(key, expected);
    long long i = 0;
    try {
      if (!v.IsScalar()) throw YAML::Exception(v.Mark(), "not a scalar");
      i = v.as<long long>();
    } catch (const YAML::Exception&) {
      fail("chip spec '{}': key '{}'{}: expected {}, got '{}'", source_, full(key), line(v), expected,
           text(v));
    }
    if (i < min || i > (1LL << 30))
      fail("chip spec '{}': key '{}'{}: expected {}, got {}", source_, full(key), line(v), expected, i);
    return static_cast<int>(i);
  }

  bool boolean(const std::string& key) {
    YAML::Node v = get(key, "true or false");
    try {
      if (!v.IsScalar()) throw YAML::Exception(v.Mark(), "not a scalar");
      return v.as<bool>();
    } catch (const YAML::Exception&) {
      fail("chip spec '{}': key '{}'{}: expected true or false, got '{}'", source_, full(key), line(v),
           text(v));
    }
  }

  std::string choice(const std::string& key, const std::vector<std::string>& allowed) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : " | ") + a;
    YAML::Node v = get(key, list.c_str());
    std::string s = v.IsScalar() ? v.Scalar() : "";
    for (const auto& a : allowed)
      if (s == a) return s;
    fail("chip spec '{}': key '{}'{}: expected one of {}, got '{}'", source_, full(key), line(v), list,
         text(v));
  }

  std::string string(const std::string& key) {
    YAML::Node v = get(key, "a string");
    if (!v.IsScalar()) fail("chip spec '{}': key '{}'{}: expected a string", source_, full(key), line(v));
    return v.Scalar();
  }

  MapReader child(const std::string& key) {
    YAML::Node v = get(key, "a mapping");
    return MapReader(v, source_, full(key));
  }

  YAML::Node sequence(const std::string& key, const char* expected) {
    YAML::Node v = get(key, expected);
    if (!v.IsSequence() || v.size() == 0)
      fail("chip spec '{}': key '{}'{}: expected {}", source_, full(key), line(v), expected);
    return v;
  }

  // Every key present must have been read.
  void finish() const {
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string k = it->first.Scalar();
      if (!used_.count(k))
        fail("chip spec '{}': unknown key '{}'{} (misspelt? see docs/chip-model.md for the keys)", source_,
             full(k), line(it->first));
    }
  }

  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  const std::string& source() const { return source_; }

  static std::string line(const YAML::Node& n) {
    const YAML::Mark m = n.Mark();
    return m.line >= 0 ? fmt::format(" (line {})", m.line + 1) : "";
  }

 private:
  std::string path_or_root() const { return path_.empty() ? "<top level>" : path_; }
  static std::string text(const YAML::Node& v) {
    if (v.IsScalar()) return v.Scalar();
    if (v.IsSequence()) return "a list";
    if (v.IsMap()) return "a mapping";
    return "nothing";
  }

  YAML::Node node_;
  std::string source_;
  std::string path_;
  std::set<std::string> used_;
};

BufferSpec read_buffer(MapReader& parent, const std::string& name) {
  MapReader r = parent.child(name);
  BufferSpec b;
  b.name = name;
  b.size_kib = r.number("size_kib", 0, false, "a positive size in KiB");
  b.banks = r.integer("banks", 1, "a positive number of banks");
  b.width_bits = r.integer("width_bits", 1, "a positive port width in bits");
  b.read_pj_per_bit = r.number("read_pj_per_bit", 0, true, "a nonnegative energy in pJ per bit");
  b.write_pj_per_bit = r.number("write_pj_per_bit", 0, true, "a nonnegative energy in pJ per bit");
  r.finish();
  return b;
}

std::array<double, 2> read_per_precision(MapReader& parent, const std::string& key, const char* expected) {
  MapReader r = parent.child(key);
  std::array<double, 2> out{r.number("fp16", 0, true, expected), r.number("fp8", 0, true, expected)};
  r.finish();
  return out;
}

}  // namespace

ChipSpec parse_chip_spec(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    fail("chip spec '{}': not valid YAML: {}", source, e.what());
  }
  ChipSpec s;
  s.source = source;
  MapReader top(root, source, "");
  s.name = top.string("name");

  {
    MapReader t = top.child("technology");
    s.node_nm = t.number("node_nm", 0, false, "a positive feature size in nm");
    s.voltage_v = t.number("voltage_v", 0, false, "a positive supply voltage in V");
    s.clock_mhz = t.number("clock_mhz", 0, false, "a positive clock in MHz");
    t.finish();
  }
  s.precision = top.choice("precision", {"fp16", "fp8"}) == "fp8" ? Precision::fp8 : Precision::fp16;

  {
    MapReader p = top.child("pe_array");
    s.pes = p.integer("pes", 1, "a positive number of PEs");
    {
      MapReader m = p.child("macs_per_pe");
      s.macs_per_pe = {m.integer("fp16", 1, "a positive number of MACs per PE per cycle"),
                       m.integer("fp8", 1, "a positive number of MACs per PE per cycle")};
      m.finish();
    }
    s.accumulator_bits = p.integer("accumulator_bits", 1, "a positive accumulator width in bits");
    s.fill_drain_cycles = p.integer("fill_drain_cycles", 0, "a nonnegative number of cycles per tile");
    YAML::Node seq = p.sequence("regroupings", "a nonempty list of {groups, rows, cols}");
    for (size_t i = 0; i < seq.size(); ++i) {
      MapReader g(seq[i], source, fmt::format("{}[{}]", p.full("regroupings"), i));
      RegroupShape shape;
      shape.groups = g.integer("groups", 1, "a positive number of groups");
      shape.rows = g.integer("rows", 1, "a positive number of rows");
      shape.cols = g.integer("cols", 1, "a positive number of columns");
      g.finish();
      if (static_cast<long long>(shape.groups) * shape.rows * shape.cols != s.pes)
        fail(
            "chip spec '{}': key '{}[{}]'{}: groups x rows x cols = {} x {} x {} = {}, expected pe_array.pes "
            "= {}",
            source, p.full("regroupings"), i, MapReader::line(seq[i]), shape.groups, shape.rows, shape.cols,
            static_cast<long long>(shape.groups) * shape.rows * shape.cols, s.pes);
      s.regroupings.push_back(shape);
    }
    s.vector_lanes = p.integer("vector_lanes", 1, "a positive number of element-wise lanes");
    p.finish();
  }

  {
    MapReader b = top.child("buffers");
    s.buffers[kWeightBuffer] = read_buffer(b, "weights");
    s.buffers[kActivationBuffer] = read_buffer(b, "activations");
    s.buffers[kGradientBuffer] = read_buffer(b, "gradients");
    b.finish();
  }

  {
    MapReader d = top.child("dram");
    s.dram_gb_per_s = d.number("bandwidth_gb_per_s", 0, false, "a positive bandwidth in GB/s");
    s.dram_pj_per_bit = d.number("pj_per_bit", 0, true, "a nonnegative energy in pJ per bit");
    d.finish();
  }

  {
    MapReader e = top.child("energy");
    s.mac_pj = read_per_precision(e, "mac_pj", "a nonnegative energy in pJ per MAC");
    s.register_read_pj_per_bit =
        e.number("register_read_pj_per_bit", 0, true, "a nonnegative energy in pJ per bit");
    s.register_write_pj_per_bit =
        e.number("register_write_pj_per_bit", 0, true, "a nonnegative energy in pJ per bit");
    s.metadata_pj = e.number("metadata_pj", 0, true, "a nonnegative energy in pJ per index event");
    s.vector_op_pj = e.number("vector_op_pj", 0, true, "a nonnegative energy in pJ per element operation");
    s.leakage_pj_per_cycle =
        e.number("leakage_pj_per_cycle", 0, true, "a nonnegative energy in pJ per cycle");
    e.finish();
  }

  {
    MapReader c = top.child("compression");
    c.choice("format", {"bitmap"});
    s.decode_latency_cycles =
        c.integer("decode_latency_cycles", 0, "a nonnegative number of cycles per tile");
    s.encode_elements_per_cycle =
        c.number("encode_elements_per_cycle", 0, false, "a positive number of elements per cycle");
    c.finish();
  }

  {
    MapReader sp = top.child("speculation");
    s.skip_pruned_weight_gradients = sp.boolean("skip_pruned_weight_gradients");
    sp.finish();
  }

  {
    MapReader f = top.child("features");
    s.features.zero_skipping = f.boolean("zero_skipping");
    s.features.speculation = f.boolean("speculation");
    s.features.adaptive_dataflow = f.boolean("adaptive_dataflow");
    s.features.pe_regrouping = f.boolean("pe_regrouping");
    s.features.reformulated_bn = f.boolean("reformulated_bn");
    f.finish();
  }

  {
    MapReader d = top.child("dataflow");
    s.fixed_dataflow = d.choice("fixed", {"a", "b"}) == "a" ? Compressed::a : Compressed::b;
    const std::string obj = d.choice("objective", {"cycles", "energy", "edp"});
    s.objective = obj == "energy" ? DataflowObjective::energy
                  : obj == "edp"  ? DataflowObjective::edp
                                  : DataflowObjective::cycles;
    d.finish();
  }
  top.finish();
  validate_chip_spec(s);
  return s;
}

ChipSpec load_chip_spec(const std::string& path) {
  std::string text;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    TRAINER_CHECK(f != nullptr, "chip spec '{}': cannot open the file", path);
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
  }
  return parse_chip_spec(text, path);
}

void validate_chip_spec(const ChipSpec& s) {
  const std::string& src = s.source;
  TRAINER_CHECK(!s.name.empty(), "chip spec '{}': key 'name': expected a nonempty name", src);
  TRAINER_CHECK(s.pes > 0, "chip spec '{}': key 'pe_array.pes': expected a positive number of PEs", src);
  TRAINER_CHECK(!s.regroupings.empty(),
                "chip spec '{}': key 'pe_array.regroupings': expected at least one shape", src);
  for (size_t i = 0; i < s.regroupings.size(); ++i) {
    const RegroupShape& g = s.regroupings[i];
    TRAINER_CHECK(g.groups > 0 && g.rows > 0 && g.cols > 0 &&
                      static_cast<long long>(g.groups) * g.rows * g.cols == s.pes,
                  "chip spec '{}': key 'pe_array.regroupings[{}]': shape {} does not cover the {} PEs", src,
                  i, g.name(), s.pes);
  }
  for (const BufferSpec& b : s.buffers)
    TRAINER_CHECK(b.size_kib > 0 && b.banks > 0 && b.width_bits > 0,
                  "chip spec '{}': key 'buffers.{}': expected positive size_kib, banks and width_bits", src,
                  b.name);
  TRAINER_CHECK(s.clock_mhz > 0, "chip spec '{}': key 'technology.clock_mhz': expected a positive clock",
                src);
  TRAINER_CHECK(s.dram_gb_per_s > 0,
                "chip spec '{}': key 'dram.bandwidth_gb_per_s': expected a positive bandwidth", src);
  TRAINER_CHECK(
      s.features.zero_skipping || !s.features.adaptive_dataflow,
      "chip spec '{}': key 'features.adaptive_dataflow': needs zero_skipping: true (it chooses which "
      "operand is held compressed)",
      src);
}

}  // namespace trainer
