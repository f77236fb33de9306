#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
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
  // Opened without blocking and checked on the descriptor, so a path swapped for a FIFO after a
  // check cannot make the open or the read wait forever; a FIFO or a device (/dev/zero,
  // /dev/stdin) has no size to check and may never end.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Status::NotFound(path + ": cannot open (" + Errno() + ")");
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::IoError(path + ": cannot stat (" + Errno() + ")");
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(path + ": not a regular file (" + what + " must be one)");
  auto too_big = [&](uint64_t n, const std::string& at_least) {
    return Status::InvalidArgument(path + ": " + at_least + std::to_string(n) + " bytes, more than " + what +
                                   " may have here (" + std::to_string(max_bytes) + ")");
  };
  if (static_cast<uint64_t>(st.st_size) > max_bytes) return too_big(static_cast<uint64_t>(st.st_size), "");
  // The file may grow between the size check and the read: never hold more than the bound.
  std::string bytes;
  bytes.reserve(static_cast<size_t>(st.st_size));
  char chunk[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError(path + ": read failed (" + Errno() + ")");
    if (n == 0) break;
    bytes.append(chunk, static_cast<size_t>(n));
    if (bytes.size() > max_bytes) return too_big(bytes.size(), "at least ");
  }
  return bytes;
}

}  // namespace spritediff
