// What happens to a sprite between the sampler's tensor and the PNG a user gets: the alpha of
// an RGBA model finished (binary or soft, core/sampler.h's TensorToImage) and, when asked, the
// colours locked to a palette (common/palette.h). The daemon's Result, the offline
// `spritediffd sample` and the trainer's grids all finish through here. Frames and x0
// previews take only the alpha finish: a palette is for the sprite that is kept.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "common/image.h"
#include "common/palette.h"
#include "common/status.h"
#include "core/sampler.h"

namespace spritediff {

struct SpriteFinish {
  AlphaMode alpha = AlphaMode::kBinary;
  std::optional<Palette> palette;
  bool dither = false;
};

// A palette chosen by name or by colours (at most one of them non-empty); nullopt for neither.
// Errors name the field ("palette", "palette_colors") with the value echoed bounded.
Result<std::optional<Palette>> ResolvePalette(const std::string& name, const std::vector<std::string>& colors);

// [C, H, W] in [-1, 1] -> the finished sprite.
Image FinishSprite(const torch::Tensor& chw, const SpriteFinish& finish);

}  // namespace spritediff
