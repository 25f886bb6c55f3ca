#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.hpp"

namespace trainer {

namespace {

constexpr char kMagic[8] = {'T', 'R', 'N', 'R', 'C', 'K', 'P', 'T'};
constexpr uint32_t kVersion = 2;  // 2 added the blobs; 1 is still read
constexpr size_t kHeaderSize = 24;
// Sanity bounds for a corrupt file that still passes the checksum (or a hostile one).
constexpr uint32_t kMaxRank = 8;
constexpr uint32_t kMaxName = 4096;

const char* role_name(CheckpointTensor::Role r) {
  switch (r) {
    case CheckpointTensor::Role::param:
      return "parameter";
    case CheckpointTensor::Role::momentum:
      return "momentum of";
    case CheckpointTensor::Role::buffer:
      return "buffer";
  }
  return "?";
}

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// A bounds-checked reader over the payload; every overrun is a corrupt-file error naming the file.
class Cursor {
 public:
  Cursor(const std::string& path, const char* data, size_t size) : path_(path), p_(data), end_(data + size) {}
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  const char* take(size_t n, const char* what) {
    need(n, what);
    const char* at = p_;
    p_ += n;
    return at;
  }
  size_t left() const { return static_cast<size_t>(end_ - p_); }

 private:
  void need(size_t n, const char* what) {
    TRAINER_CHECK(n <= left(), "checkpoint '{}': corrupt: it ends inside {}", path_, what);
  }
  const std::string& path_;
  const char* p_;
  const char* end_;
};

// Closes on scope exit; close errors on the write path are checked explicitly before that.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    TRAINER_CHECK(w > 0, "checkpoint '{}': write failed: {}", path, std::strerror(errno));
    data += w;
    n -= static_cast<size_t>(w);
  }
}

uint32_t crc_of(const char* data, size_t n) {
  return static_cast<uint32_t>(crc32_z(0L, reinterpret_cast<const Bytef*>(data), n));
}

Tensor plain_copy(const Tensor& t) { return t.layout() == Layout::plain ? t : t.to_layout(Layout::plain); }

}  // namespace

std::string describe_model(const CheckpointInfo& info) {
  return fmt::format("model '{}' (width {}) on {} images, {} classes", info.model, info.width,
                     shape_str(info.input), info.classes);
}

Checkpoint capture_checkpoint(Graph& graph, const Sgd* sgd, CheckpointInfo info) {
  Checkpoint ck;
  ck.info = std::move(info);
  const std::vector<Param*> params = graph.params();
  for (const Param* p : params)
    ck.tensors.push_back({CheckpointTensor::Role::param, p->name, plain_copy(p->value)});
  if (sgd) {
    ck.sgd_steps = sgd->steps();
    const auto& bufs = sgd->momentum_buffers();
    const auto& sp = sgd->params();
    for (size_t i = 0; i < bufs.size() && i < sp.size(); ++i)
      ck.tensors.push_back({CheckpointTensor::Role::momentum, sp[i]->name, plain_copy(bufs[i])});
  }
  for (const Buffer& b : graph.buffers())
    ck.tensors.push_back({CheckpointTensor::Role::buffer, b.name, plain_copy(*b.tensor)});
  return ck;
}

void write_checkpoint(const std::string& path, const Checkpoint& ck) {
  TRAINER_CHECK(!path.empty(), "checkpoint: no file name given");
  nlohmann::json meta;
  meta["model"] = ck.info.model;
  meta["width"] = ck.info.width;
  meta["input"] = ck.info.input;
  meta["classes"] = ck.info.classes;
  meta["epoch"] = ck.info.epoch;
  meta["global_step"] = ck.info.global_step;
  meta["sgd_steps"] = ck.sgd_steps;
  meta["recipe"] = ck.info.recipe;
  const std::string meta_text = meta.dump();

  std::string payload;
  size_t floats = 0;
  for (const auto& t : ck.tensors) floats += static_cast<size_t>(t.value.numel());
  payload.reserve(meta_text.size() + floats * sizeof(float) + ck.tensors.size() * 64 + 16);
  put<uint32_t>(payload, static_cast<uint32_t>(meta_text.size()));
  payload += meta_text;
  put<uint32_t>(payload, static_cast<uint32_t>(ck.tensors.size()));
  for (const auto& t : ck.tensors) {
    TRAINER_CHECK(t.value.layout() == Layout::plain, "checkpoint '{}': tensor '{}' is not plain", path,
                  t.name);
    put<uint8_t>(payload, static_cast<uint8_t>(t.role));
    put<uint32_t>(payload, static_cast<uint32_t>(t.name.size()));
    payload += t.name;
    put<uint32_t>(payload, static_cast<uint32_t>(t.value.rank()));
    for (int64_t d : t.value.shape()) put<int64_t>(payload, d);
    if (t.value.numel() > 0)
      payload.append(reinterpret_cast<const char*>(t.value.data()), sizeof(float) * t.value.numel());
  }
  put<uint32_t>(payload, static_cast<uint32_t>(ck.blobs.size()));
  for (const auto& [name, bytes] : ck.blobs) {
    put<uint32_t>(payload, static_cast<uint32_t>(name.size()));
    payload += name;
    put<uint64_t>(payload, static_cast<uint64_t>(bytes.size()));
    payload.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }

  std::string header(kMagic, sizeof(kMagic));
  put<uint32_t>(header, kVersion);
  put<uint32_t>(header, crc_of(payload.data(), payload.size()));
  put<uint64_t>(header, payload.size());

  const std::string tmp = path + ".tmp";
  std::error_code ec;  // a failure shows up as the open error below
  if (const auto parent = std::filesystem::path(path).parent_path(); !parent.empty())
    std::filesystem::create_directories(parent, ec);
  try {
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    TRAINER_CHECK(f.fd >= 0, "checkpoint '{}': cannot create '{}': {}", path, tmp, std::strerror(errno));
    write_all(f.fd, header.data(), header.size(), path);
    write_all(f.fd, payload.data(), payload.size(), path);
    TRAINER_CHECK(::fsync(f.fd) == 0, "checkpoint '{}': fsync failed: {}", path, std::strerror(errno));
    const int fd = f.fd;
    f.fd = -1;
    TRAINER_CHECK(::close(fd) == 0, "checkpoint '{}': close failed: {}", path, std::strerror(errno));
    TRAINER_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "checkpoint '{}': cannot rename '{}' to it: {}",
                  path, tmp, std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; a failure here leaves a complete file, so it is not an error.
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = std::filesystem::path(".");
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) (void)::fsync(d.fd);
}

Checkpoint read_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRAINER_CHECK(in.good(), "checkpoint '{}': cannot open it ({})", path, std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TRAINER_CHECK(!in.bad(), "checkpoint '{}': read failed", path);
  TRAINER_CHECK(bytes.size() >= sizeof(kMagic) && std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0,
                "checkpoint '{}': not a trainer checkpoint (it does not start with the checkpoint magic)",
                path);
  TRAINER_CHECK(bytes.size() >= kHeaderSize,
                "checkpoint '{}': truncated: {} bytes, shorter than the {}-byte header", path, bytes.size(),
                kHeaderSize);
  uint32_t version = 0, crc = 0;
  uint64_t size = 0;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&crc, bytes.data() + 12, 4);
  std::memcpy(&size, bytes.data() + 16, 8);
  TRAINER_CHECK(version == 1 || version == kVersion,
                "checkpoint '{}': format version {}, this build reads versions 1 to {}", path, version, kVersion);
  const uint64_t have = bytes.size() - kHeaderSize;
  TRAINER_CHECK(have >= size,
                "checkpoint '{}': truncated: the header promises {} bytes of data, the file holds {}", path,
                size, have);
  TRAINER_CHECK(have == size, "checkpoint '{}': corrupt: {} unexpected bytes after the data", path,
                have - size);
  const char* payload = bytes.data() + kHeaderSize;
  TRAINER_CHECK(crc_of(payload, size) == crc, "checkpoint '{}': corrupt: checksum mismatch", path);

  Cursor cur(path, payload, size);
  Checkpoint ck;
  const uint32_t meta_size = cur.get<uint32_t>("the metadata");
  const char* meta_text = cur.take(meta_size, "the metadata");
  try {
    const nlohmann::json meta = nlohmann::json::parse(meta_text, meta_text + meta_size);
    ck.info.model = meta.at("model").get<std::string>();
    ck.info.width = meta.at("width").get<int64_t>();
    ck.info.input = meta.at("input").get<Shape>();
    ck.info.classes = meta.at("classes").get<int64_t>();
    ck.info.epoch = meta.at("epoch").get<int64_t>();
    ck.info.global_step = meta.at("global_step").get<int64_t>();
    ck.info.recipe = meta.at("recipe");
    ck.sgd_steps = meta.at("sgd_steps").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint '{}': corrupt metadata: {}", path, e.what());
  }
  const uint32_t count = cur.get<uint32_t>("the tensor count");
  for (uint32_t i = 0; i < count; ++i) {
    CheckpointTensor t;
    const uint8_t role = cur.get<uint8_t>("a tensor header");
    TRAINER_CHECK(role <= 2, "checkpoint '{}': corrupt: tensor {} has unknown role {}", path, i, role);
    t.role = static_cast<CheckpointTensor::Role>(role);
    const uint32_t name_size = cur.get<uint32_t>("a tensor name");
    TRAINER_CHECK(name_size <= kMaxName, "checkpoint '{}': corrupt: tensor {} has a {}-byte name", path, i,
                  name_size);
    t.name.assign(cur.take(name_size, "a tensor name"), name_size);
    const uint32_t rank = cur.get<uint32_t>("a tensor shape");
    TRAINER_CHECK(rank >= 1 && rank <= kMaxRank, "checkpoint '{}': corrupt: tensor '{}' has rank {}", path,
                  t.name, rank);
    Shape shape(rank);
    uint64_t numel = 1;
    for (auto& d : shape) {
      d = cur.get<int64_t>("a tensor shape");
      TRAINER_CHECK(d >= 0 && static_cast<uint64_t>(d) <= cur.left(),
                    "checkpoint '{}': corrupt: tensor '{}' has "
                    "dimension {}",
                    path, t.name, d);
      numel *= static_cast<uint64_t>(d);
      TRAINER_CHECK(numel <= cur.left(), "checkpoint '{}': corrupt: tensor '{}' is larger than the file",
                    path, t.name);
    }
    const char* values = cur.take(numel * sizeof(float), "tensor values");
    t.value = Tensor(shape);
    if (numel) std::memcpy(t.value.data(), values, numel * sizeof(float));
    ck.tensors.push_back(std::move(t));
  }
  if (version >= 2) {
    const uint32_t blobs = cur.get<uint32_t>("the blob count");
    for (uint32_t i = 0; i < blobs; ++i) {
      const uint32_t name_size = cur.get<uint32_t>("a blob name");
      TRAINER_CHECK(name_size <= kMaxName, "checkpoint '{}': corrupt: blob {} has a {}-byte name", path, i,
                    name_size);
      std::string name(cur.take(name_size, "a blob name"), name_size);
      const uint64_t n = cur.get<uint64_t>("a blob size");
      TRAINER_CHECK(n <= cur.left(), "checkpoint '{}': corrupt: blob '{}' is larger than the file", path, name);
      const char* b = cur.take(n, "a blob");
      ck.blobs[name].assign(reinterpret_cast<const uint8_t*>(b), reinterpret_cast<const uint8_t*>(b) + n);
    }
  }
  TRAINER_CHECK(cur.left() == 0, "checkpoint '{}': corrupt: {} bytes left after the last tensor", path,
                cur.left());
  return ck;
}

void restore_checkpoint(const Checkpoint& ck, const std::string& path, Graph& graph, Sgd* sgd) {
  using Role = CheckpointTensor::Role;
  std::map<std::pair<Role, std::string>, const CheckpointTensor*> in_file;
  for (const auto& t : ck.tensors) in_file[{t.role, t.name}] = &t;
  const std::string written_for = describe_model(ck.info);

  std::map<std::pair<Role, std::string>, bool> used;
  auto take = [&](Role role, const std::string& name, const Tensor& target) -> const Tensor& {
    auto it = in_file.find({role, name});
    TRAINER_CHECK(it != in_file.end(),
                  "checkpoint '{}' has no {} '{}' that this model needs (it was written for {})", path,
                  role_name(role), name, written_for);
    TRAINER_CHECK(
        it->second->value.shape() == target.shape(),
        "checkpoint '{}': {} '{}' has shape {} in the file but {} in this model (the file was written for "
        "{})",
        path, role_name(role), name, shape_str(it->second->value.shape()), shape_str(target.shape()),
        written_for);
    used[{role, name}] = true;
    return it->second->value;
  };
  auto copy_into = [](const Tensor& from, Tensor& to) {
    if (to.layout() == Layout::plain) {
      to = from;
    } else {
      to = from.to_layout(to.layout());
    }
  };

  // Check everything before changing anything, so a mismatch leaves the model as it was.
  const std::vector<Param*> params = graph.params();
  const std::vector<Buffer> buffers = graph.buffers();
  for (const Param* p : params) take(Role::param, p->name, p->value);
  for (const Buffer& b : buffers) take(Role::buffer, b.name, *b.tensor);
  const bool want_momentum = sgd && !sgd->momentum_buffers().empty() && ck.sgd_steps > 0;
  if (want_momentum)
    for (size_t i = 0; i < sgd->params().size(); ++i)
      take(Role::momentum, sgd->params()[i]->name, sgd->momentum_buffers()[i]);
  for (const auto& t : ck.tensors) {
    if (t.role == Role::momentum && !want_momentum) continue;  // a run without momentum ignores it
    TRAINER_CHECK(used.count({t.role, t.name}),
                  "checkpoint '{}': {} '{}' is not in this model (the file was written "
                  "for {})",
                  path, role_name(t.role), t.name, written_for);
  }

  for (Param* p : params) copy_into(take(Role::param, p->name, p->value), p->value);
  for (const Buffer& b : buffers) copy_into(take(Role::buffer, b.name, *b.tensor), *b.tensor);
  if (sgd) {
    if (want_momentum)
      for (size_t i = 0; i < sgd->params().size(); ++i)
        copy_into(take(Role::momentum, sgd->params()[i]->name, sgd->momentum_buffers()[i]),
                  sgd->momentum_buffers()[i]);
    sgd->set_steps(ck.sgd_steps);
  }
}

}  // namespace trainer
