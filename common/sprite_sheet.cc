#include "common/sprite_sheet.h"

#include <cmath>
#include <filesystem>

#include "common/file_util.h"

namespace spritediff {

namespace {
Image ToRgba(const Image& image) {
  if (image.channels == 4) return image;
  Image out(image.width, image.height, 4);
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      for (int c = 0; c < 3; ++c) out.at(x, y, c) = image.at(x, y, image.channels == 1 ? 0 : c);
      out.at(x, y, 3) = 255;
    }
  }
  return out;
}
}  // namespace

Result<SpriteSheet> MakeSpriteSheet(const std::vector<SheetSprite>& sprites, const std::string& image_name,
                                    int columns, int gap) {
  if (sprites.empty()) return Status::InvalidArgument("a sprite sheet needs at least one sprite");
  if (gap < 0 || gap > 64) return Status::InvalidArgument("sheet gap must be in [0, 64]");
  const int w = sprites.front().image.width, h = sprites.front().image.height;
  for (const SheetSprite& s : sprites) {
    if (s.image.width != w || s.image.height != h) {
      return Status::InvalidArgument("the sprites of a sheet must share one size");
    }
  }
  const int n = static_cast<int>(sprites.size());
  const int cols = columns > 0 ? std::min(columns, n) : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
  const int rows = (n + cols - 1) / cols;
  SpriteSheet sheet;
  sheet.image = Image(cols * w + (cols + 1) * gap, rows * h + (rows + 1) * gap, 4);  // zero: transparent
  nlohmann::json frames = nlohmann::json::object();
  for (int i = 0; i < n; ++i) {
    const int ox = gap + (i % cols) * (w + gap), oy = gap + (i / cols) * (h + gap);
    const Image rgba = ToRgba(sprites[i].image);
    for (int y = 0; y < h; ++y) {
      std::copy_n(rgba.pixels.begin() + static_cast<size_t>(y) * w * 4, static_cast<size_t>(w) * 4,
                  sheet.image.pixels.begin() + (static_cast<size_t>(oy + y) * sheet.image.width + ox) * 4);
    }
    nlohmann::json frame = {{"frame", {{"x", ox}, {"y", oy}, {"w", w}, {"h", h}}},
                            {"rotated", false},
                            {"trimmed", false},
                            {"spriteSourceSize", {{"x", 0}, {"y", 0}, {"w", w}, {"h", h}}},
                            {"sourceSize", {{"w", w}, {"h", h}}}};
    if (!sprites[i].recipe.is_null()) frame["spritediff"] = sprites[i].recipe;
    if (frames.contains(sprites[i].name)) {
      return Status::InvalidArgument("two sprites of a sheet are both named '" + sprites[i].name + "'");
    }
    frames[sprites[i].name] = std::move(frame);
  }
  sheet.atlas = {{"frames", std::move(frames)},
                 {"meta",
                  {{"app", "spritediff"},
                   {"version", "1"},
                   {"image", image_name},
                   {"format", "RGBA8888"},
                   {"size", {{"w", sheet.image.width}, {"h", sheet.image.height}}},
                   {"scale", "1"}}}};
  return sheet;
}

Status WriteSpriteSheet(const SpriteSheet& sheet, const std::string& dir, const std::string& base) {
  const std::filesystem::path d(dir);
  Status s = WritePng((d / (base + ".png")).string(), sheet.image);
  if (!s.ok()) return s;
  return WriteFileAtomic((d / (base + ".json")).string(), sheet.atlas.dump(2) + "\n");
}

}  // namespace spritediff
