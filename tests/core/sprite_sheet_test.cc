#include "common/sprite_sheet.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "core/dataset.h"
#include "core/sampler.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

// The sheet read back from disk: every frame the atlas names, cropped from the PNG, equals the
// sprite it came from, pixel for pixel; the gaps are transparent.
TEST(SpriteSheet, AtlasAndPngAgreeForRealSprites) {
  Result<Dataset> ds = LoadDataset(SPRITEDIFF_DATA_DIR, 32, 4);
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  std::vector<SheetSprite> sprites;
  for (int i = 0; i < 11; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "sprite-%03d.png", i);
    sprites.push_back({name, TensorToImage(ds->images[i * 97]), {{"seed", 100 + i}}});
  }
  Result<SpriteSheet> sheet = MakeSpriteSheet(sprites, "sheet.png", 4, 1);
  ASSERT_TRUE(sheet.ok()) << sheet.status().message();
  const fs::path dir = fs::temp_directory_path() / ("sheet-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  ASSERT_TRUE(WriteSpriteSheet(*sheet, dir.string(), "sheet").ok());

  Result<Image> png = ReadPng((dir / "sheet.png").string());
  ASSERT_TRUE(png.ok());
  std::ifstream in(dir / "sheet.json");
  const nlohmann::json atlas = nlohmann::json::parse(in);
  EXPECT_EQ(atlas["meta"]["image"], "sheet.png");
  EXPECT_EQ(atlas["meta"]["size"]["w"], png->width);
  EXPECT_EQ(atlas["meta"]["size"]["h"], png->height);
  EXPECT_EQ(png->width, 4 * 32 + 5);
  EXPECT_EQ(png->height, 3 * 32 + 4);
  ASSERT_EQ(atlas["frames"].size(), sprites.size());
  std::vector<bool> covered(static_cast<size_t>(png->width) * png->height, false);
  for (const SheetSprite& s : sprites) {
    const nlohmann::json& f = atlas["frames"][s.name];
    EXPECT_EQ(f["spritediff"], s.recipe);
    const int x = f["frame"]["x"], y = f["frame"]["y"], w = f["frame"]["w"], h = f["frame"]["h"];
    ASSERT_EQ(w, 32);
    ASSERT_EQ(h, 32);
    for (int dy = 0; dy < h; ++dy) {
      for (int dx = 0; dx < w; ++dx) {
        covered[static_cast<size_t>(y + dy) * png->width + x + dx] = true;
        for (int c = 0; c < 4; ++c) ASSERT_EQ(png->at(x + dx, y + dy, c), s.image.at(dx, dy, c)) << s.name;
      }
    }
  }
  for (int y = 0; y < png->height; ++y) {
    for (int x = 0; x < png->width; ++x) {
      if (!covered[static_cast<size_t>(y) * png->width + x]) ASSERT_EQ(png->at(x, y, 3), 0) << "gap not transparent";
    }
  }
  fs::remove_all(dir);
}

TEST(SpriteSheet, RefusesMixedSizesAndDuplicateNames) {
  Image a(32, 32, 4), b(16, 16, 4);
  EXPECT_FALSE(MakeSpriteSheet({{"a", a, nullptr}, {"b", b, nullptr}}, "s.png").ok());
  EXPECT_FALSE(MakeSpriteSheet({{"a", a, nullptr}, {"a", a, nullptr}}, "s.png").ok());
  EXPECT_FALSE(MakeSpriteSheet({}, "s.png").ok());
}

}  // namespace
}  // namespace spritediff
