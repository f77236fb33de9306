// Durable writes (common/file_util): the new content replaces the old in one rename, no
// temporary file is left behind, and failures are errors that name the path.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/file_util.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(FileUtil, WriteFileAtomicReplacesTheFileAndLeavesNoTemporary) {
  const fs::path dir = fs::temp_directory_path() / ("spritediff-files-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path file = dir / "job.json";
  ASSERT_TRUE(WriteFileAtomic(file.string(), "first").ok());
  EXPECT_EQ(Slurp(file), "first");
  const std::string second(100000, 'x');
  ASSERT_TRUE(WriteFileAtomic(file.string(), second).ok());
  EXPECT_EQ(Slurp(file), second);
  EXPECT_FALSE(fs::exists(dir / "job.json.tmp"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);

  // A file written by someone else (a torch archive) is committed the same way.
  std::ofstream(dir / "state.pt.tmp") << "archive";
  ASSERT_TRUE(CommitFileAtomic((dir / "state.pt.tmp").string(), (dir / "state.pt").string()).ok());
  EXPECT_EQ(Slurp(dir / "state.pt"), "archive");
  EXPECT_FALSE(fs::exists(dir / "state.pt.tmp"));
  fs::remove_all(dir);
}

TEST(FileUtil, FailuresNameThePath) {
  const std::string missing_dir = (fs::temp_directory_path() / "spritediff-no-such-dir" / "x.json").string();
  Status s = WriteFileAtomic(missing_dir, "data");
  EXPECT_EQ(s.code(), Status::Code::kIoError);
  EXPECT_NE(s.message().find("x.json.tmp"), std::string::npos) << s.message();
  Status c = CommitFileAtomic(missing_dir + ".tmp", missing_dir);
  EXPECT_EQ(c.code(), Status::Code::kIoError);
  EXPECT_NE(c.message().find("x.json.tmp"), std::string::npos) << c.message();
  EXPECT_EQ(SyncDirectory("/no/such/dir").code(), Status::Code::kIoError);
}

}  // namespace
}  // namespace spritediff
