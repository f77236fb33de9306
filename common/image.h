// 8-bit images and PNG I/O (libpng). Reading accepts every PNG colour type (palette, grey,
// grey+alpha, RGB, RGBA, tRNS, 16-bit) and yields RGBA; sprites are composited onto black
// because transparent pixels carry no colour.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/status.h"

namespace spritediff {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;  // 3 (RGB) or 4 (RGBA)
  std::vector<uint8_t> pixels;  // row-major, interleaved channels

  Image() = default;
  Image(int w, int h, int c) : width(w), height(h), channels(c), pixels(static_cast<size_t>(w) * h * c, 0) {}
  uint8_t& at(int x, int y, int c) { return pixels[(static_cast<size_t>(y) * width + x) * channels + c]; }
  uint8_t at(int x, int y, int c) const { return pixels[(static_cast<size_t>(y) * width + x) * channels + c]; }
};

// Declared sizes are checked against these before any pixel buffer is allocated, so a 60-byte
// PNG that claims 16384x16384 costs nothing. Sprites are tiny; the defaults leave room for
// sheets and grids. Training datasets pass a tighter side (see core/dataset.cc).
inline constexpr uint32_t kMaxPngSide = 4096;
inline constexpr uint64_t kMaxPngFileBytes = 64ull << 20;

Result<Image> ReadPng(const std::string& path, uint32_t max_side = kMaxPngSide);
Result<Image> DecodePng(const std::string& bytes, uint32_t max_side = kMaxPngSide);

// RGBA -> RGB with colour multiplied by alpha (black background). RGB passes through.
Image CompositeOnBlack(const Image& image);

// RGBA -> RGBA with each colour multiplied by its alpha (premultiplied): a transparent pixel
// becomes (0, 0, 0, 0) whatever colour it carried, and box filtering then averages correctly.
// The colour channels of the result equal CompositeOnBlack's. RGB passes through.
Image PremultiplyAlpha(const Image& image);

// RGBA -> RGB over a background: a checkerboard of `cell`-pixel squares in two greys (what
// image editors show behind transparency), or one colour when `solid` is set. RGB passes through.
struct Background {
  bool checkerboard = true;
  int cell = 4;                 // checkerboard square side, in output pixels
  uint8_t rgb[3] = {0, 0, 0};   // the solid colour
};
Image CompositeOn(const Image& image, const Background& background);

// Averages factor x factor blocks; width and height must be multiples of factor.
Result<Image> BoxDownscale(const Image& image, int factor);

// Repeats each pixel factor x factor times (pixel art stays crisp).
Image UpscaleNearest(const Image& image, int factor);

// Tiles equally sized images into rows of `columns`, separated by `padding` black pixels.
Result<Image> MakeGrid(const std::vector<Image>& images, int columns, int padding);

Result<std::string> EncodePng(const Image& image);
// Durable and atomic (WriteFileAtomic in common/file_util.h): a crash never leaves half a file.
Status WritePng(const std::string& path, const Image& image);

}  // namespace spritediff
