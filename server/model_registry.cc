#include "server/model_registry.h"

#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include <filesystem>

#include "core/checkpoint.h"

namespace spritediff {

namespace fs = std::filesystem;

namespace {

// "inode:size:mtime_ns" of path; empty when it cannot be stat'ed.
std::string FileIdentity(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  return std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) +
         "." + std::to_string(st.st_mtim.tv_nsec);
}

}  // namespace

Result<std::vector<std::string>> ModelDirNames(const std::string& models_dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(models_dir, ec)) {
    const std::string name = entry.path().filename().string();
    std::error_code entry_ec;
    if (name.rfind('.', 0) == 0 || !entry.is_directory(entry_ec)) continue;
    if (fs::exists(entry.path() / "model.json", entry_ec)) names.push_back(name);
  }
  if (ec) return Status::IoError("models_dir " + models_dir + ": " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

std::string ModelDirFingerprint(const std::string& dir) {
  const std::string json = FileIdentity(fs::path(dir) / "model.json");
  if (json.empty()) return "";
  Result<std::string> weights = ReadModelWeightsName(dir);
  if (!weights.ok() || weights->empty()) return "";
  const std::string data = FileIdentity(fs::path(dir) / *weights);
  if (data.empty()) return "";
  return json + "|" + *weights + ":" + data;
}

ModelRegistry::ModelRegistry(std::string models_dir, std::string default_model, torch::Device device,
                             SchedulerLimits limits)
    : models_dir_(std::move(models_dir)), device_(device), limits_(limits), default_model_(std::move(default_model)) {}

ModelRegistry::~ModelRegistry() { StopAll(); }

Status ModelRegistry::LoadAll() {
  std::error_code ec;
  if (!fs::is_directory(models_dir_, ec)) return Status::NotFound("models_dir " + models_dir_ + " is not a directory");
  Result<std::vector<std::string>> names = ModelDirNames(models_dir_);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    const std::string dir = (fs::path(models_dir_) / name).string();
    Status s = Add(name, dir);
    if (!s.ok()) spdlog::warn("skipping model {}: {}", dir, s.message());
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
  // Taken before loading: files that change while loading make the watcher load them again.
  const std::string fingerprint = ModelDirFingerprint(dir);
  Result<LoadedModel> loaded = LoadModel(dir);
  if (!loaded.ok()) return loaded.status();
  auto served = std::make_shared<ServedModel>();
  served->name = name;
  served->dir = dir;
  served->info = loaded->info;
  served->parameters = ParameterCount(*loaded->net);
  served->fingerprint = fingerprint;
  try {
    served->scheduler = std::make_unique<BatchScheduler>(name, *loaded, device_, limits_);
  } catch (const std::exception& e) {
    return Status::Internal("cannot place model " + name + " on " + device_.str() + ": " + e.what());
  }
  {
    MutexLock lock(mu_);
    auto it = models_.find(name);
    if (it != models_.end()) {
      RetireLocked(it->second, "model '" + name + "' was replaced by a newer version and this request did not finish "
                                   "within the drain limit; retry to use the new one");
    }
    models_[name] = served;
  }
  spdlog::info("model {} loaded from {} ({}x{}, labels {}, {} parameters)", name, dir, served->info.arch.height,
               served->info.arch.height, served->info.labels.size(), served->parameters);
  return Status::Ok();
}

Status ModelRegistry::Remove(const std::string& name) {
  MutexLock lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return Status::NotFound("model '" + name + "' is not served");
  if (name == default_model_) spdlog::warn("the default model {} is retired: requests that name no model now fail", name);
  RetireLocked(it->second, "model '" + name + "' was removed and this request did not finish within the drain limit");
  models_.erase(it);
  return Status::Ok();
}

void ModelRegistry::RetireLocked(std::shared_ptr<ServedModel> model, std::string why) {
  retired_.push_back(Retired{std::move(model), std::chrono::steady_clock::now(), std::move(why)});
}

void ModelRegistry::ReapRetired() {
  // A request that found the model just before it was retired may still be on its way to the
  // scheduler: a retired model is stopped once idle and retired for at least this long.
  constexpr std::chrono::seconds kGrace{1};
  const auto now = std::chrono::steady_clock::now();
  std::vector<Retired> done;
  {
    MutexLock lock(mu_);
    for (auto it = retired_.begin(); it != retired_.end();) {
      const SchedulerStats stats = it->model->scheduler->stats();
      const bool idle = stats.queued_rows == 0 && stats.running_rows == 0 && now - it->since >= kGrace;
      if (idle || now - it->since >= kRetiredModelDrainLimit) {
        done.push_back(std::move(*it));
        it = retired_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (Retired& r : done) {  // joins its threads: outside the lock
    r.model->scheduler->Stop(Status::Unavailable(r.why));
    spdlog::info("model {} (from {}) retired", r.model->name, r.model->dir);
  }
}

std::map<std::string, std::string> ModelRegistry::Fingerprints() const {
  MutexLock lock(mu_);
  std::map<std::string, std::string> out;
  for (const auto& [name, model] : models_) out[name] = model->fingerprint;
  return out;
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
  std::vector<Retired> retired;
  {
    MutexLock lock(mu_);
    retired.swap(retired_);
  }
  for (const Retired& r : retired) r.model->scheduler->Stop();
  for (const auto& model : List()) model->scheduler->Stop();
}

}  // namespace spritediff
