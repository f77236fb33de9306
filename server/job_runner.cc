#include "server/job_runner.h"

#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/dataset.h"
#include "core/image.h"
#include "core/runtime.h"
#include "core/trainer.h"

namespace spritediff {

namespace fs = std::filesystem;

namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsFinal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED ||
         s == v1::JOB_STATE_INTERRUPTED;
}

grpc::Status Invalid(const std::string& message) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message); }

// Model names become directory names: a safe set, no separators, no "..".
bool ValidModelName(const std::string& name) {
  static const std::regex re("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
  return std::regex_match(name, re) && name.find("..") == std::string::npos;
}

// The dataset folder for a spec, resolved (symlinks included) and checked to lie under root.
grpc::Status ResolveDataset(const std::string& data_root, const std::string& dataset, fs::path* out) {
  if (dataset.empty()) return Invalid("dataset is required: a folder under the server's data root");
  if (dataset.find('\0') != std::string::npos) return Invalid("dataset contains a NUL character");
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(fs::absolute(data_root), ec);
  if (ec || !fs::is_directory(root, ec)) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "the server's data root " + data_root + " is not a directory (config data_root)");
  }
  const fs::path path = fs::weakly_canonical(root / dataset, ec);
  if (ec) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "dataset '" + dataset + "': " + ec.message());
  }
  const fs::path rel = path.lexically_relative(root);
  if (rel.empty() || *rel.begin() == "..") {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "dataset '" + dataset + "' resolves outside the server's data root " + root.string());
  }
  *out = path;
  return grpc::Status::OK;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(m, &out, options).ok()) return std::string();
  return out;
}

// Files of a dataset must be plain files and directories under root: a symlink inside the
// dataset must not lead outside it, and a FIFO or device would hang or flood the reader.
grpc::Status CheckDatasetTree(const fs::path& root, const fs::path& dataset, const std::string& name) {
  std::error_code ec;
  int seen = 0;
  for (auto it = fs::recursive_directory_iterator(dataset, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (++seen > 1000000) break;
    const fs::path& p = it->path();
    if (it->is_symlink(ec)) {
      const fs::path target = fs::weakly_canonical(p, ec);
      const fs::path rel = target.lexically_relative(root);
      if (ec || rel.empty() || *rel.begin() == "..") {
        return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            "dataset '" + name + "': " + p.string() + " links outside the server's data root");
      }
    }
    const fs::file_status st = fs::status(p, ec);
    if (!ec && !fs::is_regular_file(st) && !fs::is_directory(st)) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "dataset '" + name + "': " + p.string() + " is neither a file nor a directory");
    }
  }
  if (ec) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "dataset '" + name + "': " + ec.message());
  }
  return grpc::Status::OK;
}

// README.md for a model trained through the endpoint: how it was made and how it learned.
std::string ModelCard(const v1::Job& job) {
  const v1::JobSpec& spec = job.spec();
  const v1::JobProgress& p = job.progress();
  std::ostringstream md;
  md << "# " << spec.model_name() << "\n\n"
     << "Trained by spritediffd's Training service (job " << job.id() << "). Equivalent client command:\n\n"
     << "```sh\nspritectl train submit --name " << spec.model_name() << " --dataset " << spec.dataset()
     << " --image-size " << spec.image_size() << " --n-feat " << spec.n_feat() << " --epochs " << spec.epochs()
     << " --batch-size " << spec.batch_size() << " --lr " << spec.lr() << " --context-dropout "
     << spec.context_dropout() << " --ema-decay " << spec.ema_decay() << " --checkpoint-every "
     << spec.checkpoint_every() << " --seed " << spec.seed() << " --class-balance " << spec.class_balance()
     << (spec.no_flip() ? " --no-flip" : "") << (spec.base_model().empty() ? "" : " --base-model " + spec.base_model())
     << "\n```\n\n"
     << "| | |\n|---|---|\n"
     << "| epochs | " << p.epoch() << " (" << p.step() << " optimizer steps of " << spec.batch_size() << " images) |\n"
     << "| final epoch loss | " << (job.epoch_losses_size() ? job.epoch_losses(job.epoch_losses_size() - 1) : 0.0)
     << " |\n"
     << "| training wall time | " << static_cast<int64_t>(std::round(p.elapsed_s())) << " s |\n"
     << "| resumed after restarts | " << job.resumes() << " |\n"
     << "| weights | " << (spec.ema_decay() > 0 ? "EMA" : "live") << " |\n";
  if (p.has_eval_accuracy()) {
    md << "| quality meter (" << spec.eval_per_class() << " per label, DDIM-25 eta 1 guidance 2) | class accuracy "
       << p.eval_accuracy() << ", Frechet ratio " << p.eval_frechet_ratio() << ", precision " << p.eval_precision()
       << ", recall " << p.eval_recall() << " (per class: `quality` in model.json) |\n";
  }
  md << "\n"
     << "![guided DDIM-25 samples, one row per label](samples.png)\n\n"
     << "Loss per epoch (mean MSE on the noise): `training-log.csv`.\n";
  return md.str();
}

}  // namespace

JobRunner::JobRunner(TrainingLimits limits, ModelRegistry& registry) : limits_(std::move(limits)), registry_(registry) {}

JobRunner::~JobRunner() { Stop(); }

Status JobRunner::PersistLocked(const Entry& entry) const {
  const std::string text = ToJson(entry.job);
  if (text.empty()) return Status::Internal("job " + entry.job.id() + ": cannot encode its record");
  std::error_code ec;
  fs::create_directories(entry.dir, ec);
  if (ec) return Status::Internal(entry.dir + ": " + ec.message());
  return WriteFileAtomic((fs::path(entry.dir) / "job.json").string(), text);
}

std::vector<std::function<void()>> JobRunner::ChangedLocked(Entry& entry) {
  ++entry.version;
  Status s = PersistLocked(entry);
  if (!s.ok()) spdlog::error("job {}: cannot write its record: {}", entry.job.id(), s.message());
  std::vector<std::function<void()>> out;
  for (auto& [token, fn] : entry.listeners) out.push_back(fn);
  return out;
}

void JobRunner::Notify(const std::vector<std::function<void()>>& listeners) {
  for (const auto& fn : listeners) fn();
}

Status JobRunner::Start() {
  std::error_code ec;
  const fs::path jobs_dir = fs::path(limits_.state_dir) / "jobs";
  fs::create_directories(jobs_dir, ec);
  if (ec) return Status::FailedPrecondition("state_dir " + limits_.state_dir + ": " + ec.message());
  std::vector<fs::path> dirs;
  for (const auto& d : fs::directory_iterator(jobs_dir, ec)) {
    if (d.is_directory()) dirs.push_back(d.path());
  }
  std::sort(dirs.begin(), dirs.end());
  std::lock_guard<std::mutex> lock(mu_);
  for (const fs::path& dir : dirs) {
    // Ids come from directory names too, so an unreadable record never gets its id reused.
    unsigned long long dir_n = 0;
    if (std::sscanf(dir.filename().c_str(), "job-%llu", &dir_n) == 1) next_id_ = std::max<uint64_t>(next_id_, dir_n + 1);
    std::ifstream in(dir / "job.json");
    if (!in) continue;
    std::stringstream text;
    text << in.rdbuf();
    auto entry = std::make_shared<Entry>();
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(text.str(), &entry->job, options).ok() ||
        entry->job.id() != dir.filename().string()) {
      spdlog::warn("jobs: skipping {}: unreadable job.json", dir.string());
      continue;
    }
    entry->dir = dir.string();
    const std::string& id = entry->job.id();
    unsigned long long n = 0;
    if (std::sscanf(id.c_str(), "job-%llu", &n) == 1) next_id_ = std::max<uint64_t>(next_id_, n + 1);
    const fs::path grid = fs::path(entry->dir) / "model" / "samples.png";
    if (entry->job.progress().checkpoint_epoch() > 0 && fs::exists(grid)) {
      std::ifstream g(grid, std::ios::binary);
      entry->grid_png = std::make_shared<const std::string>(std::istreambuf_iterator<char>(g), std::istreambuf_iterator<char>());
      entry->grid_epoch = entry->job.progress().checkpoint_epoch();
    }
    const v1::JobState state = entry->job.state();
    if ((state == v1::JOB_STATE_RUNNING || state == v1::JOB_STATE_QUEUED) && entry->job.cancel_requested()) {
      entry->job.set_state(v1::JOB_STATE_CANCELLED);
      entry->job.set_message("cancelled (the daemon stopped before the cancel completed)");
      entry->job.set_finished_unix_ms(NowUnixMs());
      Status s = PersistLocked(*entry);
      if (!s.ok()) spdlog::error("job {}: {}", id, s.message());
    } else if (state == v1::JOB_STATE_RUNNING || state == v1::JOB_STATE_QUEUED) {
      if (limits_.resume_interrupted) {
        if (state == v1::JOB_STATE_RUNNING) entry->job.set_resumes(entry->job.resumes() + 1);
        entry->job.set_state(v1::JOB_STATE_QUEUED);
        entry->job.set_message(state == v1::JOB_STATE_RUNNING ? "resuming after a daemon restart" : "");
        queue_.push_back(id);
        spdlog::info("job {}: {} after restart (model {})", id, state == v1::JOB_STATE_RUNNING ? "resuming" : "queued",
                     entry->job.spec().model_name());
      } else {
        entry->job.set_state(v1::JOB_STATE_INTERRUPTED);
        entry->job.set_message("the daemon stopped while this job was " +
                               std::string(state == v1::JOB_STATE_RUNNING ? "running" : "queued") +
                               " and resume_interrupted_jobs is off; submit it again");
        entry->job.set_finished_unix_ms(NowUnixMs());
        spdlog::info("job {}: marked INTERRUPTED", id);
      }
      Status s = PersistLocked(*entry);
      if (!s.ok()) spdlog::error("job {}: {}", id, s.message());
    }
    jobs_[id] = entry;
  }
  for (int i = 0; i < limits_.max_concurrent_jobs; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  spdlog::info("jobs: {} on record, {} queued, {} training slot(s) of {} thread(s), data root {}", jobs_.size(),
               queue_.size(), limits_.max_concurrent_jobs, limits_.threads, limits_.data_root);
  return Status::Ok();
}

void JobRunner::Stop() {
  std::vector<std::function<void()>> listeners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    for (auto& [id, entry] : jobs_) {
      entry->stop.store(true);
      ++entry->version;
      for (auto& [token, fn] : entry->listeners) listeners.push_back(fn);
    }
  }
  cv_.notify_all();
  done_cv_.notify_all();
  Notify(listeners);
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

grpc::Status JobRunner::ValidateSpec(v1::JobSpec* spec, std::string* dataset_path) const {
  if (!ValidModelName(spec->model_name())) {
    return Invalid("model_name '" + spec->model_name() +
                   "' must be 1..64 characters from [A-Za-z0-9._-], start with a letter or digit, and not contain '..'");
  }
  std::shared_ptr<ServedModel> base;
  if (!spec->base_model().empty()) {
    base = registry_.Find(spec->base_model());
    if (!base) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "base_model '" + spec->base_model() + "' is not served; see ListModels");
    }
    if (spec->image_size() == 0) spec->set_image_size(static_cast<uint32_t>(base->info.arch.height));
    if (spec->n_feat() == 0) spec->set_n_feat(static_cast<uint32_t>(base->info.arch.n_feat));
  }
  if (spec->image_size() == 0) spec->set_image_size(16);
  if (spec->image_size() != 16 && spec->image_size() != 32) {
    return Invalid("image_size must be 16 or 32, got " + std::to_string(spec->image_size()));
  }
  if (spec->n_feat() == 0) spec->set_n_feat(64);
  if (spec->n_feat() > 512) return Invalid("n_feat must be in [1, 512], got " + std::to_string(spec->n_feat()));
  if (spec->epochs() == 0) spec->set_epochs(100);
  if (spec->epochs() > 100000) return Invalid("epochs must be in [1, 100000], got " + std::to_string(spec->epochs()));
  if (spec->batch_size() == 0) spec->set_batch_size(64);
  if (spec->batch_size() < 2 || spec->batch_size() > 4096) {
    return Invalid("batch_size must be in [2, 4096], got " + std::to_string(spec->batch_size()));
  }
  if (!spec->has_lr()) spec->set_lr(1e-3f);
  if (!(std::isfinite(spec->lr()) && spec->lr() > 0 && spec->lr() <= 1)) {
    return Invalid("lr must be in (0, 1], got " + std::to_string(spec->lr()));
  }
  if (!spec->has_context_dropout()) spec->set_context_dropout(0.1f);
  if (!(spec->context_dropout() >= 0 && spec->context_dropout() <= 1)) {
    return Invalid("context_dropout must be in [0, 1], got " + std::to_string(spec->context_dropout()));
  }
  if (!spec->has_ema_decay()) spec->set_ema_decay(0.999f);
  if (!(spec->ema_decay() >= 0 && spec->ema_decay() < 1)) {
    return Invalid("ema_decay must be in [0, 1), got " + std::to_string(spec->ema_decay()));
  }
  if (spec->checkpoint_every() == 0) spec->set_checkpoint_every(10);
  if (spec->checkpoint_every() > 100000) {
    return Invalid("checkpoint_every must be in [1, 100000] epochs, got " + std::to_string(spec->checkpoint_every()));
  }
  if (spec->seed() == 0) spec->set_seed(1);
  if (spec->class_balance().empty()) spec->set_class_balance("none");
  if (spec->class_balance() != "none" && spec->class_balance() != "sqrt") {
    return Invalid("class_balance must be none or sqrt, got '" + spec->class_balance() + "'");
  }
  if (spec->eval_per_class() > 1000) {
    return Invalid("eval_per_class must be in [0, 1000], got " + std::to_string(spec->eval_per_class()));
  }
  ModelConfig arch;
  arch.n_feat = static_cast<int>(spec->n_feat());
  arch.height = static_cast<int>(spec->image_size());
  Status arch_ok = arch.Validate();
  if (!arch_ok.ok()) return Invalid("n_feat/image_size: " + arch_ok.message());
  if (base && (base->info.arch.height != arch.height || base->info.arch.n_feat != arch.n_feat)) {
    return Invalid("base_model '" + base->name + "' has image_size " + std::to_string(base->info.arch.height) +
                   " and n_feat " + std::to_string(base->info.arch.n_feat) + "; a fine-tune keeps both");
  }

  std::error_code ec;
  if (registry_.Find(spec->model_name()) || fs::exists(fs::path(limits_.models_dir) / spec->model_name(), ec)) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "model_name '" + spec->model_name() + "' is taken by a model in " + limits_.models_dir);
  }

  fs::path path;
  grpc::Status resolved = ResolveDataset(limits_.data_root, spec->dataset(), &path);
  if (!resolved.ok()) return resolved;
  if (!fs::exists(path, ec)) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "dataset '" + spec->dataset() + "' (" + path.string() + "): no such file or directory");
  }
  if (!fs::is_directory(path, ec)) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "dataset '" + spec->dataset() + "' (" + path.string() + "): not a directory");
  }
  grpc::Status tree = CheckDatasetTree(fs::weakly_canonical(fs::absolute(limits_.data_root), ec), path, spec->dataset());
  if (!tree.ok()) return tree;
  // Reading it all now turns unreadable files into an answer before the job is queued.
  Result<Dataset> data = LoadDataset(path.string(), arch.height);
  if (!data.ok()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "dataset '" + spec->dataset() + "' (" + path.string() + "): " + data.status().message());
  }
  if (data->size() < spec->batch_size()) {
    return Invalid("batch_size " + std::to_string(spec->batch_size()) + " exceeds the dataset's " +
                   std::to_string(data->size()) + " images");
  }
  if (base && base->info.labels.size() != data->labels.size()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "base_model '" + base->name + "' has " + std::to_string(base->info.labels.size()) +
                            " labels, the dataset " + std::to_string(data->labels.size()));
  }
  *dataset_path = path.string();
  return grpc::Status::OK;
}

grpc::Status JobRunner::Submit(const v1::JobSpec& spec_in, v1::Job* out) {
  if (limits_.max_concurrent_jobs == 0) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "training is disabled on this server (config max_concurrent_jobs = 0)");
  }
  v1::JobSpec spec = spec_in;
  std::string dataset_path;
  grpc::Status valid = ValidateSpec(&spec, &dataset_path);
  if (!valid.ok()) return valid;

  std::vector<std::function<void()>> listeners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    for (const auto& [id, other] : jobs_) {
      if (!IsFinal(other->job.state()) && other->job.spec().model_name() == spec.model_name()) {
        return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                            "model_name '" + spec.model_name() + "' is the target of unfinished job " + id);
      }
    }
    char id[32];
    std::snprintf(id, sizeof(id), "job-%06llu", static_cast<unsigned long long>(next_id_++));
    auto entry = std::make_shared<Entry>();
    entry->dir = (fs::path(limits_.state_dir) / "jobs" / id).string();
    std::error_code exists_ec;
    if (fs::exists(entry->dir, exists_ec)) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "job directory " + entry->dir + " already exists");
    }
    entry->job.set_id(id);
    *entry->job.mutable_spec() = spec;
    entry->job.set_state(v1::JOB_STATE_QUEUED);
    entry->job.set_created_unix_ms(NowUnixMs());
    entry->job.mutable_progress()->set_epochs(spec.epochs());
    Status s = PersistLocked(*entry);
    if (!s.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "cannot record the job: " + s.message());
    jobs_[id] = entry;
    queue_.push_back(id);
    *out = entry->job;
    spdlog::info("job {}: submitted: model {} dataset {} ({}) {}px n_feat {} epochs {} batch {}", id,
                 spec.model_name(), spec.dataset(), dataset_path, spec.image_size(), spec.n_feat(), spec.epochs(),
                 spec.batch_size());
  }
  cv_.notify_one();
  return grpc::Status::OK;
}

grpc::Status JobRunner::Get(const std::string& id, v1::Job* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "job '" + id + "' does not exist; see ListJobs");
  *out = it->second->job;
  return grpc::Status::OK;
}

std::vector<v1::Job> JobRunner::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::Job> out;
  for (const auto& [id, entry] : jobs_) out.push_back(entry->job);
  return out;
}

grpc::Status JobRunner::Cancel(const std::string& id, v1::Job* out) {
  std::vector<std::function<void()>> listeners;
  std::unique_lock<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "job '" + id + "' does not exist; see ListJobs");
  std::shared_ptr<Entry> entry = it->second;
  if (IsFinal(entry->job.state())) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "job " + id + " has already finished (" + v1::JobState_Name(entry->job.state()) + ")");
  }
  auto queued = std::find(queue_.begin(), queue_.end(), id);
  if (queued != queue_.end()) {
    queue_.erase(queued);
    entry->job.set_state(v1::JOB_STATE_CANCELLED);
    entry->job.set_message("cancelled before it started");
    entry->job.set_finished_unix_ms(NowUnixMs());
    listeners = ChangedLocked(*entry);
    spdlog::info("job {}: cancelled while queued", id);
  } else {
    entry->cancel_requested = true;
    entry->stop.store(true);
    entry->job.set_cancel_requested(true);
    entry->job.set_message("cancelling");
    listeners = ChangedLocked(*entry);
    // The trainer checks between optimizer steps; answer with the final state when it comes soon.
    done_cv_.wait_for(lock, std::chrono::seconds(10), [&] { return IsFinal(entry->job.state()) || stopping_; });
  }
  *out = entry->job;
  lock.unlock();
  Notify(listeners);
  return grpc::Status::OK;
}

bool JobRunner::GetSnapshot(const std::string& id, Snapshot* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return false;
  out->job = it->second->job;
  out->version = it->second->version;
  out->grid_epoch = it->second->grid_epoch;
  out->grid_png = it->second->grid_png;
  out->closing = stopping_;
  return true;
}

uint64_t JobRunner::Subscribe(const std::string& id, std::function<void()> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return 0;
  const uint64_t token = next_token_++;
  it->second->listeners[token] = std::move(listener);
  return token;
}

void JobRunner::Unsubscribe(const std::string& id, uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it != jobs_.end()) it->second->listeners.erase(token);
}

void JobRunner::WorkerLoop() {
  SetThreadIntraOpThreads(limits_.threads);
  while (true) {
    std::shared_ptr<Entry> entry;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      entry = jobs_.at(queue_.front());
      queue_.pop_front();
    }
    RunJob(entry);
  }
}

void JobRunner::RunJob(const std::shared_ptr<Entry>& entry) {
  v1::JobSpec spec;
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    spec = entry->job.spec();
    id = entry->job.id();
  }
  const fs::path dir(entry->dir);
  TrainConfig tc;
  tc.out = (dir / "model").string();
  tc.state_path = (dir / "train-state.pt").string();
  tc.name = spec.model_name();
  tc.height = static_cast<int>(spec.image_size());
  tc.n_feat = static_cast<int>(spec.n_feat());
  tc.epochs = static_cast<int>(spec.epochs());
  tc.batch_size = static_cast<int>(spec.batch_size());
  tc.lr = spec.lr();
  tc.context_dropout = spec.context_dropout();
  tc.ema_decay = spec.ema_decay();
  tc.flip = !spec.no_flip();
  tc.class_balance = spec.class_balance();
  tc.eval.per_class = static_cast<int>(spec.eval_per_class());
  tc.eval.cache_dir = (fs::path(limits_.state_dir) / "eval-cache").string();
  tc.checkpoint_every = static_cast<int>(spec.checkpoint_every());
  tc.seed = spec.seed();
  tc.device = limits_.device;
  tc.log_every = 10;
  tc.resume = fs::exists(tc.state_path);
  tc.command_line = "Training.SubmitJob " + id + " " + ToJson(spec);

  std::string failure;
  fs::path dataset;
  grpc::Status resolved = ResolveDataset(limits_.data_root, spec.dataset(), &dataset);
  if (!resolved.ok()) failure = resolved.error_message();
  tc.data = dataset.string();
  if (!spec.base_model().empty() && !tc.resume) {
    std::shared_ptr<ServedModel> base = registry_.Find(spec.base_model());
    if (!base) failure = "base_model '" + spec.base_model() + "' is no longer served";
    else tc.init_from = base->dir;
  }

  std::vector<std::function<void()>> listeners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure.empty()) {
      entry->job.set_state(v1::JOB_STATE_FAILED);
      entry->job.set_message(failure);
      entry->job.set_finished_unix_ms(NowUnixMs());
    } else {
      entry->job.set_state(v1::JOB_STATE_RUNNING);
      if (entry->job.started_unix_ms() == 0) entry->job.set_started_unix_ms(NowUnixMs());
      entry->job.set_message(tc.resume ? "resumed from its training state" : "");
      if (!tc.resume) entry->job.clear_epoch_losses();
    }
    listeners = ChangedLocked(*entry);
  }
  Notify(listeners);
  if (!failure.empty()) {
    spdlog::warn("job {}: failed before training: {}", id, failure);
    done_cv_.notify_all();
    return;
  }
  spdlog::info("job {}: {} training model {} ({} threads)", id, tc.resume ? "resuming" : "starting", tc.name,
               limits_.threads);

  auto on_progress = [&](const TrainProgress& p) {
    std::shared_ptr<const std::string> grid;
    if (p.checkpoint && !p.grid_path.empty()) {
      std::ifstream in(p.grid_path, std::ios::binary);
      grid = std::make_shared<const std::string>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    std::vector<std::function<void()>> to_call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      v1::JobProgress* pr = entry->job.mutable_progress();
      pr->set_epoch(static_cast<uint32_t>(p.epoch));
      pr->set_epochs(static_cast<uint32_t>(p.epochs));
      pr->set_step(static_cast<uint64_t>(p.step));
      pr->set_steps_per_epoch(static_cast<uint64_t>(p.steps_per_epoch));
      pr->set_loss(p.loss);
      if (!p.epoch_end) {
        pr->set_images_per_s(p.images_per_s);
        pr->set_eta_s(p.eta_s);
      }
      pr->set_elapsed_s(p.elapsed_s);
      pr->set_lr(p.lr);
      if (p.epoch_end && p.epoch_losses != nullptr) {
        // The trainer's record is the truth: after a resume it holds exactly the epochs its state covers.
        entry->job.clear_epoch_losses();
        for (double l : *p.epoch_losses) entry->job.add_epoch_losses(l);
      }
      if (p.quality != nullptr) {
        pr->set_eval_accuracy(p.quality->accuracy);
        pr->set_eval_frechet_ratio(p.quality->frechet_ratio);
        pr->set_eval_precision(p.quality->precision);
        pr->set_eval_recall(p.quality->recall);
      }
      if (p.checkpoint) {
        pr->set_checkpoint_epoch(static_cast<uint32_t>(p.epoch));
        if (grid) {
          entry->grid_png = grid;
          entry->grid_epoch = static_cast<uint32_t>(p.epoch);
        }
      }
      if (p.epoch_end) {
        to_call = ChangedLocked(*entry);
      } else {
        ++entry->version;  // progress between epochs is not worth a disk write
        for (auto& [token, fn] : entry->listeners) to_call.push_back(fn);
      }
    }
    Notify(to_call);
    if (p.checkpoint) spdlog::info("job {}: checkpoint at epoch {}/{} loss {:.5f}", id, p.epoch, p.epochs, p.loss);
  };

  Result<TrainSummary> result = Status::Internal("training did not run");
  try {
    result = Train(tc, &entry->stop, on_progress);
  } catch (const c10::Error& e) {
    result = Status::Internal(std::string("libtorch: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    result = Status::Internal(e.what());
  }

  std::string outcome;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!result.ok()) {
      entry->job.set_state(v1::JOB_STATE_FAILED);
      entry->job.set_message(result.status().message());
      entry->job.set_finished_unix_ms(NowUnixMs());
      outcome = "FAILED: " + result.status().message();
    } else if (result->stopped_early && entry->cancel_requested) {
      entry->job.set_state(v1::JOB_STATE_CANCELLED);
      entry->job.set_message("cancelled at epoch " + std::to_string(result->epochs_done + 1));
      entry->job.set_finished_unix_ms(NowUnixMs());
      outcome = "CANCELLED";
    } else if (result->stopped_early) {
      // The daemon is stopping: the record stays RUNNING so the next start resumes it.
      entry->job.set_message("stopped with the daemon; its training state is saved");
      outcome = "stopped with the daemon (state saved; resumes on restart)";
    }
  }
  if (outcome.empty()) {
    Status published = Publish(entry);
    std::lock_guard<std::mutex> lock(mu_);
    if (published.ok()) {
      entry->job.set_state(v1::JOB_STATE_SUCCEEDED);
      entry->job.set_message("model " + spec.model_name() + " is served");
      entry->job.set_model_dir((fs::path(limits_.models_dir) / spec.model_name()).string());
      outcome = "SUCCEEDED: final loss " + std::to_string(result->final_loss);
    } else {
      entry->job.set_state(v1::JOB_STATE_FAILED);
      entry->job.set_message("training finished but publishing failed: " + published.message());
      outcome = "FAILED: " + published.message();
    }
    entry->job.set_finished_unix_ms(NowUnixMs());
  }
  v1::JobState state;
  {
    std::lock_guard<std::mutex> lock(mu_);
    listeners = ChangedLocked(*entry);
    state = entry->job.state();
  }
  done_cv_.notify_all();
  Notify(listeners);
  if (state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_CANCELLED) {
    std::error_code ec;
    fs::remove(tc.state_path, ec);  // no longer needed; it is the biggest file of a job
  }
  spdlog::info("job {}: {}", id, outcome);
}

Status JobRunner::Publish(const std::shared_ptr<Entry>& entry) {
  v1::Job job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job = entry->job;
  }
  const std::string name = job.spec().model_name();
  const fs::path staging = fs::path(entry->dir) / "model";
  const fs::path target = fs::path(limits_.models_dir) / name;
  std::error_code ec;
  if (!fs::exists(staging / "model.json", ec)) {
    // A publish that completed just before a crash: the target is this job's model.
    Result<ModelInfo> published = ReadModelInfo(target.string());
    if (published.ok() &&
        published->provenance.value("command", "").find("Training.SubmitJob " + job.id() + " ") != std::string::npos) {
      return registry_.Find(name) ? Status::Ok() : registry_.Add(name, target.string());
    }
    return Status::FailedPrecondition("the trained model is missing from " + staging.string());
  }
  if (fs::exists(target, ec)) return Status::FailedPrecondition(target.string() + " appeared while the job ran");
  // A model that cannot be loaded never takes the name.
  Result<LoadedModel> loadable = LoadModel(staging.string());
  if (!loadable.ok()) return loadable.status();
  Status card = WriteFileAtomic((staging / "README.md").string(), ModelCard(job));
  if (!card.ok()) return card;
  fs::create_directories(limits_.models_dir, ec);
  fs::rename(staging, target, ec);
  if (ec == std::errc::cross_device_link) {
    // Separate volumes: copy next to the target (a dot-directory the registry skips), then rename.
    const fs::path tmp = fs::path(limits_.models_dir) / ("." + name + ".tmp-" + job.id());
    std::error_code cleanup;
    fs::remove_all(tmp, cleanup);
    ec.clear();
    fs::copy(staging, tmp, fs::copy_options::recursive, ec);
    if (!ec) fs::rename(tmp, target, ec);
    if (ec) {
      fs::remove_all(tmp, cleanup);
      return Status::Internal("publishing into " + target.string() + ": " + ec.message());
    }
    fs::remove_all(staging, cleanup);
  } else if (ec) {
    return Status::Internal("renaming " + staging.string() + " to " + target.string() + ": " + ec.message());
  }
  Status added = registry_.Add(name, target.string());
  if (!added.ok()) {
    std::error_code undo;
    fs::rename(target, staging, undo);  // give the name back; the job can be inspected in its dir
  }
  return added;
}

}  // namespace spritediff
