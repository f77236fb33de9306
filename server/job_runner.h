// Training jobs inside the daemon. The runner owns every job: it validates specs, keeps each
// job's record in <state_dir>/jobs/<id>/job.json (atomic writes), runs up to
// max_concurrent_jobs of them on worker threads with their own intra-op thread count, and on
// success publishes the model into the models dir (one rename) and hot-adds it to the
// registry. A job trains into its own staging directory, so a crash at any point leaves the
// served models untouched; its training state file lets it resume after a restart.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "server/model_registry.h"
#include "spritediff/v1/training.pb.h"

namespace spritediff {

struct TrainingLimits {
  std::string data_root;
  std::string state_dir;
  std::string models_dir;
  std::string device = "cpu";
  int max_concurrent_jobs = 1;
  int threads = 1;  // intra-op threads per job
  bool resume_interrupted = true;
  int max_queued_jobs = 16;  // unfinished jobs (queued + running) at once; past it RESOURCE_EXHAUSTED
  int64_t max_n_feat_x_image_size = 4096;     // model width x sprite side (compute and weights size)
  int64_t max_epochs_x_images = 20000000;     // images a job may train on in total
  int finished_job_retention_h = 168;         // finished job dirs older than this go at start (0 = keep)
};

class JobRunner {
 public:
  JobRunner(TrainingLimits limits, ModelRegistry& registry);
  ~JobRunner();
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  // Reads the jobs of earlier runs (resuming or marking interrupted ones) and starts workers.
  Status Start();
  // Running jobs save their state and stop (they resume on the next Start); workers exit;
  // watchers are told the daemon is closing.
  void Stop();

  grpc::Status Submit(const v1::JobSpec& spec, v1::Job* out);
  grpc::Status Get(const std::string& id, v1::Job* out) const;
  std::vector<v1::Job> List() const;
  grpc::Status Cancel(const std::string& id, v1::Job* out);

  // What a watcher sees: the job, a version that grows with every change, and the latest
  // checkpoint's sample grid.
  struct Snapshot {
    v1::Job job;
    uint64_t version = 0;
    uint32_t grid_epoch = 0;
    std::shared_ptr<const std::string> grid_png;
    bool closing = false;  // the daemon is stopping; no further changes will come
  };
  bool GetSnapshot(const std::string& id, Snapshot* out) const;

  // listener is called (from a worker thread, never under the runner's lock) after each change
  // of the job. Returns 0 when the job is unknown.
  uint64_t Subscribe(const std::string& id, std::function<void()> listener);
  void Unsubscribe(const std::string& id, uint64_t token);

 private:
  struct Entry {
    v1::Job job;
    std::string dir;  // <state_dir>/jobs/<id>
    uint64_t version = 1;
    uint32_t grid_epoch = 0;
    std::shared_ptr<const std::string> grid_png;
    std::atomic<bool> stop{false};
    bool cancel_requested = false;
    std::map<uint64_t, std::function<void()>> listeners;
  };

  grpc::Status ValidateSpec(v1::JobSpec* spec, std::string* dataset_path) const;
  grpc::Status QueueFull() const;        // RESOURCE_EXHAUSTED at max_queued_jobs unfinished jobs
  grpc::Status QueueFullLocked() const;  // the same, mu_ held
  void WorkerLoop();
  void RunJob(const std::shared_ptr<Entry>& entry);
  // Moves the staging model into models_dir/<name> and serves it.
  Status Publish(const std::shared_ptr<Entry>& entry);
  // Marks a change: bumps the version, writes job.json; returns the listeners to call.
  std::vector<std::function<void()>> ChangedLocked(Entry& entry);
  static void Notify(const std::vector<std::function<void()>>& listeners);
  Status PersistLocked(const Entry& entry) const;

  const TrainingLimits limits_;
  ModelRegistry& registry_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // workers: the queue or stopping_ changed
  std::condition_variable done_cv_;  // a job reached a final state
  std::map<std::string, std::shared_ptr<Entry>> jobs_;  // GUARDED_BY(mu_)
  std::deque<std::string> queue_;                       // GUARDED_BY(mu_) ids waiting to run
  uint64_t next_id_ = 1;                                // GUARDED_BY(mu_)
  uint64_t next_token_ = 1;                             // GUARDED_BY(mu_)
  bool stopping_ = false;                               // GUARDED_BY(mu_)
  std::vector<std::thread> workers_;
};

}  // namespace spritediff
