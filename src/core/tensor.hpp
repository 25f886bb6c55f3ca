// Tensor: float32 storage, 64-byte aligned, with a logical shape (NCHW for 4-D, NC for 2-D) and a
// physical layout that belongs to the tensor and travels with it from kernel to kernel.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace trainer {

using Shape = std::vector<int64_t>;

// Physical layout of a tensor's storage.
//  - plain:   row-major over the logical shape (NCHW for 4-D, NC for 2-D, OIHW for conv weights).
//  - nChw16c: 4-D only; channels in blocks of 16 innermost: [N][ceil(C/16)][H][W][16]; the channels
//             past C in the last block are padding and always hold zero. This is the layout oneDNN's
//             AVX-512 convolutions read and write, so keeping it end to end avoids reorders.
//  - NCHW16n: 4-D only; images in blocks of 16 innermost: [ceil(N/16)][C][H][W][16]; the images past
//             N in the last block are padding and hold zero. One 512-bit vector holds one (c, h, w)
//             position of 16 images, so a sparse kernel applies one nonzero weight as one broadcast
//             and a run of aligned FMAs, with no gathers (the sparse kernels' layout).
enum class Layout : uint8_t { plain = 0, nChw16c = 1, NCHW16n = 2 };

const char* layout_name(Layout l);
std::string shape_str(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // Zero-initialised tensor of the given logical shape and layout.
  explicit Tensor(Shape shape, Layout layout = Layout::plain);
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;
  int64_t numel() const;                                  // logical elements
  int64_t storage_size() const { return storage_size_; }  // floats held, padding included
  int64_t capacity() const { return capacity_; }          // floats allocated
  Layout layout() const { return layout_; }
  bool empty() const { return storage_size_ == 0; }

  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }

  // Sets shape and layout, reallocating only when more storage is needed. Contents are unspecified
  // afterwards except that channel padding of blocked layouts is zero.
  void resize(const Shape& shape, Layout layout = Layout::plain);
  void zero();
  void fill(float v);  // logical elements only; padding stays zero

  // Offset in storage of logical element (n, c, h, w) of a 4-D tensor, or (n, c) of a 2-D one.
  int64_t offset(int64_t n, int64_t c, int64_t h = 0, int64_t w = 0) const;
  float at(int64_t n, int64_t c, int64_t h = 0, int64_t w = 0) const {
    return data_.get()[offset(n, c, h, w)];
  }
  float& at(int64_t n, int64_t c, int64_t h = 0, int64_t w = 0) { return data_.get()[offset(n, c, h, w)]; }

  // A copy in another physical layout (same logical contents).
  Tensor to_layout(Layout layout) const;
  // The same into `out` (resized, its storage reused: no allocation once it is large enough), the way
  // kernels move activations between layouts every step. out must not be this tensor.
  void convert_to(Layout layout, Tensor& out) const;
  // Reinterprets a plain tensor with another logical shape of the same element count.
  Tensor reshaped(const Shape& shape) const;

 private:
  struct FreeDeleter {
    void operator()(float* p) const;
  };
  Shape shape_;
  Layout layout_ = Layout::plain;
  int64_t storage_size_ = 0;
  int64_t capacity_ = 0;
  std::unique_ptr<float[], FreeDeleter> data_;
};

int64_t storage_size_for(const Shape& shape, Layout layout);

// Throws trainer::Error naming `what` unless t has exactly the expected logical shape.
void check_shape(const Tensor& t, const Shape& expected, const char* what);

}  // namespace trainer
