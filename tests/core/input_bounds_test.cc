// Hostile inputs that reach core through a dataset folder: labels.txt lines that leave the
// dataset, and PNG/.npy headers that declare far more data than the file holds. Each was a
// hole (issue 13: 1 and 9); each test failed before its fix.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <zlib.h>

#include <filesystem>
#include <algorithm>
#include <fstream>

#include "common/client_text.h"
#include "core/dataset.h"
#include "common/image.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A real sprite whose IHDR claims width x height (CRC recomputed, so libpng believes it).
std::string SpriteClaiming(uint32_t width, uint32_t height) {
  std::string png = ReadAll(fs::path(SPRITEDIFF_DATA_DIR) / "hero" / fs::directory_iterator(fs::path(SPRITEDIFF_DATA_DIR) / "hero")->path().filename());
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) png[at + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
  };
  put32(16, width);
  put32(20, height);
  const uint32_t crc = crc32(0, reinterpret_cast<const Bytef*>(png.data() + 12), 17);  // type + 13 data bytes
  put32(29, crc);
  return png;
}

long MaxRssKb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

class TempDir {
 public:
  explicit TempDir(const std::string& tag)
      : path_(fs::temp_directory_path() / ("spritediff_" + tag + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A class folder holding a few real sprites.
void CopySprites(const fs::path& from, const fs::path& to, int n) {
  fs::create_directories(to);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(from)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (int i = 0; i < n && i < static_cast<int>(files.size()); ++i) fs::copy_file(files[i], to / files[i].filename());
}

TEST(InputBounds, LabelsTxtLinesMustNameDirectSubfolders) {
  TempDir tmp("labels_escape");
  const fs::path data(SPRITEDIFF_DATA_DIR);
  CopySprites(data / "hero", tmp.path() / "outside", 3);  // a folder beside the dataset
  const fs::path ds = tmp.path() / "ds";
  CopySprites(data / "food", ds / "food", 3);
  // The legitimate layout loads.
  std::ofstream(ds / "labels.txt") << "food\n";
  ASSERT_TRUE(LoadDataset(ds.string(), 16).ok());
  for (const std::string& line : {std::string("../outside"), (tmp.path() / "outside").string(), std::string("food/."),
                                  std::string(".."), std::string("food/../../outside")}) {
    std::ofstream(ds / "labels.txt") << "food\n" << line << "\n";
    Result<Dataset> loaded = LoadDataset(ds.string(), 16);
    ASSERT_FALSE(loaded.ok()) << "labels.txt line '" << line << "' was accepted";
    EXPECT_NE(loaded.status().message().find("not a plain folder name"), std::string::npos) << loaded.status().message();
    EXPECT_FALSE(ImageFolderLabels(ds.string()).ok()) << line;
  }
  // An overlong label is refused and echoed truncated, not in full.
  std::ofstream(ds / "labels.txt") << "food\n" << std::string(100000, 'x') << "\n";
  Result<Dataset> long_label = LoadDataset(ds.string(), 16);
  ASSERT_FALSE(long_label.ok());
  EXPECT_LT(long_label.status().message().size(), 1000u);
}

TEST(InputBounds, PngHeaderBombIsRefusedBeforeAllocating) {
  // The patched file is otherwise the real sprite: with its true size it decodes.
  Result<Image> genuine = DecodePng(SpriteClaiming(32, 32));
  ASSERT_TRUE(genuine.ok()) << genuine.status().message();
  const long before = MaxRssKb();
  Result<Image> bomb = DecodePng(SpriteClaiming(16384, 16384));  // 1 GiB of RGBA if believed
  ASSERT_FALSE(bomb.ok());
  EXPECT_NE(bomb.status().message().find("out of range"), std::string::npos) << bomb.status().message();
  EXPECT_LT(MaxRssKb() - before, 256 * 1024) << "the declared size was allocated";

  // A dataset image is a sprite: 2048x2048 (16 MiB of RGBA) is refused from the header too.
  TempDir tmp("png_bomb");
  fs::create_directories(tmp.path() / "hero");
  std::ofstream(tmp.path() / "hero" / "bomb.png", std::ios::binary) << SpriteClaiming(2048, 2048);
  Result<Dataset> ds = LoadDataset(tmp.path().string(), 16);
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("out of range"), std::string::npos) << ds.status().message();
}

TEST(InputBounds, NpyDeclaringMoreThanTheFileHoldsIsRefusedBeforeAllocating) {
  TempDir tmp("npy_bomb");
  const fs::path file = tmp.path() / "bomb.npy";
  {
    std::string header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2048, 1024, 1024), }";  // 2 GiB
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::ofstream out(file, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    out.put(static_cast<char>(header.size() & 0xff));
    out.put(static_cast<char>(header.size() >> 8));
    out << header << "tail";
  }
  ASSERT_LT(fs::file_size(file), 200u);
  const long before = MaxRssKb();
  Result<NpyArray> arr = ReadNpy(file.string());
  ASSERT_FALSE(arr.ok());
  EXPECT_NE(arr.status().message().find("declares 2147483648 data bytes"), std::string::npos) << arr.status().message();
  EXPECT_LT(MaxRssKb() - before, 256 * 1024) << "the declared size was allocated";
}

TEST(ClientText, EchoTruncatesAndEscapes) {
  EXPECT_EQ(Echo("hero"), "hero");
  EXPECT_EQ(Echo("a\nb'c"), "a\\x0ab\\x27c");
  const std::string big(3 << 20, 'y');
  const std::string echoed = Echo(big);
  EXPECT_EQ(echoed, std::string(kMaxEchoBytes, 'y') + "...(" + std::to_string(big.size()) + " bytes)");
  // Worst case: every kept byte escaped.
  EXPECT_LE(Echo(std::string(1000, '\x01')).size(), 4 * kMaxEchoBytes + 24);
}

TEST(ClientText, PlainNames) {
  for (const char* ok : {"hero", "non_hero", "a.b", "...x"}) EXPECT_TRUE(IsPlainName(ok)) << ok;
  for (const std::string bad : {std::string(""), std::string("."), std::string(".."), std::string("a/b"),
                                std::string("/abs"), std::string("a\\b"), std::string("a\0b", 3), std::string("a\tb"),
                                std::string(kMaxLabelBytes + 1, 'x')}) {
    EXPECT_FALSE(IsPlainName(bad)) << bad;
  }
}

}  // namespace
}  // namespace spritediff
