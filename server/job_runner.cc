#include "server/job_runner.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "common/precision.h"
#include "common/client_text.h"
#include "common/file_util.h"
#include "common/image.h"
#include "core/runtime.h"
#include "core/trainer.h"
#include "server/model_publisher.h"
#include "server/model_registry.h"

namespace spritediff {

namespace fs = std::filesystem;

JobRunner::JobRunner(TrainingLimits limits, ModelRegistry& registry)
    : limits_(std::move(limits)), registry_(registry), store_(limits_.state_dir) {}

JobRunner::~JobRunner() { Stop(); }

JobRunner::Change JobRunner::ChangedLocked(const std::shared_ptr<Entry>& entry, bool persist) {
  Change c;
  c.entry = entry;
  c.version = ++entry->version;
  c.persist = persist;
  if (persist) c.job = entry->job;
  for (auto& [token, fn] : entry->listeners) c.listeners.push_back(fn);
  return c;
}

void JobRunner::Commit(const Change& c) {
  if (c.persist) {
    Status s = c.entry->writer.Write(c.job, c.version);
    if (!s.ok()) spdlog::error("job {}: cannot write its record: {}", c.job.id(), s.message());
  }
  for (const auto& fn : c.listeners) {
    try {
      fn();
    } catch (const std::exception& e) {
      spdlog::error("job listener threw: {}", e.what());
    }
  }
}

Status JobRunner::Start() {
  Status init = store_.Init();
  if (!init.ok()) return init;
  std::vector<Change> changes;
  Status started;
  {
    MutexLock lock(mu_);
    started = StartLocked(&changes);
  }
  for (const Change& c : changes) Commit(c);
  return started;
}

Status JobRunner::StartLocked(std::vector<Change>* changes) {
  std::vector<JobStore::Loaded> loaded;
  try {
    loaded = store_.LoadAll(&next_id_);
  } catch (const std::exception& e) {  // a file system error while scanning: no jobs, not a crash
    spdlog::error("jobs: cannot read the records under {}: {}", limits_.state_dir, e.what());
  }
  for (JobStore::Loaded& l : loaded) {
    auto entry = std::make_shared<Entry>(l.dir);
    entry->job = std::move(l.job);
    if (l.grid_png) {
      entry->grid_png = l.grid_png;
      entry->grid_epoch = entry->job.progress().checkpoint_epoch();
    }
    const std::string id = entry->job.id();
    const v1::JobState state = entry->job.state();
    if ((state == v1::JOB_STATE_RUNNING || state == v1::JOB_STATE_QUEUED) && entry->job.cancel_requested()) {
      entry->job.set_state(v1::JOB_STATE_CANCELLED);
      entry->job.set_message("cancelled (the daemon stopped before the cancel completed)");
      entry->job.set_finished_unix_ms(NowUnixMs());
      changes->push_back(ChangedLocked(entry));
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
      changes->push_back(ChangedLocked(entry));
    }
    // Retention: a finished job's dir goes after finished_job_retention_h; the newest dir always
    // stays, so job ids keep counting up across restarts. (Start-up only: nothing waits on mu_ yet.)
    const int64_t retention_ms = static_cast<int64_t>(limits_.finished_job_retention_h) * 3600 * 1000;
    if (retention_ms > 0 && IsFinal(entry->job.state()) && entry->job.finished_unix_ms() > 0 &&
        NowUnixMs() - static_cast<int64_t>(entry->job.finished_unix_ms()) > retention_ms &&
        &l != &loaded.back()) {
      std::error_code removed;
      fs::remove_all(entry->writer.dir(), removed);
      spdlog::info("job {}: finished over {}h ago; its dir {} removed (finished_job_retention_h)", id,
                   limits_.finished_job_retention_h, removed ? "could not be" : "was");
      continue;
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
    MutexLock lock(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    for (auto& [id, entry] : jobs_) {
      entry->stop.store(true);
      ++entry->version;
      for (auto& [token, fn] : entry->listeners) listeners.push_back(fn);
    }
  }
  cv_.NotifyAll();
  Change closing;
  closing.persist = false;
  closing.listeners = std::move(listeners);
  Commit(closing);
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

Result<TrainingPlan> JobRunner::Plan(const v1::JobSpec& spec) const {
  if (limits_.max_concurrent_jobs == 0) {
    return Status::FailedPrecondition("training is disabled on this server (config max_concurrent_jobs = 0)");
  }
  return PlanTraining(spec, limits_, registry_);
}

Status JobRunner::Submit(TrainingPlan plan, v1::Job* out) {
  if (limits_.max_concurrent_jobs == 0) {
    return Status::FailedPrecondition("training is disabled on this server (config max_concurrent_jobs = 0)");
  }
  const v1::JobSpec& spec = plan.spec;
  Change change;
  {
    MutexLock lock(mu_);
    if (stopping_) return Status::Unavailable("the server is shutting down");
    int unfinished = 0;
    for (const auto& [id, other] : jobs_) unfinished += IsFinal(other->job.state()) ? 0 : 1;
    if (unfinished >= limits_.max_queued_jobs) {
      return Status::ResourceExhausted("the training queue is full (" + std::to_string(unfinished) +
                                       " unfinished jobs; config max_queued_jobs); try again when one finishes");
    }
    for (const auto& [id, other] : jobs_) {
      if (!IsFinal(other->job.state()) && other->job.spec().model_name() == spec.model_name()) {
        return Status::AlreadyExists("model_name '" + spec.model_name() + "' is the target of unfinished job " + id);
      }
    }
    const std::string id = JobStore::FormatId(next_id_++);
    auto entry = std::make_shared<Entry>(store_.JobDir(id));
    std::error_code exists_ec;
    if (fs::exists(entry->writer.dir(), exists_ec)) {
      return Status::Internal("job directory " + entry->writer.dir() + " already exists");
    }
    entry->job.set_id(id);
    *entry->job.mutable_spec() = spec;
    entry->job.set_state(v1::JOB_STATE_QUEUED);
    entry->job.set_created_unix_ms(NowUnixMs());
    entry->job.mutable_progress()->set_epochs(spec.epochs());
    entry->dataset_path = plan.dataset_path;
    jobs_[id] = entry;
    queue_.push_back(id);
    *out = entry->job;
    change = ChangedLocked(entry);
    spdlog::info("job {}: queued: model {} dataset {} ({}) {}px n_feat {} epochs {} batch {}", id, spec.model_name(),
                 spec.dataset(), plan.dataset_path, spec.image_size(), spec.n_feat(), spec.epochs(),
                 spec.batch_size());
  }
  // The record is written before a worker can see the job: the worker's first write has a
  // higher version, so the two cannot overtake each other on disk.
  Commit(change);
  cv_.NotifyOne();
  return Status::Ok();
}

Status JobRunner::Get(const std::string& id, v1::Job* out) const {
  MutexLock lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return Status::NotFound("job '" + Echo(id) + "' does not exist; see ListJobs");
  *out = it->second->job;
  return Status::Ok();
}

std::vector<v1::Job> JobRunner::List() const {
  MutexLock lock(mu_);
  std::vector<v1::Job> out;
  for (const auto& [id, entry] : jobs_) out.push_back(entry->job);
  return out;
}

Status JobRunner::Cancel(const std::string& id, v1::Job* out) {
  Change change;
  {
    MutexLock lock(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return Status::NotFound("job '" + Echo(id) + "' does not exist; see ListJobs");
    std::shared_ptr<Entry> entry = it->second;
    if (IsFinal(entry->job.state())) {
      return Status::FailedPrecondition("job " + id + " has already finished (" +
                                        v1::JobState_Name(entry->job.state()) + ")");
    }
    auto queued = std::find(queue_.begin(), queue_.end(), id);
    if (queued != queue_.end()) {
      queue_.erase(queued);
      entry->job.set_state(v1::JOB_STATE_CANCELLED);
      entry->job.set_message("cancelled before it started");
      entry->job.set_finished_unix_ms(NowUnixMs());
      spdlog::info("job {}: cancelled while queued", id);
    } else {
      // The trainer checks between optimizer steps; watchers see CANCELLED when it stops.
      entry->cancel_requested = true;
      entry->stop.store(true);
      entry->job.set_cancel_requested(true);
      entry->job.set_message("cancelling");
      spdlog::info("job {}: cancel requested", id);
    }
    *out = entry->job;
    change = ChangedLocked(entry);
  }
  Commit(change);
  return Status::Ok();
}

bool JobRunner::GetSnapshot(const std::string& id, Snapshot* out) const {
  MutexLock lock(mu_);
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
  MutexLock lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return 0;
  const uint64_t token = next_token_++;
  it->second->listeners[token] = std::move(listener);
  return token;
}

void JobRunner::Unsubscribe(const std::string& id, uint64_t token) {
  MutexLock lock(mu_);
  auto it = jobs_.find(id);
  if (it != jobs_.end()) it->second->listeners.erase(token);
}

void JobRunner::WorkerLoop() {
  SetThreadIntraOpThreads(limits_.threads);
  while (true) {
    std::shared_ptr<Entry> entry;
    {
      MutexLock lock(mu_);
      while (!stopping_ && queue_.empty()) cv_.Wait(mu_);
      if (stopping_) return;
      entry = jobs_.at(queue_.front());
      queue_.pop_front();
    }
    // Nothing a job does may end the worker (or, escaping the thread, the daemon).
    ++busy_workers_;
    struct Idle {
      std::atomic<int>& busy;
      ~Idle() { --busy; }
    } idle{busy_workers_};
    try {
      RunJob(entry);
    } catch (const c10::Error& e) {
      FailJob(entry, std::string("internal error: libtorch: ") + e.what_without_backtrace());
    } catch (const std::exception& e) {
      FailJob(entry, std::string("internal error: ") + e.what());
    } catch (...) {
      FailJob(entry, "internal error: unknown exception");
    }
  }
}

void JobRunner::FailJob(const std::shared_ptr<Entry>& entry, const std::string& message) {
  Change change;
  {
    MutexLock lock(mu_);
    if (IsFinal(entry->job.state())) return;
    entry->job.set_state(v1::JOB_STATE_FAILED);
    entry->job.set_message(message);
    entry->job.set_finished_unix_ms(NowUnixMs());
    change = ChangedLocked(entry);
  }
  spdlog::error("job {}: {}", change.job.id(), message);
  Commit(change);
}

void JobRunner::RunJob(const std::shared_ptr<Entry>& entry) {
  v1::JobSpec spec;
  std::string id;
  std::string dataset_path;
  {
    MutexLock lock(mu_);
    spec = entry->job.spec();
    id = entry->job.id();
    dataset_path = entry->dataset_path;
  }
  const std::string job_dir = entry->writer.dir();
  TrainConfig tc = TrainConfigFor(spec, job_dir, limits_.device);
  tc.resume = fs::exists(tc.state_path);
  tc.command_line = "Training.SubmitJob " + id + " " + MessageToJson(spec);

  // The dataset is checked and read here, on the worker, never on a gRPC thread.
  Status ready = Status::Ok();
  if (dataset_path.empty()) {  // a job from before a restart: resolve (and confine) again
    Result<std::string> resolved = ResolveDataset(limits_.data_root, spec.dataset());
    if (resolved.ok()) dataset_path = *resolved;
    else ready = resolved.status();
  }
  size_t base_labels = 0;
  if (ready.ok() && !spec.base_model().empty() && !tc.resume) {
    std::shared_ptr<ServedModel> base = registry_.Find(spec.base_model());
    if (!base) {
      ready = Status::FailedPrecondition("base_model '" + spec.base_model() + "' is no longer served");
    } else {
      tc.init_from = base->dir;
      base_labels = base->info.labels.size();
    }
  }
  if (ready.ok()) ready = CheckDataset(spec, dataset_path, limits_.data_root, base_labels, limits_.max_epochs_x_images);
  tc.data = dataset_path;

  Change change;
  bool cancelled_early = false;
  {
    MutexLock lock(mu_);
    if (!ready.ok()) {
      entry->job.set_state(v1::JOB_STATE_FAILED);
      entry->job.set_message(ready.message());
      entry->job.set_finished_unix_ms(NowUnixMs());
    } else if (entry->cancel_requested) {
      entry->job.set_state(v1::JOB_STATE_CANCELLED);
      entry->job.set_message("cancelled before it started");
      entry->job.set_finished_unix_ms(NowUnixMs());
      cancelled_early = true;
    } else {
      entry->job.set_state(v1::JOB_STATE_RUNNING);
      if (entry->job.started_unix_ms() == 0) entry->job.set_started_unix_ms(NowUnixMs());
      entry->job.set_message(tc.resume ? "resumed from its training state" : "");
      if (!tc.resume) entry->job.clear_epoch_losses();
    }
    change = ChangedLocked(entry);
  }
  Commit(change);
  if (!ready.ok()) {
    spdlog::warn("job {}: failed before training: {}", id, ready.message());
    return;
  }
  if (cancelled_early) return;
  spdlog::info("job {}: {} training model {} ({} threads, {})", id, tc.resume ? "resuming" : "starting", tc.name,
               limits_.threads, tc.bf16_convolutions ? "mixed precision: bf16 convolutions" : "fp32");
  if (!spec.precision().empty() && !ResolveBFloat16(spec.precision(), limits_.device).ok()) {
    spdlog::warn("job {}: its recorded precision is not {}; training in fp32", id, PrecisionNamesText());
  }

  auto on_progress = [&](const TrainProgress& p) {
    std::shared_ptr<const std::string> grid;
    if (p.checkpoint && !p.grid_path.empty()) {
      Result<std::string> png = ReadFileBounded(p.grid_path, kMaxPngFileBytes, "a sample grid");
      if (png.ok()) grid = std::make_shared<const std::string>(std::move(*png));
    }
    Change progress;
    {
      MutexLock lock(mu_);
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
      if (p.quality != nullptr) {
        pr->set_eval_accuracy(p.quality->accuracy);
        pr->set_eval_frechet_ratio(p.quality->frechet_ratio);
        pr->set_eval_precision(p.quality->precision);
        pr->set_eval_recall(p.quality->recall);
      }
      if (p.epoch_end && p.epoch_losses != nullptr) {
        // The trainer's record is the truth: after a resume it holds exactly the epochs its state covers.
        entry->job.clear_epoch_losses();
        for (double l : *p.epoch_losses) entry->job.add_epoch_losses(l);
      }
      if (p.checkpoint) {
        pr->set_checkpoint_epoch(static_cast<uint32_t>(p.epoch));
        if (grid) {
          entry->grid_png = grid;
          entry->grid_epoch = static_cast<uint32_t>(p.epoch);
        }
      }
      // Progress between epochs is not worth a disk write.
      progress = ChangedLocked(entry, /*persist=*/p.epoch_end);
    }
    Commit(progress);
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
  v1::Job for_publish;
  {
    MutexLock lock(mu_);
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
    for_publish = entry->job;
  }
  if (outcome.empty()) {
    Status published = PublishModel(for_publish, job_dir, limits_.models_dir, registry_);
    MutexLock lock(mu_);
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
    MutexLock lock(mu_);
    change = ChangedLocked(entry);
    state = entry->job.state();
  }
  Commit(change);
  if (state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_CANCELLED || state == v1::JOB_STATE_FAILED) {
    std::error_code ec;
    fs::remove(tc.state_path, ec);  // no longer needed; it is the biggest file of a job
    fs::remove(tc.state_path + ".tmp", ec);
    // A cancelled job's scratch weights, or those of a job whose training failed, are never
    // published (a failed publish keeps its staged model for inspection).
    if (state == v1::JOB_STATE_CANCELLED || (state == v1::JOB_STATE_FAILED && !result.ok())) {
      fs::remove_all(fs::path(tc.out), ec);
    }
  }
  spdlog::info("job {}: {}", id, outcome);
}

}  // namespace spritediff
