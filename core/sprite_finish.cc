#include "core/sprite_finish.h"

namespace spritediff {

Result<std::optional<Palette>> ResolvePalette(const std::string& name, const std::vector<std::string>& colors) {
  if (!name.empty() && !colors.empty()) {
    return Status::InvalidArgument("palette and palette_colors: give one of them, not both");
  }
  if (!name.empty()) {
    Result<Palette> named = NamedPalette(name);
    if (!named.ok()) return Status::InvalidArgument("palette: " + named.status().message());
    return std::optional<Palette>(*named);
  }
  if (!colors.empty()) {
    Result<Palette> custom = ParsePaletteColors(colors);
    if (!custom.ok()) return Status::InvalidArgument("palette_colors" + custom.status().message());
    return std::optional<Palette>(*custom);
  }
  return std::optional<Palette>();
}

Image FinishSprite(const torch::Tensor& chw, const SpriteFinish& finish) {
  Image sprite = TensorToImage(chw, finish.alpha);
  if (finish.palette) sprite = QuantizeToPalette(sprite, *finish.palette, finish.dither);
  return sprite;
}

}  // namespace spritediff
