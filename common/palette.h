// Palette lock: named pixel-art palettes, custom ones from "#rrggbb" strings, and quantisation
// of a sprite to a palette in a perceptual colour space (OKLab, Ottosson 2020), where equal
// distances look about equally different, so the nearest palette colour is the one a person
// would pick. No dithering unless asked (pixel art rarely wants it); asked, it is
// Floyd-Steinberg error diffusion in OKLab. Alpha is left as it is: transparent pixels keep
// their (zero) colour.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/image.h"
#include "common/status.h"

namespace spritediff {

using Rgb = std::array<uint8_t, 3>;

struct Palette {
  std::string name;  // "pico-8", ... or "custom"
  std::vector<Rgb> colors;
};

inline constexpr int kMinPaletteColors = 2;
inline constexpr int kMaxPaletteColors = 256;

// "pico-8 | db16 | db32 | endesga-32": the named palettes, for help text and messages.
std::string PaletteNames();
// A named palette; NotFound-style InvalidArgument naming the known ones otherwise.
Result<Palette> NamedPalette(const std::string& name);
// kMinPaletteColors..kMaxPaletteColors strings "#rrggbb" (the '#' optional, hex digits either
// case). Messages start with the offending entry's index ("[3] '#12345' is not ...") or ": "
// for the count, so a caller prefixes its field name; values are echoed bounded.
Result<Palette> ParsePaletteColors(const std::vector<std::string>& colors);

// Every opaque or partly transparent pixel of image (RGB or RGBA) replaced by its nearest
// palette colour in OKLab; with dither, Floyd-Steinberg error diffusion over the pixels with
// alpha > 0. Fully transparent pixels stay (0, 0, 0, 0).
Image QuantizeToPalette(const Image& image, const Palette& palette, bool dither = false);

// Whether every pixel with alpha > 0 (every pixel of an RGB image) is a palette colour.
bool UsesOnlyPalette(const Image& image, const Palette& palette);

}  // namespace spritediff
