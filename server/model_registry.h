// The models a daemon serves: every directory under models_dir holding a model.json, each
// with its own BatchScheduler. Models can be added while serving (hot-add after training).
#pragma once

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
};

class ModelRegistry {
 public:
  ModelRegistry(std::string models_dir, std::string default_model, torch::Device device, SchedulerLimits limits);
  ~ModelRegistry();

  // Loads every model under models_dir; a model that fails to load is logged and skipped.
  // Fails only when the configured default model cannot be served.
  Status LoadAll();
  // Loads (or replaces) one model from dir under the given name.
  Status Add(const std::string& name, const std::string& dir);

  // Empty name = the default model. nullptr when unknown.
  std::shared_ptr<ServedModel> Find(const std::string& name) const;
  std::vector<std::shared_ptr<ServedModel>> List() const;
  std::string default_model() const;
  void StopAll();

 private:
  const std::string models_dir_;
  const torch::Device device_;
  const SchedulerLimits limits_;
  mutable Mutex mu_;
  std::string default_model_ GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<ServedModel>> models_ GUARDED_BY(mu_);
};

}  // namespace spritediff
