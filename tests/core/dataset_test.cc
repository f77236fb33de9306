#include "core/dataset.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace spritediff {
namespace {

namespace fs = std::filesystem;

TEST(Dataset, ImageFolderReadsTheRealSprites) {
  Result<Dataset> ds = LoadDataset(SPRITEDIFF_DATA_DIR, 16);
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  EXPECT_EQ(ds->size(), 2830);
  EXPECT_EQ(ds->labels, (std::vector<std::string>{"hero", "non_hero", "food", "spell", "item"}));
  EXPECT_EQ(ds->class_counts, (std::vector<int64_t>{290, 1138, 28, 366, 1008}));
  EXPECT_EQ(ds->images.sizes(), (std::vector<int64_t>{2830, 3, 16, 16}));
  EXPECT_GE(ds->images.min().item<float>(), -1.0f);
  EXPECT_LE(ds->images.max().item<float>(), 1.0f);
  EXPECT_EQ(ds->images.min().item<float>(), -1.0f) << "composited backgrounds are black";
  EXPECT_TRUE(torch::equal(ds->contexts.sum(1), torch::ones({2830})));

  Result<Dataset> big = LoadDataset(SPRITEDIFF_DATA_DIR, 32);
  ASSERT_TRUE(big.ok());
  // The 16px images are the 2x2 box filter of the 32px ones (up to 8-bit rounding).
  torch::Tensor pooled = torch::avg_pool2d(big->images.slice(0, 0, 64), 2);
  EXPECT_LT((pooled - ds->images.slice(0, 0, 64)).abs().max().item<float>(), 1.5f / 127.5f);
}

// Writes a .npy file (version 1.0 header) the way numpy does.
void WriteNpy(const fs::path& path, const std::string& descr, const std::vector<int64_t>& shape, const void* data,
              size_t bytes) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.put(static_cast<char>(len & 0xff));
  out.put(static_cast<char>(len >> 8));
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

TEST(Dataset, CourseNpyPairMatchesTheImageFolder) {
  Result<Dataset> folder = LoadDataset(SPRITEDIFF_DATA_DIR, 16);
  ASSERT_TRUE(folder.ok());
  const int64_t n = 40;
  // Back to uint8 NHWC, as the course stores its sprites, with float64 one-hot labels.
  torch::Tensor nhwc = folder->images.slice(0, 0, n).add(1).mul(127.5).round().to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
  torch::Tensor labels = folder->contexts.slice(0, 0, n).to(torch::kFloat64).contiguous();
  const fs::path dir = fs::temp_directory_path() / ("spritediff_npy_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  WriteNpy(dir / "sprites_40_16x16.npy", "|u1", {n, 16, 16, 3}, nhwc.data_ptr(), nhwc.numel());
  WriteNpy(dir / "sprite_labels_nc_40_16x16.npy", "<f8", {n, 5}, labels.data_ptr(), labels.numel() * 8);
  Result<Dataset> npy = LoadDataset(dir.string(), 16);
  fs::remove_all(dir);
  ASSERT_TRUE(npy.ok()) << npy.status().message();
  EXPECT_EQ(npy->format, "npy");
  EXPECT_EQ(npy->size(), n);
  EXPECT_TRUE(torch::allclose(npy->images, folder->images.slice(0, 0, n), 0, 1e-6));
  EXPECT_TRUE(torch::equal(npy->contexts, folder->contexts.slice(0, 0, n)));
}

TEST(Dataset, MissingOrEmptyDirectoriesAreClearErrors) {
  Result<Dataset> missing = LoadDataset("/nonexistent/sprites", 16);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/sprites"), std::string::npos);
  const fs::path dir = fs::temp_directory_path() / ("spritediff_empty_" + std::to_string(::getpid()));
  fs::create_directories(dir / "cats");
  EXPECT_EQ(LoadDataset(dir.string(), 16).status().code(), Status::Code::kFailedPrecondition);
  std::ofstream(dir / "cats" / "broken.png") << "not a png";
  Result<Dataset> broken = LoadDataset(dir.string(), 16);
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("broken.png"), std::string::npos);
  fs::remove_all(dir);
}

// Malformed course .npy pairs are errors that name the problem, never an exception or abort.
TEST(Dataset, MalformedNpyPairsAreClearErrors) {
  const fs::path dir = fs::temp_directory_path() / ("spritediff_badnpy_" + std::to_string(::getpid()));
  const std::vector<uint8_t> pixels(2 * 16 * 16 * 3, 100);
  const std::vector<double> none;
  fs::create_directories(dir);
  WriteNpy(dir / "sprites.npy", "|u1", {2, 16, 16, 3}, pixels.data(), pixels.size());
  WriteNpy(dir / "labels.npy", "<f8", {2, 0}, none.data(), 0);  // no label columns
  Result<Dataset> no_columns = LoadDataset(dir.string(), 16);
  ASSERT_FALSE(no_columns.ok());
  EXPECT_NE(no_columns.status().message().find("no label columns"), std::string::npos) << no_columns.status().message();
  // A shape dimension numpy would never write.
  std::string bytes;
  {
    WriteNpy(dir / "labels.npy", "<f8", {2, 5}, std::vector<double>(10, 0.0).data(), 80);
    std::ifstream in(dir / "labels.npy", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  bytes.replace(bytes.find("(2, 5, )"), 8, "(2, x5, )");
  std::ofstream(dir / "labels.npy", std::ios::binary) << bytes;
  Result<Dataset> bad_shape = LoadDataset(dir.string(), 16);
  ASSERT_FALSE(bad_shape.ok());
  EXPECT_NE(bad_shape.status().message().find("bad dimension"), std::string::npos) << bad_shape.status().message();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace spritediff

namespace spritediff {
namespace {

// RGBA: premultiplied colour plus alpha. The colour channels are the composited 3-channel
// images exactly, and a transparent pixel is (-1, -1, -1, -1) whatever colour its file gave it.
TEST(Dataset, RgbaIsPremultipliedColourPlusAlpha) {
  Result<Dataset> rgb = LoadDataset(SPRITEDIFF_DATA_DIR, 32, 3);
  Result<Dataset> rgba = LoadDataset(SPRITEDIFF_DATA_DIR, 32, 4);
  ASSERT_TRUE(rgb.ok() && rgba.ok());
  EXPECT_EQ(rgba->images.sizes(), (std::vector<int64_t>{2830, 4, 32, 32}));
  EXPECT_TRUE(torch::equal(rgba->images.slice(1, 0, 3), rgb->images));
  const torch::Tensor alpha = rgba->images.select(1, 3);
  const torch::Tensor transparent = alpha.eq(-1.0f).unsqueeze(1).expand({-1, 3, -1, -1});
  EXPECT_TRUE(rgba->images.slice(1, 0, 3).masked_select(transparent).eq(-1.0f).all().item<bool>());
  // The data is mostly binary alpha and every sprite has transparent pixels and opaque ones.
  const double partial = alpha.gt(-1.0f).logical_and(alpha.lt(1.0f)).to(torch::kFloat64).mean().item<double>();
  EXPECT_LT(partial, 0.05);
  EXPECT_GT(alpha.eq(-1.0f).to(torch::kFloat64).mean().item<double>(), 0.2);
  // A 16px RGBA set is the box filter of the 32px one, alpha included.
  Result<Dataset> small = LoadDataset(SPRITEDIFF_DATA_DIR, 16, 4);
  ASSERT_TRUE(small.ok());
  const torch::Tensor pooled = torch::avg_pool2d(rgba->images.slice(0, 0, 64), 2);
  EXPECT_LT((pooled - small->images.slice(0, 0, 64)).abs().max().item<float>(), 1.5f / 127.5f);
}

TEST(Dataset, ChannelsOtherThanThreeOrFourAndRgbaFromNpyAreRefused) {
  Result<Dataset> two = LoadDataset(SPRITEDIFF_DATA_DIR, 16, 2);
  ASSERT_FALSE(two.ok());
  EXPECT_NE(two.status().message().find("channels must be 3 (RGB) or 4 (RGBA)"), std::string::npos);
  Result<Dataset> npy = LoadDataset(SPRITEDIFF_SOURCE_DIR "/tests/fixtures", 16, 4);
  ASSERT_FALSE(npy.ok());
  EXPECT_NE(npy.status().message().find("no alpha"), std::string::npos) << npy.status().message();
}

}  // namespace
}  // namespace spritediff
