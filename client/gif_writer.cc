#include "client/gif_writer.h"

#include <gif_lib.h>

#include <cstdio>
#include <filesystem>

namespace spritediff {

namespace {

Status GifError(const std::string& path, int code) {
  const char* text = GifErrorString(code);
  return Status::IoError(path + ": GIF write failed (" + (text ? text : "unknown error") + ")");
}

}  // namespace

Status WriteGif(const std::string& path, const std::vector<Image>& frames, int delay_cs, int last_delay_cs) {
  if (frames.empty()) return Status::InvalidArgument("GIF needs at least one frame");
  const int w = frames.front().width, h = frames.front().height;
  if (w > 65535 || h > 65535) return Status::InvalidArgument("GIF frames are limited to 65535 pixels per side");
  for (const Image& f : frames) {
    if (f.width != w || f.height != h || f.channels != 3) {
      return Status::InvalidArgument("GIF frames must be RGB and share one size");
    }
  }
  const std::string tmp = path + ".tmp";
  int error = 0;
  GifFileType* gif = EGifOpenFileName(tmp.c_str(), false, &error);
  if (gif == nullptr) return GifError(tmp, error);
  auto fail = [&](int code) {
    int ignored = 0;
    EGifCloseFile(gif, &ignored);
    std::remove(tmp.c_str());
    return GifError(tmp, code);
  };
  EGifSetGifVersion(gif, true);
  if (EGifPutScreenDesc(gif, w, h, 8, 0, nullptr) == GIF_ERROR) return fail(gif->Error);
  // NETSCAPE2.0 application extension: loop forever.
  unsigned char loop[3] = {1, 0, 0};
  if (EGifPutExtensionLeader(gif, APPLICATION_EXT_FUNC_CODE) == GIF_ERROR ||
      EGifPutExtensionBlock(gif, 11, "NETSCAPE2.0") == GIF_ERROR || EGifPutExtensionBlock(gif, 3, loop) == GIF_ERROR ||
      EGifPutExtensionTrailer(gif) == GIF_ERROR) {
    return fail(gif->Error);
  }
  const size_t n = static_cast<size_t>(w) * h;
  std::vector<GifByteType> r(n), g(n), b(n), indices(n);
  std::vector<GifColorType> palette(256);
  for (size_t k = 0; k < frames.size(); ++k) {
    const Image& f = frames[k];
    for (size_t p = 0; p < n; ++p) {
      r[p] = f.pixels[p * 3];
      g[p] = f.pixels[p * 3 + 1];
      b[p] = f.pixels[p * 3 + 2];
    }
    int colours = 256;
    if (GifQuantizeBuffer(w, h, &colours, r.data(), g.data(), b.data(), indices.data(), palette.data()) == GIF_ERROR) {
      return fail(E_GIF_ERR_NOT_ENOUGH_MEM);
    }
    ColorMapObject* map = GifMakeMapObject(256, palette.data());
    GraphicsControlBlock gcb{};
    gcb.DisposalMode = DISPOSE_DO_NOT;
    gcb.DelayTime = k + 1 == frames.size() ? last_delay_cs : delay_cs;
    gcb.TransparentColor = NO_TRANSPARENT_COLOR;
    GifByteType ext[4];
    const size_t ext_len = EGifGCBToExtension(&gcb, ext);
    bool ok = EGifPutExtension(gif, GRAPHICS_EXT_FUNC_CODE, static_cast<int>(ext_len), ext) != GIF_ERROR &&
              EGifPutImageDesc(gif, 0, 0, w, h, false, map) != GIF_ERROR;
    for (int y = 0; ok && y < h; ++y) ok = EGifPutLine(gif, indices.data() + static_cast<size_t>(y) * w, w) != GIF_ERROR;
    GifFreeMapObject(map);
    if (!ok) return fail(gif->Error);
  }
  if (EGifCloseFile(gif, &error) == GIF_ERROR) {
    std::remove(tmp.c_str());
    return GifError(tmp, error);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Status::IoError(path + ": rename failed (" + ec.message() + ")");
  return Status::Ok();
}

}  // namespace spritediff
