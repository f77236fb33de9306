#include "core/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace spritediff {

namespace {

Status SyncPath(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return Status::IoError(path + ": cannot open to sync (" + std::strerror(errno) + ")");
  const bool ok = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) return Status::IoError(path + ": fsync failed (" + std::strerror(err) + ")");
  return Status::Ok();
}

}  // namespace

Status SyncFile(const std::string& path) { return SyncPath(path, O_RDONLY); }

Status SyncDir(const std::string& dir) { return SyncPath(dir.empty() ? "." : dir, O_RDONLY | O_DIRECTORY); }

Status RenameDurably(const std::string& tmp, const std::string& path) {
  Status synced = SyncFile(tmp);
  if (!synced.ok()) {
    std::remove(tmp.c_str());
    return synced;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    return Status::IoError(path + ": rename failed (" + ec.message() + ")");
  }
  return SyncDir(std::filesystem::path(path).parent_path().string());
}

}  // namespace spritediff
