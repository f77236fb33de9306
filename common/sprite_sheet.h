// Sprite sheets: every sprite of a request at its native size in one RGBA PNG, in a grid with
// transparent gaps, and an atlas beside it in the TexturePacker / Aseprite "JSON hash" format
// that game engines read ("frames": {name: {"frame": {x, y, w, h}, ...}}, "meta": {...}).
// Each frame also carries "spritediff": the recipe (seed, labels, sampler settings, ...) that
// makes that one sprite again; engines ignore keys they do not know.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/image.h"
#include "common/status.h"

namespace spritediff {

struct SheetSprite {
  std::string name;       // the frame's key, e.g. "sprite-000.png"
  Image image;            // RGB or RGBA; all sprites of a sheet share one size
  nlohmann::json recipe;  // stored under the frame's "spritediff" key
};

struct SpriteSheet {
  Image image;            // RGBA
  nlohmann::json atlas;   // the JSON hash
};

// columns: sprites per row (0 = about square); gap: transparent pixels between and around sprites.
Result<SpriteSheet> MakeSpriteSheet(const std::vector<SheetSprite>& sprites, const std::string& image_name,
                                    int columns = 0, int gap = 1);

// Writes <dir>/<base>.png and <dir>/<base>.json, each atomically; the PNG first, so an atlas on
// disk always names a complete sheet.
Status WriteSpriteSheet(const SpriteSheet& sheet, const std::string& dir, const std::string& base);

}  // namespace spritediff
