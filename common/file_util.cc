#include "common/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace spritediff {

namespace fs = std::filesystem;

namespace {

std::string Errno() { return std::strerror(errno); }

Status SyncPath(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return Status::IoError(path + ": cannot open to sync (" + Errno() + ")");
  const bool synced = ::fsync(fd) == 0;
  const std::string why = synced ? "" : Errno();
  ::close(fd);
  if (!synced) return Status::IoError(path + ": fsync failed (" + why + ")");
  return Status::Ok();
}

// rename(tmp, path) then fsync of path's directory; tmp is removed when the rename fails.
Status RenameDurably(const std::string& tmp, const std::string& path) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    return Status::IoError(path + ": rename failed (" + ec.message() + ")");
  }
  return SyncDirectory(fs::path(path).parent_path().string());
}

}  // namespace

Status SyncDirectory(const std::string& dir) { return SyncPath(dir.empty() ? "." : dir, O_RDONLY | O_DIRECTORY); }

Status CommitFileAtomic(const std::string& tmp, const std::string& path) {
  Status s = SyncPath(tmp, O_RDONLY);
  if (!s.ok()) {
    std::remove(tmp.c_str());
    return s;
  }
  return RenameDurably(tmp, path);
}

Status WriteFileAtomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return Status::IoError(tmp + ": cannot create (" + Errno() + ")");
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const bool flushed = written && std::fflush(f) == 0;
  const bool synced = flushed && ::fsync(::fileno(f)) == 0;
  const std::string why = synced ? "" : Errno();
  const bool closed = std::fclose(f) == 0;
  if (!synced || !closed) {
    std::remove(tmp.c_str());
    return Status::IoError(tmp + ": write failed (" + (synced ? Errno() : why) + ")");
  }
  return RenameDurably(tmp, path);
}

Result<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot open (" + std::strerror(errno) + ")");
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > max_bytes) {
    return Status::InvalidArgument(path + ": " + std::to_string(size) + " bytes, more than " + what +
                                   " may have here (" + std::to_string(max_bytes) + ")");
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

}  // namespace spritediff
