// fsync helpers for the write-tmp, sync, rename, sync-directory sequence (LevelDB's
// WriteStringToFileSync + SetCurrentFile). Torch-free (part of spritediff_image).
#pragma once

#include <string>

#include "core/status.h"

namespace spritediff {

// Flushes a written file's data to disk.
Status SyncFile(const std::string& path);
// Makes the entries of a directory (a rename into it, a removal) durable.
Status SyncDir(const std::string& dir);
// SyncFile(tmp), rename tmp over path, SyncDir(parent of path); tmp is removed on failure.
Status RenameDurably(const std::string& tmp, const std::string& path);

}  // namespace spritediff
