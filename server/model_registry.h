// The models a daemon serves: every directory under models_dir holding a model.json, each
// with its own BatchScheduler. Models can be added, replaced and retired while serving (hot-add
// after training; server/model_watcher.h follows models_dir). A replaced or retired model is
// not dropped at once: it stops taking requests, finishes the ones it has, and is then stopped
// (ReapRetired), so that a swap fails no request in flight.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/mutex.h"
#include "common/thread_annotations.h"
#include "server/batch_scheduler.h"

namespace spritediff {

struct ServedModel {
  std::string name;
  std::string dir;
  ModelInfo info;
  int64_t parameters = 0;
  std::unique_ptr<BatchScheduler> scheduler;
  std::string fingerprint;  // of dir when it was loaded (ModelDirFingerprint)
};

// The names of the model directories under models_dir, sorted: directories holding a model.json,
// dot-directories skipped (half-published models: JobRunner's publish, an operator's staged
// copy). An error when models_dir cannot be listed.
Result<std::vector<std::string>> ModelDirNames(const std::string& models_dir);

// Identifies the files of a model directory as they are now: model.json's and its weights'
// inode, size and modification time. Empty when the directory is not complete (no model.json,
// one that cannot be read, or weights that are not there).
std::string ModelDirFingerprint(const std::string& dir);

// How long a replaced or retired model may take to finish its requests before it is stopped
// (they then end with UNAVAILABLE saying why).
inline constexpr std::chrono::minutes kRetiredModelDrainLimit{10};

class ModelRegistry {
 public:
  ModelRegistry(std::string models_dir, std::string default_model, torch::Device device, SchedulerLimits limits);
  ~ModelRegistry();

  // Loads every model under models_dir; a model that fails to load is logged and skipped.
  // Fails only when the configured default model cannot be served.
  Status LoadAll();
  // Loads (or replaces) one model from dir under the given name. A replaced version finishes
  // its queued and running requests; new requests go to the new one.
  Status Add(const std::string& name, const std::string& dir);
  // Retires a model: new requests no longer find it, its queued and running ones finish.
  // NOT_FOUND when it is not served.
  Status Remove(const std::string& name);
  // Stops the retired models that have finished their requests (or passed
  // kRetiredModelDrainLimit). Called now and then (ModelWatcher's thread).
  void ReapRetired();
  // name -> fingerprint of every served model.
  std::map<std::string, std::string> Fingerprints() const;

  // Empty name = the default model. nullptr when unknown.
  std::shared_ptr<ServedModel> Find(const std::string& name) const;
  std::vector<std::shared_ptr<ServedModel>> List() const;
  std::string default_model() const;
  void StopAll();

 private:
  struct Retired {
    std::shared_ptr<ServedModel> model;
    std::chrono::steady_clock::time_point since;
    std::string why;  // the end of its requests that outlive kRetiredModelDrainLimit
  };
  void RetireLocked(std::shared_ptr<ServedModel> model, std::string why) REQUIRES(mu_);

  const std::string models_dir_;
  const torch::Device device_;
  const SchedulerLimits limits_;
  mutable Mutex mu_;
  std::string default_model_ GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<ServedModel>> models_ GUARDED_BY(mu_);
  std::vector<Retired> retired_ GUARDED_BY(mu_);
};

}  // namespace spritediff
