#include "common/image.h"

#include "common/file_util.h"

#include <png.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace spritediff {

namespace {

Result<Image> FinishRead(png_image& png, const std::string& what) {
  png.format = PNG_FORMAT_RGBA;
  Image image(static_cast<int>(png.width), static_cast<int>(png.height), 4);
  if (!png_image_finish_read(&png, nullptr, image.pixels.data(), 0, nullptr)) {
    std::string msg = png.message;
    png_image_free(&png);
    return Status::InvalidArgument(what + ": not a readable PNG (" + msg + ")");
  }
  return image;
}

}  // namespace

Result<Image> ReadPng(const std::string& path, uint32_t max_side) {
  Result<std::string> bytes = ReadFileBounded(path, kMaxPngFileBytes, "a PNG");
  if (!bytes.ok()) return bytes.status();
  Result<Image> image = DecodePng(*bytes, max_side);
  if (!image.ok()) return Status::InvalidArgument(path + ": " + image.status().message());
  return image;
}

Result<Image> DecodePng(const std::string& bytes, uint32_t max_side) {
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size())) {
    return Status::InvalidArgument(std::string("not a PNG (") + png.message + ")");
  }
  if (png.width == 0 || png.height == 0 || png.width > max_side || png.height > max_side) {
    png_image_free(&png);
    return Status::InvalidArgument("PNG size " + std::to_string(png.width) + "x" + std::to_string(png.height) +
                                   " is out of range (sides 1.." + std::to_string(max_side) + ")");
  }
  return FinishRead(png, "PNG");
}

Image CompositeOnBlack(const Image& image) {
  if (image.channels == 3) return image;
  Image out(image.width, image.height, 3);
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      const int alpha = image.at(x, y, 3);
      for (int c = 0; c < 3; ++c) out.at(x, y, c) = static_cast<uint8_t>((image.at(x, y, c) * alpha + 127) / 255);
    }
  }
  return out;
}

Image PremultiplyAlpha(const Image& image) {
  if (image.channels != 4) return image;
  Image out = image;
  for (size_t p = 0; p < out.pixels.size(); p += 4) {
    const int alpha = out.pixels[p + 3];
    for (int c = 0; c < 3; ++c) out.pixels[p + c] = static_cast<uint8_t>((out.pixels[p + c] * alpha + 127) / 255);
  }
  return out;
}

Image CompositeOn(const Image& image, const Background& background) {
  if (image.channels != 4) return image;
  constexpr uint8_t kLight = 204, kDark = 153;  // the greys GIMP and Aseprite use
  const int cell = std::max(1, background.cell);
  Image out(image.width, image.height, 3);
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      const int alpha = image.at(x, y, 3);
      const uint8_t grey = ((x / cell + y / cell) % 2 == 0) ? kLight : kDark;
      for (int c = 0; c < 3; ++c) {
        const int under = background.checkerboard ? grey : background.rgb[c];
        out.at(x, y, c) = static_cast<uint8_t>((image.at(x, y, c) * alpha + under * (255 - alpha) + 127) / 255);
      }
    }
  }
  return out;
}

Result<Image> BoxDownscale(const Image& image, int factor) {
  if (factor < 1 || image.width % factor != 0 || image.height % factor != 0) {
    return Status::InvalidArgument("cannot downscale " + std::to_string(image.width) + "x" +
                                   std::to_string(image.height) + " by " + std::to_string(factor));
  }
  Image out(image.width / factor, image.height / factor, image.channels);
  const int area = factor * factor;
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      for (int c = 0; c < image.channels; ++c) {
        int sum = 0;
        for (int dy = 0; dy < factor; ++dy)
          for (int dx = 0; dx < factor; ++dx) sum += image.at(x * factor + dx, y * factor + dy, c);
        out.at(x, y, c) = static_cast<uint8_t>((sum + area / 2) / area);
      }
    }
  }
  return out;
}

Image UpscaleNearest(const Image& image, int factor) {
  Image out(image.width * factor, image.height * factor, image.channels);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x)
      for (int c = 0; c < image.channels; ++c) out.at(x, y, c) = image.at(x / factor, y / factor, c);
  return out;
}

Result<Image> MakeGrid(const std::vector<Image>& images, int columns, int padding) {
  if (images.empty()) return Status::InvalidArgument("grid needs at least one image");
  if (columns < 1) return Status::InvalidArgument("grid needs at least one column");
  const Image& first = images.front();
  for (const Image& im : images) {
    if (im.width != first.width || im.height != first.height || im.channels != first.channels) {
      return Status::InvalidArgument("grid images must share one size and channel count");
    }
  }
  const int n = static_cast<int>(images.size());
  const int cols = std::min(columns, n);
  const int rows = (n + cols - 1) / cols;
  Image grid(cols * first.width + (cols + 1) * padding, rows * first.height + (rows + 1) * padding,
             first.channels);
  for (int i = 0; i < n; ++i) {
    const int ox = padding + (i % cols) * (first.width + padding);
    const int oy = padding + (i / cols) * (first.height + padding);
    for (int y = 0; y < first.height; ++y) {
      std::memcpy(&grid.at(ox, oy + y, 0), images[i].pixels.data() + static_cast<size_t>(y) * first.width * first.channels,
                  static_cast<size_t>(first.width) * first.channels);
    }
  }
  return grid;
}

Result<std::string> EncodePng(const Image& image) {
  if (image.channels != 3 && image.channels != 4) {
    return Status::InvalidArgument("PNG encoding needs 3 or 4 channels");
  }
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  png.width = image.width;
  png.height = image.height;
  png.format = image.channels == 4 ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&png, nullptr, &size, 0, image.pixels.data(), 0, nullptr)) {
    return Status::Internal(std::string("PNG encode failed: ") + png.message);
  }
  std::string bytes(size, '\0');
  if (!png_image_write_to_memory(&png, bytes.data(), &size, 0, image.pixels.data(), 0, nullptr)) {
    return Status::Internal(std::string("PNG encode failed: ") + png.message);
  }
  bytes.resize(size);
  return bytes;
}

Status WritePng(const std::string& path, const Image& image) {
  Result<std::string> bytes = EncodePng(image);
  if (!bytes.ok()) return bytes.status();
  return WriteFileAtomic(path, *bytes);
}

}  // namespace spritediff
