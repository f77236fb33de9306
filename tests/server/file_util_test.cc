// Durable writes (common/file_util): the new content replaces the old in one rename, no
// temporary file is left behind, and failures are errors that name the path.
#include <gtest/gtest.h>
#include <sys/stat.h>
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

// What the daemon reads (config, token file, job.json, model.json) goes through ReadFileBounded:
// a file past the bound, a device that never ends and a FIFO that may never be written are all
// refused by name, before anything is read.
TEST(FileUtil, ReadFileBoundedRefusesBigFilesDevicesAndFifos) {
  const fs::path dir = fs::temp_directory_path() / ("spritediff-bounded-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "small.txt") << "reader 0123";
  Result<std::string> small = ReadFileBounded((dir / "small.txt").string(), 11, "a token file");
  ASSERT_TRUE(small.ok()) << small.status().message();
  EXPECT_EQ(*small, "reader 0123");

  Result<std::string> big = ReadFileBounded((dir / "small.txt").string(), 10, "a token file");
  EXPECT_EQ(big.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(big.status().message().find("11 bytes, more than a token file may have here (10)"), std::string::npos)
      << big.status().message();

  for (const std::string device : {"/dev/zero", "/dev/urandom"}) {
    Result<std::string> endless = ReadFileBounded(device, kMaxTextFileBytes, "a config file");
    EXPECT_EQ(endless.status().code(), Status::Code::kInvalidArgument) << device;
    EXPECT_NE(endless.status().message().find("not a regular file"), std::string::npos) << endless.status().message();
  }
  const fs::path fifo = dir / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  Result<std::string> pipe = ReadFileBounded(fifo.string(), kMaxTextFileBytes, "a config file");  // would block
  EXPECT_EQ(pipe.status().code(), Status::Code::kInvalidArgument);

  fs::create_symlink(dir / "small.txt", dir / "link.txt");  // mounted secrets are symlinks
  EXPECT_TRUE(ReadFileBounded((dir / "link.txt").string(), 100, "a token file").ok());
  EXPECT_EQ(ReadFileBounded((dir / "missing").string(), 100, "a token file").status().code(), Status::Code::kNotFound);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace spritediff
