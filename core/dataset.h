// Training data in memory: images scaled to [-1, 1] and one context vector per image.
// Images have 3 channels (RGB composited onto black, the course's format) or 4: premultiplied
// RGB plus alpha, so a transparent pixel is (-1, -1, -1, -1) whatever colour its file gave it,
// the colour channels equal the 3-channel images, and box filtering averages correctly.
// Two layouts are read: ImageFolder (one folder per class, class order from labels.txt when
// present, else sorted) and the course's .npy pair (uint8 NHWC images, float one-hot labels).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/status.h"

namespace spritediff {

struct Dataset {
  torch::Tensor images;    // [N, C, H, W] float32 in [-1, 1], C = 3 or 4 (see above)
  torch::Tensor contexts;  // [N, K] float32 (one-hot for class folders)
  std::vector<std::string> labels;  // K names in context order
  std::vector<int64_t> class_counts;  // images per label (argmax of the context)
  std::string source;      // the path it was read from
  std::string format;      // "imagefolder" or "npy"

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// Reads `path` (an ImageFolder directory, or a directory holding the course's .npy pair),
// bringing every image to height x height (box filter for integer factors down), with 3
// channels (composited onto black) or 4 (premultiplied RGBA; ImageFolder only, since the
// course's .npy pair carries no alpha).
Result<Dataset> LoadDataset(const std::string& path, int height, int channels = 3);

// Label names for an ImageFolder directory without reading its images.
Result<std::vector<std::string>> ImageFolderLabels(const std::string& dir);

// A minimal .npy reader for little-endian uint8/float32/float64/int64 C-order arrays.
struct NpyArray {
  std::string dtype;  // numpy descr, e.g. "|u1", "<f8"
  std::vector<int64_t> shape;
  std::vector<char> data;
};
Result<NpyArray> ReadNpy(const std::string& path);

}  // namespace spritediff
