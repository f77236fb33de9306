#include "server/model_registry.h"

#include <spdlog/spdlog.h>

#include <filesystem>

namespace spritediff {

namespace fs = std::filesystem;

ModelRegistry::ModelRegistry(std::string models_dir, std::string default_model, torch::Device device,
                             SchedulerLimits limits)
    : models_dir_(std::move(models_dir)), device_(device), limits_(limits), default_model_(std::move(default_model)) {}

ModelRegistry::~ModelRegistry() { StopAll(); }

Status ModelRegistry::LoadAll() {
  std::error_code ec;
  if (!fs::is_directory(models_dir_, ec)) return Status::NotFound("models_dir " + models_dir_ + " is not a directory");
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(models_dir_, ec)) {
    std::error_code entry_ec;
    // Dot-directories are half-published models (see JobRunner::Publish), never served.
    if (entry.path().filename().string().rfind('.', 0) == 0) continue;
    if (entry.is_directory(entry_ec) && fs::exists(entry.path() / "model.json", entry_ec)) dirs.push_back(entry.path());
  }
  if (ec) return Status::IoError("models_dir " + models_dir_ + ": " + ec.message());
  std::sort(dirs.begin(), dirs.end());
  for (const fs::path& dir : dirs) {
    Status s = Add(dir.filename().string(), dir.string());
    if (!s.ok()) spdlog::warn("skipping model {}: {}", dir.string(), s.message());
  }
  MutexLock lock(mu_);
  if (models_.empty()) return Status::NotFound("no loadable model under " + models_dir_);
  if (models_.count(default_model_) == 0) {
    if (!default_model_.empty()) {
      return Status::NotFound("default model '" + default_model_ + "' is not under " + models_dir_);
    }
    default_model_ = models_.begin()->first;
  }
  return Status::Ok();
}

Status ModelRegistry::Add(const std::string& name, const std::string& dir) {
  Result<LoadedModel> loaded = LoadModel(dir);
  if (!loaded.ok()) return loaded.status();
  auto served = std::make_shared<ServedModel>();
  served->name = name;
  served->dir = dir;
  served->info = loaded->info;
  served->parameters = ParameterCount(*loaded->net);
  try {
    served->scheduler = std::make_unique<BatchScheduler>(name, *loaded, device_, limits_);
  } catch (const std::exception& e) {
    return Status::Internal("cannot place model " + name + " on " + device_.str() + ": " + e.what());
  }
  std::shared_ptr<ServedModel> previous;
  {
    MutexLock lock(mu_);
    auto it = models_.find(name);
    if (it != models_.end()) previous = it->second;
    models_[name] = served;
  }
  // Requests on the replaced model end with UNAVAILABLE saying so; new ones go to the new model.
  if (previous) {
    previous->scheduler->Stop(Status::Unavailable("model '" + name +
                                                  "' was replaced by a newly published version while this request "
                                                  "ran; retry to use the new one"));
  }
  spdlog::info("model {} loaded from {} ({}x{}, labels {}, {} parameters)", name, dir, served->info.arch.height,
               served->info.arch.height, served->info.labels.size(), served->parameters);
  return Status::Ok();
}

std::shared_ptr<ServedModel> ModelRegistry::Find(const std::string& name) const {
  MutexLock lock(mu_);
  auto it = models_.find(name.empty() ? default_model_ : name);
  return it == models_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<ServedModel>> ModelRegistry::List() const {
  MutexLock lock(mu_);
  std::vector<std::shared_ptr<ServedModel>> out;
  for (const auto& [name, model] : models_) out.push_back(model);
  return out;
}

std::string ModelRegistry::default_model() const {
  MutexLock lock(mu_);
  return default_model_;
}

void ModelRegistry::StopAll() {
  for (const auto& model : List()) model->scheduler->Stop();
}

}  // namespace spritediff
