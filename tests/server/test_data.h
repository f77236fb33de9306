// A few real sprites for the in-process tests: `per_class` PNGs of each class copied from
// the shared data set (never hand-drawn ones).
#pragma once

#include <filesystem>
#include <initializer_list>

namespace spritediff::testing {

inline void CopyRealSprites(const std::filesystem::path& dataset, std::initializer_list<const char*> classes,
                            int per_class) {
  namespace fs = std::filesystem;
  const fs::path real(SPRITEDIFF_DATA_DIR);
  for (const char* cls : classes) {
    fs::create_directories(dataset / cls);
    int n = 0;
    for (const auto& f : fs::directory_iterator(real / cls)) {
      if (f.path().extension() != ".png" || n == per_class) continue;
      fs::copy_file(f.path(), dataset / cls / f.path().filename());
      ++n;
    }
  }
}

}  // namespace spritediff::testing
