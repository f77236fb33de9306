// Keeps the served models in step with models_dir, so that a model a training Job (or an
// operator) writes to a shared volume reaches every replica without a restart. A model
// directory that is complete (its model.json names weights that exist) and has not changed for
// a settling time is loaded (hot-add); one whose files changed is loaded again and swapped in
// (the previous version finishes its requests: ModelRegistry::Add); one that is gone is
// retired after its requests finish. Half-written directories are never loaded: a missing
// weights file or a model.json that does not parse waits for the next change.
//
// Changes are seen through inotify on models_dir and each model directory, with a rescan every
// poll interval as the fallback for network volumes, where inotify sees nothing.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace spritediff {

class ModelRegistry;

// name -> fingerprint of every model directory under models_dir (ModelDirNames): "" when
// model.json is there but its weights are not, or model.json cannot be read. An error when
// models_dir cannot be listed.
Result<std::map<std::string, std::string>> ScanModelsDir(const std::string& models_dir);

struct ModelDirChanges {
  std::vector<std::string> load;    // new or changed, settled: load (or reload) from models_dir/name
  std::vector<std::string> retire;  // served but gone (for the settling time)
};

// The decisions, kept apart from threads and files so they can be tested step by step: what to
// load and what to retire, given what is served and what a scan found.
class ModelDirTracker {
 public:
  using Clock = std::chrono::steady_clock;
  explicit ModelDirTracker(Clock::duration settle) : settle_(settle) {}

  // served and scanned: name -> fingerprint. A name is loaded once its complete fingerprint
  // differs from the served one and has been the same for the settling time; retired once it
  // has been missing from the scan for the settling time.
  ModelDirChanges Update(const std::map<std::string, std::string>& served,
                         const std::map<std::string, std::string>& scanned, Clock::time_point now);
  // Loading this fingerprint failed: it is not tried again until the directory changes.
  void MarkFailed(const std::string& name, const std::string& fingerprint) { failed_[name] = fingerprint; }
  // Whether a change is waiting for its settling time (the watcher then looks again soon).
  bool Settling() const { return !seen_.empty() || !missing_.empty(); }

 private:
  struct Seen {
    std::string fingerprint;
    Clock::time_point since;
  };
  const Clock::duration settle_;
  std::map<std::string, Seen> seen_;                     // changed, waiting to settle
  std::map<std::string, Clock::time_point> missing_;     // served, missing since
  std::map<std::string, std::string> failed_;
};

class ModelWatcher {
 public:
  ModelWatcher(ModelRegistry& registry, std::string models_dir, std::chrono::milliseconds poll,
               std::chrono::milliseconds settle);
  ~ModelWatcher();  // Stop()
  ModelWatcher(const ModelWatcher&) = delete;
  ModelWatcher& operator=(const ModelWatcher&) = delete;

  void Start();
  void Stop();

 private:
  void Loop();
  void Rescan();
  void WatchDirectory(const std::string& path);

  ModelRegistry& registry_;
  const std::string models_dir_;
  const std::chrono::milliseconds poll_;
  ModelDirTracker tracker_;      // the watcher thread's
  bool listing_failed_ = false;  // the watcher thread's: the last listing failed (logged once)
  int inotify_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace spritediff
