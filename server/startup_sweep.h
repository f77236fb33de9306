// Start-up clean-up after a crash (kill -9 during a checkpoint or a publish): a half-written
// `*.tmp` must never sit inside a served model dir or a job dir, and a weights file that the
// model's model.json does not name (written just before the crash, never switched to) is an
// orphan. Runs before the registry loads and before the job runner resumes anything, so it
// never races a writer of this daemon.
#pragma once

#include <cstdint>
#include <string>

namespace spritediff {

struct SweepReport {
  int temporaries = 0;     // *.tmp files and .<name>.tmp-<job> publish dirs removed
  int orphan_weights = 0;  // weights-*.pt files no model.json names
  uint64_t bytes = 0;      // their total size
};

// Sweeps models_dir (each model dir, and publish temporaries) and state_dir (job dirs and
// their staged model). Missing dirs are fine; errors on single files are skipped.
SweepReport SweepStartup(const std::string& models_dir, const std::string& state_dir);

}  // namespace spritediff
