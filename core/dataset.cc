#include "core/dataset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "common/client_text.h"
#include "common/file_util.h"
#include "common/image.h"

namespace spritediff {

namespace fs = std::filesystem;

namespace {

bool HasPngExtension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return ext == ".png";
}

// Dataset images are sprites: a side past this is refused from the PNG header, before any
// pixel buffer exists (a 60-byte PNG may claim 16384x16384).
constexpr uint32_t kMaxDatasetImageSide = 1024;

// One image brought to [height, height, channels] uint8: composited onto black (3 channels) or
// premultiplied RGBA (4), box-downscaled.
Result<Image> PrepareImage(const std::string& path, int height, int channels) {
  Result<Image> rgba = ReadPng(path, kMaxDatasetImageSide);
  if (!rgba.ok()) return rgba.status();
  Image rgb = channels == 4 ? PremultiplyAlpha(*rgba) : CompositeOnBlack(*rgba);
  if (rgb.width != rgb.height) {
    return Status::InvalidArgument(path + ": image is " + std::to_string(rgb.width) + "x" +
                                   std::to_string(rgb.height) + ", expected a square");
  }
  if (rgb.width == height) return rgb;
  if (rgb.width < height || rgb.width % height != 0) {
    return Status::InvalidArgument(path + ": a " + std::to_string(rgb.width) + "px image cannot be brought to " +
                                   std::to_string(height) + "px by an integer box filter");
  }
  return BoxDownscale(rgb, rgb.width / height);
}

torch::Tensor ToUnitRange(const torch::Tensor& nhwc_uint8) {
  return nhwc_uint8.permute({0, 3, 1, 2}).to(torch::kFloat32).div(127.5).sub(1.0).contiguous();
}

std::vector<int64_t> CountClasses(const torch::Tensor& contexts) {
  torch::Tensor idx = contexts.argmax(1);
  std::vector<int64_t> counts(contexts.size(1), 0);
  auto acc = idx.accessor<int64_t, 1>();
  for (int64_t i = 0; i < idx.size(0); ++i) counts[acc[i]]++;
  return counts;
}

Result<std::vector<std::string>> ReadLabelsTxt(const fs::path& file) {
  Result<std::string> text = ReadFileBounded(file.string(), kMaxTextFileBytes, "a labels.txt");
  if (!text.ok()) return text.status();
  std::istringstream in(*text);
  std::vector<std::string> labels;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    line.erase(std::remove_if(line.begin(), line.end(), ::isspace), line.end());
    if (line.empty()) continue;
    // A label names a direct subfolder: "/abs", "../other" or "a/b" would read classes from
    // outside the dataset, which the server's symlink scan never sees.
    if (!IsPlainName(line)) {
      return Status::InvalidArgument(file.string() + ":" + std::to_string(number) + ": '" + Echo(line) +
                                     "' is not a plain folder name (1.." + std::to_string(kMaxLabelBytes) +
                                     " bytes, no '/', '\\', '.', '..' or control characters)");
    }
    labels.push_back(line);
  }
  return labels;
}

Result<Dataset> LoadImageFolder(const fs::path& dir, int height, int channels) {
  Result<std::vector<std::string>> labels = ImageFolderLabels(dir.string());
  if (!labels.ok()) return labels.status();
  const int64_t k = static_cast<int64_t>(labels->size());

  std::vector<std::pair<std::string, int64_t>> files;
  for (int64_t c = 0; c < k; ++c) {
    std::vector<std::string> class_files;
    for (const auto& entry : fs::directory_iterator(dir / (*labels)[c])) {
      if (entry.is_regular_file() && HasPngExtension(entry.path())) class_files.push_back(entry.path().string());
    }
    std::sort(class_files.begin(), class_files.end());  // deterministic order across file systems
    for (auto& f : class_files) files.emplace_back(std::move(f), c);
  }
  if (files.empty()) return Status::FailedPrecondition(dir.string() + ": no PNG files in its class folders");

  const int64_t n = static_cast<int64_t>(files.size());
  torch::Tensor pixels = torch::empty({n, height, height, channels}, torch::kUInt8);
  torch::Tensor contexts = torch::zeros({n, k}, torch::kFloat32);
  for (int64_t i = 0; i < n; ++i) {
    Result<Image> image = PrepareImage(files[i].first, height, channels);
    if (!image.ok()) return image.status();
    std::memcpy(pixels[i].data_ptr<uint8_t>(), image->pixels.data(), image->pixels.size());
    contexts[i][files[i].second] = 1.0f;
  }
  Dataset ds;
  ds.images = ToUnitRange(pixels);
  ds.contexts = contexts;
  ds.labels = *labels;
  ds.class_counts = CountClasses(contexts);
  ds.source = dir.string();
  ds.format = "imagefolder";
  return ds;
}

Result<Dataset> LoadNpyPair(const fs::path& dir, int height) {
  std::optional<NpyArray> images, labels;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".npy") continue;
    Result<NpyArray> arr = ReadNpy(entry.path().string());
    if (!arr.ok()) return arr.status();
    if (arr->shape.size() == 4 && !images) images = std::move(*arr);
    else if (arr->shape.size() == 2 && !labels) labels = std::move(*arr);
  }
  if (!images || !labels) {
    return Status::FailedPrecondition(dir.string() +
                                      ": expected one 4-D uint8 images .npy and one 2-D labels .npy");
  }
  if (images->dtype != "|u1") return Status::InvalidArgument(dir.string() + ": images .npy must be uint8, got " + images->dtype);
  const auto& s = images->shape;
  if (s[3] != 3 || s[1] != s[2]) {
    return Status::InvalidArgument(dir.string() + ": images .npy must be N x H x H x 3");
  }
  if (labels->shape[0] != s[0]) {
    return Status::InvalidArgument(dir.string() + ": images and labels .npy disagree on N");
  }
  if (s[0] < 1 || labels->shape[1] < 1) {
    return Status::InvalidArgument(dir.string() + ": the .npy pair holds no images or no label columns");
  }
  torch::Tensor pixels = torch::from_blob(images->data.data(), {s[0], s[1], s[2], 3}, torch::kUInt8).clone();
  torch::Tensor x = ToUnitRange(pixels);
  if (s[1] != height) {
    if (s[1] < height || s[1] % height != 0) {
      return Status::InvalidArgument(dir.string() + ": " + std::to_string(s[1]) + "px images cannot become " +
                                     std::to_string(height) + "px");
    }
    x = torch::avg_pool2d(x, s[1] / height);
  }
  torch::ScalarType type;
  if (labels->dtype == "<f8") type = torch::kFloat64;
  else if (labels->dtype == "<f4") type = torch::kFloat32;
  else if (labels->dtype == "<i8") type = torch::kInt64;
  else if (labels->dtype == "|u1") type = torch::kUInt8;
  else return Status::InvalidArgument(dir.string() + ": unsupported labels dtype " + labels->dtype);
  torch::Tensor ctx =
      torch::from_blob(labels->data.data(), {labels->shape[0], labels->shape[1]}, type).to(torch::kFloat32).clone();

  Dataset ds;
  ds.images = x;
  ds.contexts = ctx;
  if (fs::exists(dir / "labels.txt")) {
    Result<std::vector<std::string>> names = ReadLabelsTxt(dir / "labels.txt");
    if (!names.ok()) return names.status();
    if (static_cast<int64_t>(names->size()) != ctx.size(1)) {
      return Status::InvalidArgument(dir.string() + ": labels.txt names " + std::to_string(names->size()) +
                                     " classes but the labels .npy has " + std::to_string(ctx.size(1)));
    }
    ds.labels = *names;
  } else {
    for (int64_t i = 0; i < ctx.size(1); ++i) ds.labels.push_back("class" + std::to_string(i));
  }
  ds.class_counts = CountClasses(ctx);
  ds.source = dir.string();
  ds.format = "npy";
  return ds;
}

}  // namespace

Result<std::vector<std::string>> ImageFolderLabels(const std::string& dir_str) {
  const fs::path dir(dir_str);
  std::vector<std::string> labels;
  if (fs::exists(dir / "labels.txt")) {
    Result<std::vector<std::string>> names = ReadLabelsTxt(dir / "labels.txt");
    if (!names.ok()) return names.status();
    labels = *names;
    for (const auto& l : labels) {
      if (!fs::is_directory(dir / l)) {
        return Status::FailedPrecondition(dir_str + ": labels.txt names '" + Echo(l) + "' but there is no such folder");
      }
    }
  } else {
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_directory()) labels.push_back(entry.path().filename().string());
    }
    std::sort(labels.begin(), labels.end());
  }
  if (labels.empty()) return Status::FailedPrecondition(dir_str + ": no class folders");
  return labels;
}

Result<Dataset> LoadDataset(const std::string& path, int height, int channels) {
  if (channels != 3 && channels != 4) {
    return Status::InvalidArgument("channels must be 3 (RGB) or 4 (RGBA), got " + std::to_string(channels));
  }
  std::error_code ec;
  const fs::path dir(path);
  if (!fs::is_directory(dir, ec)) return Status::NotFound(path + ": not a directory");
  try {
    bool has_npy = false, has_dirs = false;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_directory()) has_dirs = true;
      if (entry.path().extension() == ".npy") has_npy = true;
    }
    if (has_npy) {
      if (channels == 4) {
        return Status::InvalidArgument(path + ": the course's .npy pair has no alpha; a 4-channel (RGBA) model "
                                       "needs an ImageFolder of PNGs");
      }
      return LoadNpyPair(dir, height);
    }
    if (has_dirs) return LoadImageFolder(dir, height, channels);
    return Status::FailedPrecondition(path + ": neither class folders (ImageFolder) nor .npy files");
  } catch (const fs::filesystem_error& e) {
    return Status::IoError(path + ": " + e.what());
  } catch (const std::exception& e) {  // malformed files must not take the process down
    return Status::InvalidArgument(path + ": cannot read the dataset (" + e.what() + ")");
  }
}

Result<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot open");
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) return Status::InvalidArgument(path + ": not a .npy file");
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  if (!in || header_len > (1u << 20)) return Status::InvalidArgument(path + ": bad .npy header");
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (!in) return Status::InvalidArgument(path + ": truncated .npy header");

  NpyArray arr;
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']+)'"))) {
    return Status::InvalidArgument(path + ": .npy header has no descr");
  }
  arr.dtype = m[1];
  if (std::regex_search(header, std::regex("'fortran_order':\\s*True"))) {
    return Status::InvalidArgument(path + ": Fortran-order .npy is not supported");
  }
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) {
    return Status::InvalidArgument(path + ": .npy header has no shape");
  }
  std::stringstream dims(m[1].str());
  std::string dim;
  int64_t count = 1;
  while (std::getline(dims, dim, ',')) {
    dim.erase(std::remove_if(dim.begin(), dim.end(), ::isspace), dim.end());
    if (dim.empty()) continue;
    if (dim.size() > 12 || dim.find_first_not_of("0123456789") != std::string::npos) {
      return Status::InvalidArgument(path + ": .npy shape has a bad dimension '" + dim + "'");
    }
    arr.shape.push_back(std::stoll(dim));
    constexpr int64_t kMaxElements = int64_t{1} << 34;
    // Checked before multiplying: 12-digit dimensions could overflow the product.
    if (arr.shape.back() != 0 && count > kMaxElements / arr.shape.back()) {
      return Status::InvalidArgument(path + ": .npy array too large");
    }
    count *= arr.shape.back();
  }
  int64_t item = 0;
  if (arr.dtype == "|u1" || arr.dtype == "|b1") item = 1;
  else if (arr.dtype == "<f4" || arr.dtype == "<i4") item = 4;
  else if (arr.dtype == "<f8" || arr.dtype == "<i8") item = 8;
  else return Status::InvalidArgument(path + ": unsupported .npy dtype " + arr.dtype);
  // The declared size must be what the file holds, checked before allocating: a 128-byte
  // file may claim gigabytes.
  const int64_t declared = count * item;  // count <= 2^34 and item <= 8: no overflow
  const std::streamoff data_start = in.tellg();
  in.seekg(0, std::ios::end);
  const std::streamoff file_end = in.tellg();
  in.seekg(data_start);
  if (data_start < 0 || file_end < data_start || file_end - data_start < declared) {
    return Status::InvalidArgument(path + ": .npy header declares " + std::to_string(declared) +
                                   " data bytes but the file holds only " +
                                   std::to_string(file_end >= data_start ? file_end - data_start : 0));
  }
  arr.data.resize(static_cast<size_t>(declared));
  in.read(arr.data.data(), static_cast<std::streamsize>(arr.data.size()));
  if (!in) return Status::InvalidArgument(path + ": truncated .npy data");
  return arr;
}

}  // namespace spritediff
