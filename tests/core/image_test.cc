#include "common/image.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace spritediff {
namespace {

namespace fs = std::filesystem;

// PNG colour type from the IHDR chunk (byte 25): 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA.
int ColourType(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  char header[26];
  in.read(header, 26);
  return static_cast<unsigned char>(header[25]);
}

// The first dataset file of each colour type.
std::map<int, fs::path> SamplesByColourType() {
  std::map<int, fs::path> found;
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(SPRITEDIFF_DATA_DIR))
    if (e.path().extension() == ".png") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) found.emplace(ColourType(f), f);
  return found;
}

TEST(Png, ReadsEveryColourTypeInTheDataset) {
  const auto samples = SamplesByColourType();
  for (int type : {0, 2, 3, 4, 6}) ASSERT_TRUE(samples.count(type)) << "dataset lacks colour type " << type;
  for (const auto& [type, path] : samples) {
    Result<Image> image = ReadPng(path.string());
    ASSERT_TRUE(image.ok()) << path << ": " << image.status().message();
    EXPECT_EQ(image->width, 32);
    EXPECT_EQ(image->height, 32);
    EXPECT_EQ(image->channels, 4);
    int opaque = 0;
    for (int y = 0; y < 32; ++y)
      for (int x = 0; x < 32; ++x) opaque += image->at(x, y, 3) > 0;
    EXPECT_GT(opaque, 32 * 32 * 8 / 100) << path << " (the dataset keeps tiles >= 8% opaque)";
  }
}

TEST(Png, PaletteAndRgbaFilesRoundTrip) {
  const auto samples = SamplesByColourType();
  for (int type : {3, 6}) {
    Result<Image> original = ReadPng(samples.at(type).string());
    ASSERT_TRUE(original.ok());
    Result<std::string> bytes = EncodePng(*original);
    ASSERT_TRUE(bytes.ok());
    Result<Image> again = DecodePng(*bytes);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->pixels, original->pixels) << "type " << type;
  }
  // Palette transparency (tRNS) survives: palette sprites have transparent backgrounds.
  Result<Image> palette = ReadPng(samples.at(3).string());
  int transparent = 0;
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x) transparent += palette->at(x, y, 3) == 0;
  EXPECT_GT(transparent, 0);
}

TEST(Png, WritePngIsAtomicAndReadable) {
  const fs::path dir = fs::temp_directory_path() / "spritediff_png_test";
  fs::create_directories(dir);
  Image img(3, 2, 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = static_cast<uint8_t>(i * 13);
  const std::string path = (dir / "x.png").string();
  ASSERT_TRUE(WritePng(path, img).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  Result<Image> back = ReadPng(path);
  ASSERT_TRUE(back.ok());
  Image rgb = CompositeOnBlack(*back);
  EXPECT_EQ(rgb.pixels, img.pixels);
  fs::remove_all(dir);
}

TEST(Png, BadInputIsAnErrorNotACrash) {
  EXPECT_FALSE(DecodePng("").ok());
  EXPECT_FALSE(DecodePng("definitely not a png").ok());
  Result<std::string> good = EncodePng(Image(16, 16, 3));
  ASSERT_TRUE(good.ok());
  Result<Image> truncated = DecodePng(good->substr(0, good->size() / 2));
  EXPECT_FALSE(truncated.ok());
  Result<Image> missing = ReadPng("/nonexistent/file.png");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/file.png"), std::string::npos);
}

TEST(ImageOps, CompositeBoxDownscaleUpscaleGrid) {
  Image rgba(2, 2, 4);
  // One opaque white pixel, one half-transparent red, two fully transparent coloured ones.
  const uint8_t px[16] = {255, 255, 255, 255, 255, 0, 0, 128, 0, 255, 0, 0, 10, 20, 30, 0};
  std::copy(px, px + 16, rgba.pixels.begin());
  Image rgb = CompositeOnBlack(rgba);
  EXPECT_EQ(rgb.channels, 3);
  EXPECT_EQ(rgb.at(0, 0, 0), 255);
  EXPECT_EQ(rgb.at(1, 0, 0), 128);  // 255 * 128 / 255
  EXPECT_EQ(rgb.at(0, 1, 1), 0);    // transparent colour carries nothing
  Result<Image> small = BoxDownscale(rgb, 2);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->width, 1);
  EXPECT_EQ(small->at(0, 0, 0), (255 + 128 + 0 + 0 + 2) / 4);
  EXPECT_FALSE(BoxDownscale(Image(3, 3, 3), 2).ok());
  Image big = UpscaleNearest(rgb, 3);
  EXPECT_EQ(big.width, 6);
  EXPECT_EQ(big.at(5, 0, 0), 128);
  Result<Image> grid = MakeGrid({rgb, rgb, rgb}, 2, 1);
  ASSERT_TRUE(grid.ok());
  EXPECT_EQ(grid->width, 2 * 2 + 3);
  EXPECT_EQ(grid->height, 2 * 2 + 3);
  EXPECT_EQ(grid->at(1, 1, 0), 255);
  EXPECT_FALSE(MakeGrid({rgb, Image(3, 3, 3)}, 2, 1).ok());
}

}  // namespace
}  // namespace spritediff
