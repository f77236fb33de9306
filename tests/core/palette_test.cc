#include "common/palette.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/image.h"
#include "core/dataset.h"
#include "core/sampler.h"
#include "core/sprite_finish.h"

namespace spritediff {
namespace {

// Real sprites (premultiplied RGBA, finished as a model's output is) from the dataset.
std::vector<Image> RealSprites(int count) {
  Result<Dataset> ds = LoadDataset(SPRITEDIFF_DATA_DIR, 32, 4);
  EXPECT_TRUE(ds.ok()) << ds.status().message();
  std::vector<Image> out;
  if (!ds.ok()) return out;
  const int64_t stride = ds->size() / count;
  for (int i = 0; i < count; ++i) out.push_back(TensorToImage(ds->images[i * stride]));
  return out;
}

TEST(Palette, EveryNamedPaletteLocksEveryPixelOfRealSprites) {
  const std::vector<Image> sprites = RealSprites(12);
  ASSERT_EQ(sprites.size(), 12u);
  const std::map<std::string, size_t> sizes = {{"pico-8", 16}, {"db16", 16}, {"db32", 32}, {"endesga-32", 32}};
  for (const auto& [name, size] : sizes) {
    Result<Palette> palette = NamedPalette(name);
    ASSERT_TRUE(palette.ok()) << name;
    EXPECT_EQ(palette->colors.size(), size) << name;
    EXPECT_EQ(std::set<Rgb>(palette->colors.begin(), palette->colors.end()).size(), size) << name << ": duplicates";
    for (bool dither : {false, true}) {
      for (const Image& sprite : sprites) {
        EXPECT_FALSE(UsesOnlyPalette(sprite, *palette)) << "a real sprite is already in " << name;
        const Image locked = QuantizeToPalette(sprite, *palette, dither);
        EXPECT_TRUE(UsesOnlyPalette(locked, *palette)) << name << (dither ? " dithered" : "");
        for (size_t p = 3; p < sprite.pixels.size(); p += 4) ASSERT_EQ(locked.pixels[p], sprite.pixels[p]) << "alpha moved";
      }
    }
  }
}

TEST(Palette, NearestColourIsPerceptualAndAPaletteColourMapsToItself) {
  Result<Palette> pico = NamedPalette("pico-8");
  ASSERT_TRUE(pico.ok());
  Image image(static_cast<int>(pico->colors.size()), 1, 3);
  for (size_t i = 0; i < pico->colors.size(); ++i) {
    for (int k = 0; k < 3; ++k) image.at(static_cast<int>(i), 0, k) = pico->colors[i][k];
  }
  EXPECT_EQ(QuantizeToPalette(image, *pico).pixels, image.pixels);
  // (40, 40, 40) is nearer black in sRGB (69 against 81) but nearer the grey 5f574f in OKLab
  // (L 0.28 against black's 0 and the grey's 0.46), as it looks: the lock must pick the grey.
  Result<Palette> two = ParsePaletteColors({"#000000", "#5f574f"});
  ASSERT_TRUE(two.ok());
  Image grey(1, 1, 3);
  grey.pixels = {40, 40, 40};
  EXPECT_EQ(QuantizeToPalette(grey, *two).pixels, (std::vector<uint8_t>{0x5f, 0x57, 0x4f}));
  grey.pixels = {20, 20, 20};  // L 0.19: nearer black in both
  EXPECT_EQ(QuantizeToPalette(grey, *two).pixels, (std::vector<uint8_t>{0, 0, 0}));
}

TEST(Palette, TransparentPixelsStayTransparent) {
  Result<Palette> pico = NamedPalette("pico-8");
  Image rgba(2, 1, 4);
  rgba.pixels = {0, 0, 0, 0, 200, 10, 10, 255};
  const Image locked = QuantizeToPalette(rgba, *pico, true);
  EXPECT_EQ(std::vector<uint8_t>(locked.pixels.begin(), locked.pixels.begin() + 4), (std::vector<uint8_t>{0, 0, 0, 0}));
  EXPECT_EQ(locked.pixels[7], 255);
}

TEST(Palette, BadPalettesNameTheFieldAndEchoBounded) {
  auto message = [](const std::string& name, const std::vector<std::string>& colors) {
    Result<std::optional<Palette>> p = ResolvePalette(name, colors);
    EXPECT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), Status::Code::kInvalidArgument);
    return p.ok() ? std::string() : p.status().message();
  };
  EXPECT_NE(message("no-such", {}).find("palette: unknown palette 'no-such'"), std::string::npos);
  EXPECT_NE(message("", {"#000000"}).find("palette_colors: needs 2..256 colours, got 1"), std::string::npos);
  EXPECT_NE(message("", std::vector<std::string>(257, "#000000")).find("got 257"), std::string::npos);
  EXPECT_NE(message("", {"#000000", "#12345"}).find("palette_colors[1] '#12345' is not a colour #rrggbb"),
            std::string::npos);
  EXPECT_NE(message("", {"#000000", "#gg0000"}).find("palette_colors[1]"), std::string::npos);
  EXPECT_NE(message("pico-8", {"#000000", "#ffffff"}).find("not both"), std::string::npos);
  const std::string huge(1 << 20, 'a');
  EXPECT_LT(message("", {"#000000", huge}).size(), 400u);
  EXPECT_LT(message(huge, {}).size(), 400u);
  // Both spellings of a colour parse; neither field = no palette.
  Result<std::optional<Palette>> ok = ResolvePalette("", {"#A0b0C0", "102030"});
  ASSERT_TRUE(ok.ok());
  ASSERT_TRUE(ok->has_value());
  EXPECT_EQ((*ok)->colors[0], (Rgb{0xa0, 0xb0, 0xc0}));
  EXPECT_EQ((*ok)->colors[1], (Rgb{0x10, 0x20, 0x30}));
  Result<std::optional<Palette>> none = ResolvePalette("", {});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

}  // namespace
}  // namespace spritediff
