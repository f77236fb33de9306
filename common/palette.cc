#include "common/palette.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/client_text.h"

namespace spritediff {

namespace {

struct NamedPaletteDef {
  const char* name;
  std::vector<uint32_t> hex;
};

// From each palette's author as published on Lospec (pico-8: the console's fixed 16 colours).
const std::vector<NamedPaletteDef>& NamedPalettes() {
  static const std::vector<NamedPaletteDef> palettes = {
      {"pico-8",
       {0x000000, 0x1d2b53, 0x7e2553, 0x008751, 0xab5236, 0x5f574f, 0xc2c3c7, 0xfff1e8, 0xff004d, 0xffa300, 0xffec27,
        0x00e436, 0x29adff, 0x83769c, 0xff77a8, 0xffccaa}},
      {"db16",
       {0x140c1c, 0x442434, 0x30346d, 0x4e4a4e, 0x854c30, 0x346524, 0xd04648, 0x757161, 0x597dce, 0xd27d2c, 0x8595a1,
        0x6daa2c, 0xd2aa99, 0x6dc2ca, 0xdad45e, 0xdeeed6}},
      {"db32",
       {0x000000, 0x222034, 0x45283c, 0x663931, 0x8f563b, 0xdf7126, 0xd9a066, 0xeec39a, 0xfbf236, 0x99e550, 0x6abe30,
        0x37946e, 0x4b692f, 0x524b24, 0x323c39, 0x3f3f74, 0x306082, 0x5b6ee1, 0x639bff, 0x5fcde4, 0xcbdbfc, 0xffffff,
        0x9badb7, 0x847e87, 0x696a6a, 0x595652, 0x76428a, 0xac3232, 0xd95763, 0xd77bba, 0x8f974a, 0x8a6f30}},
      {"endesga-32",
       {0xbe4a2f, 0xd77643, 0xead4aa, 0xe4a672, 0xb86f50, 0x733e39, 0x3e2731, 0xa22633, 0xe43b44, 0xf77622, 0xfeae34,
        0xfee761, 0x63c74d, 0x3e8948, 0x265c42, 0x193c3e, 0x124e89, 0x0099db, 0x2ce8f5, 0xffffff, 0xc0cbdc, 0x8b9bb4,
        0x5a6988, 0x3a4466, 0x262b44, 0x181425, 0xff0044, 0x68386c, 0xb55088, 0xf6757a, 0xe8b796, 0xc28569}},
  };
  return palettes;
}

struct Lab {
  float l, a, b;
};

float SrgbToLinear(float c) { return c <= 0.04045f ? c / 12.92f : std::pow((c + 0.055f) / 1.055f, 2.4f); }

// sRGB (0..255 per channel, may leave that range while dithering) -> OKLab.
Lab ToOklab(float r8, float g8, float b8) {
  const float r = SrgbToLinear(std::clamp(r8, 0.0f, 255.0f) / 255.0f);
  const float g = SrgbToLinear(std::clamp(g8, 0.0f, 255.0f) / 255.0f);
  const float b = SrgbToLinear(std::clamp(b8, 0.0f, 255.0f) / 255.0f);
  const float l = std::cbrt(0.4122214708f * r + 0.5363325363f * g + 0.0514459929f * b);
  const float m = std::cbrt(0.2119034982f * r + 0.6806995451f * g + 0.1073969566f * b);
  const float s = std::cbrt(0.0883024619f * r + 0.2817188376f * g + 0.6299787005f * b);
  return {0.2104542553f * l + 0.7936177850f * m - 0.0040720468f * s,
          1.9779984951f * l - 2.4285922050f * m + 0.4505937099f * s,
          0.0259040371f * l + 0.7827717662f * m - 0.8086757660f * s};
}

int Nearest(const Lab& p, const std::vector<Lab>& labs) {
  int best = 0;
  float best_d = std::numeric_limits<float>::max();
  for (size_t i = 0; i < labs.size(); ++i) {
    const float dl = p.l - labs[i].l, da = p.a - labs[i].a, db = p.b - labs[i].b;
    const float d = dl * dl + da * da + db * db;
    if (d < best_d) best_d = d, best = static_cast<int>(i);
  }
  return best;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string PaletteNames() {
  std::string out;
  for (const auto& p : NamedPalettes()) out += (out.empty() ? "" : " | ") + std::string(p.name);
  return out;
}

Result<Palette> NamedPalette(const std::string& name) {
  for (const auto& def : NamedPalettes()) {
    if (name != def.name) continue;
    Palette p;
    p.name = def.name;
    for (uint32_t v : def.hex) p.colors.push_back({uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)});
    return p;
  }
  return Status::InvalidArgument("unknown palette '" + Echo(name) + "'; known: " + PaletteNames());
}

Result<Palette> ParsePaletteColors(const std::vector<std::string>& colors) {
  const int n = static_cast<int>(std::min<size_t>(colors.size(), INT32_MAX));
  if (n < kMinPaletteColors || n > kMaxPaletteColors) {
    return Status::InvalidArgument(": needs " + std::to_string(kMinPaletteColors) + ".." +
                                   std::to_string(kMaxPaletteColors) + " colours, got " +
                                   std::to_string(colors.size()));
  }
  Palette p;
  p.name = "custom";
  for (size_t i = 0; i < colors.size(); ++i) {
    const std::string& s = colors[i];
    const size_t start = !s.empty() && s[0] == '#' ? 1 : 0;
    bool ok = s.size() == start + 6;
    Rgb rgb{};
    for (int k = 0; ok && k < 3; ++k) {
      const int hi = HexDigit(s[start + 2 * k]), lo = HexDigit(s[start + 2 * k + 1]);
      ok = hi >= 0 && lo >= 0;
      rgb[k] = static_cast<uint8_t>(hi * 16 + lo);
    }
    if (!ok) {
      return Status::InvalidArgument("[" + std::to_string(i) + "] '" + Echo(s) + "' is not a colour #rrggbb");
    }
    p.colors.push_back(rgb);
  }
  return p;
}

Image QuantizeToPalette(const Image& image, const Palette& palette, bool dither) {
  Image out = image;
  if (palette.colors.empty()) return out;
  std::vector<Lab> labs;
  for (const Rgb& c : palette.colors) labs.push_back(ToOklab(c[0], c[1], c[2]));
  const int w = image.width, h = image.height, ch = image.channels;
  // Working colour per pixel in sRGB units (float, so diffused error can carry).
  std::vector<float> work(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k) work[(static_cast<size_t>(y) * w + x) * 3 + k] = image.at(x, y, k);
  auto visible = [&](int x, int y) { return ch < 4 || image.at(x, y, 3) > 0; };
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      if (!visible(x, y)) continue;
      float* px = &work[(static_cast<size_t>(y) * w + x) * 3];
      const Rgb& pick = palette.colors[Nearest(ToOklab(px[0], px[1], px[2]), labs)];
      for (int k = 0; k < 3; ++k) out.at(x, y, k) = pick[k];
      if (!dither) continue;
      const float err[3] = {px[0] - pick[0], px[1] - pick[1], px[2] - pick[2]};
      auto spread = [&](int dx, int dy, float weight) {
        const int nx = x + dx, ny = y + dy;
        if (nx < 0 || nx >= w || ny >= h || !visible(nx, ny)) return;
        float* q = &work[(static_cast<size_t>(ny) * w + nx) * 3];
        for (int k = 0; k < 3; ++k) q[k] += err[k] * weight;
      };
      spread(1, 0, 7.0f / 16), spread(-1, 1, 3.0f / 16), spread(0, 1, 5.0f / 16), spread(1, 1, 1.0f / 16);
    }
  }
  return out;
}

bool UsesOnlyPalette(const Image& image, const Palette& palette) {
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      if (image.channels == 4 && image.at(x, y, 3) == 0) continue;
      const Rgb px{image.at(x, y, 0), image.at(x, y, 1), image.at(x, y, 2)};
      if (std::find(palette.colors.begin(), palette.colors.end(), px) == palette.colors.end()) return false;
    }
  }
  return true;
}

}  // namespace spritediff
