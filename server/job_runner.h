// Training jobs inside the daemon. The runner owns every job: it queues planned jobs
// (server/training_plan.h), keeps each job's record through the JobStore (job.json, written
// after the runner's lock is released), runs up to max_concurrent_jobs of them on worker
// threads with their own intra-op thread count, and on success publishes the model
// (server/model_publisher.h). It speaks core Status; the Training service converts to gRPC.
// No call blocks on training: Submit queues, Cancel asks the job to stop and returns.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "server/job_store.h"
#include "server/training_plan.h"
#include "spritediff/v1/training.pb.h"

namespace spritediff {

class ModelRegistry;

class JobRunner {
 public:
  JobRunner(TrainingLimits limits, ModelRegistry& registry);
  ~JobRunner();
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  // Reads the jobs of earlier runs (resuming or marking interrupted ones) and starts workers.
  Status Start() LOCKS_EXCLUDED(mu_);
  // Running jobs save their state and stop (they resume on the next Start); workers exit;
  // watchers are told the daemon is closing.
  void Stop() LOCKS_EXCLUDED(mu_);

  // Cheap checks of a spec (no dataset read): FAILED_PRECONDITION when training is disabled,
  // then PlanTraining.
  Result<TrainingPlan> Plan(const v1::JobSpec& spec) const;
  // Queues a planned job and returns its record (QUEUED). The dataset is checked and read by
  // the worker; a bad one makes the job FAILED with the path and the reason.
  Status Submit(TrainingPlan plan, v1::Job* out) LOCKS_EXCLUDED(mu_);
  Status Get(const std::string& id, v1::Job* out) const LOCKS_EXCLUDED(mu_);
  std::vector<v1::Job> List() const LOCKS_EXCLUDED(mu_);
  // A queued job becomes CANCELLED at once; a running one gets cancel_requested and stops at
  // its next optimizer step (watchers see CANCELLED then). Never waits for the trainer.
  Status Cancel(const std::string& id, v1::Job* out) LOCKS_EXCLUDED(mu_);

  // What a watcher sees: the job, a version that grows with every change, and the latest
  // checkpoint's sample grid.
  struct Snapshot {
    v1::Job job;
    uint64_t version = 0;
    uint32_t grid_epoch = 0;
    std::shared_ptr<const std::string> grid_png;
    bool closing = false;  // the daemon is stopping; no further changes will come
  };
  bool GetSnapshot(const std::string& id, Snapshot* out) const LOCKS_EXCLUDED(mu_);

  // Workers running a job now (training, or reading a dataset before it).
  int busy_workers() const { return busy_workers_.load(); }

  // listener is called (never under the runner's lock) after each change of the job.
  // Returns 0 when the job is unknown.
  uint64_t Subscribe(const std::string& id, std::function<void()> listener) LOCKS_EXCLUDED(mu_);
  void Unsubscribe(const std::string& id, uint64_t token) LOCKS_EXCLUDED(mu_);

 private:
  // One job. Fields other than stop and writer are guarded by the runner's mu_.
  struct Entry {
    explicit Entry(const std::string& dir) : writer(dir) {}
    v1::Job job;
    std::string dataset_path;  // from the plan; empty after a restart (resolved again)
    uint64_t version = 1;
    uint32_t grid_epoch = 0;
    std::shared_ptr<const std::string> grid_png;
    std::atomic<bool> stop{false};
    bool cancel_requested = false;
    std::map<uint64_t, std::function<void()>> listeners;
    RecordWriter writer;  // job.json; ordered by version, written outside mu_
  };
  // A change made under mu_ and published after it: the record to write and who to tell.
  struct Change {
    std::shared_ptr<Entry> entry;
    v1::Job job;
    uint64_t version = 0;
    bool persist = true;
    std::vector<std::function<void()>> listeners;
  };

  // Bumps the version and captures the record and the listeners; Commit them after unlocking.
  Change ChangedLocked(const std::shared_ptr<Entry>& entry, bool persist = true) REQUIRES(mu_);
  static void Commit(const Change& change);

  void WorkerLoop() LOCKS_EXCLUDED(mu_);
  void RunJob(const std::shared_ptr<Entry>& entry) LOCKS_EXCLUDED(mu_);
  // Ends a job that threw: FAILED with the reason, listeners told.
  void FailJob(const std::shared_ptr<Entry>& entry, const std::string& message) LOCKS_EXCLUDED(mu_);
  Status StartLocked(std::vector<Change>* changes) REQUIRES(mu_);

  const TrainingLimits limits_;
  ModelRegistry& registry_;
  const JobStore store_;

  std::atomic<int> busy_workers_{0};
  mutable Mutex mu_;
  CondVar cv_;  // workers: the queue or stopping_ changed
  std::map<std::string, std::shared_ptr<Entry>> jobs_ GUARDED_BY(mu_);
  std::deque<std::string> queue_ GUARDED_BY(mu_);  // ids waiting to run
  uint64_t next_id_ GUARDED_BY(mu_) = 1;
  uint64_t next_token_ GUARDED_BY(mu_) = 1;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;  // started by Start, joined by Stop (one control thread)
};

}  // namespace spritediff
