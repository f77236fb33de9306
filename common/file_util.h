// Durable file writes (docs/training.md's "written atomically"): write a temporary file next to
// the target, fsync it, rename it over the target, fsync the directory. A crash leaves the old
// file or the new one, never half of one, and a finished write survives a power cut.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace spritediff {

// Writes bytes to path.tmp (checking write, flush, fsync and close), then CommitFileAtomic.
Status WriteFileAtomic(const std::string& path, const std::string& bytes);
// For a temporary file written by someone else (e.g. a torch archive): fsyncs tmp, renames it
// to path and fsyncs path's directory. tmp is removed when this fails.
Status CommitFileAtomic(const std::string& tmp, const std::string& path);
// fsync of a directory, so that a rename or a new entry in it is durable.
Status SyncDirectory(const std::string& dir);

// A whole regular file (symlinks followed), its size checked before anything is read and never
// more than max_bytes held: NotFound "<path>: cannot open (<reason>)", InvalidArgument "<path>:
// not a regular file" (a FIFO or a device could block or never end), or InvalidArgument "<path>:
// N bytes, more than <what> may have here (max_bytes)".
Result<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes, const std::string& what);
// The bound for the small text files the daemon reads: its config, the token file, a job's
// job.json, a model's model.json, a dataset's labels.txt.
inline constexpr uint64_t kMaxTextFileBytes = 1ull << 20;

}  // namespace spritediff
