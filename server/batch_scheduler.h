// Iteration-level (continuous) batching for one model. One thread owns the network and a
// running batch of rows; at every denoising step it admits queued requests while rows are
// free, runs one batched forward over rows at different timesteps/samplers/guidance, advances
// every row, emits frames, and retires finished, cancelled or expired requests. Other threads
// talk to it only through Submit/Wake/Stop. No gRPC in here: callers pass callbacks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/checkpoint.h"
#include "core/sampler.h"
#include "core/status.h"

namespace spritediff {

using SteadyClock = std::chrono::steady_clock;

struct FrameData {
  int step = 0;
  int total_steps = 0;
  int t = 0;
  std::vector<std::string> images;     // PNG bytes per row
  std::vector<std::string> x0_images;  // when the job asked for x0
};

struct JobOutcome {
  Status status;
  std::vector<std::string> images;  // PNG bytes per row, on success
  double queued_ms = 0;
  double run_ms = 0;
};

// One sample request as the scheduler sees it; validated before it gets here.
struct SampleJob {
  std::string id;
  std::vector<RowSpec> rows;  // same sampler and steps; seeds differ
  int frame_every = 0;        // emit a frame every k steps; 0 = none
  bool include_x0 = false;
  SteadyClock::time_point arrived = SteadyClock::now();
  std::optional<SteadyClock::time_point> deadline;
  std::atomic<bool> cancelled{false};
  // Both run on the scheduler thread and must not block. on_done runs exactly once.
  std::function<void(FrameData&&)> on_frame;
  std::function<void(JobOutcome&&)> on_done;
};

struct SchedulerLimits {
  int max_batch_rows = 64;
  int max_queued_rows = 1024;
  int threads = 1;  // intra-op threads of the scheduler thread
};

struct SchedulerStats {
  int64_t steps = 0;           // batched forwards run
  int64_t rows_stepped = 0;    // sum over steps of rows in the batch
  int64_t jobs_done = 0;
  int queued_rows = 0;
  int running_rows = 0;
};

class BatchScheduler {
 public:
  BatchScheduler(std::string model_name, LoadedModel model, torch::Device device, SchedulerLimits limits);
  ~BatchScheduler();
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Queues a job; RESOURCE_EXHAUSTED past max_queued_rows, UNAVAILABLE once stopping.
  Status Submit(std::shared_ptr<SampleJob> job);
  // Makes the loop look at cancellations now (it also does at every step).
  void Wake();
  // Ends every queued and running job with UNAVAILABLE and joins the thread.
  void Stop();

  const ModelInfo& info() const { return info_; }
  SchedulerStats stats() const;

 private:
  struct Running {
    std::shared_ptr<SampleJob> job;
    std::vector<SampleRow> rows;
    SteadyClock::time_point admitted;
  };

  void Loop();
  void Iterate();
  // Moves queued jobs that fit into `admitted` (rows are built outside the lock).
  void TakeAdmissibleLocked(std::vector<std::shared_ptr<SampleJob>>& admitted);
  void Admit(std::vector<std::shared_ptr<SampleJob>>& admitted);
  void RetireCancelledAndExpired();
  void StepOnce();
  void FinishRunning(Running& r, Status status);

  const std::string model_name_;
  const ModelInfo info_;
  ContextUnet net_;
  const NoiseSchedule schedule_;
  const torch::Device device_;
  const SchedulerLimits limits_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<SampleJob>> queue_;  // GUARDED_BY(mu_)
  int queued_rows_ = 0;                           // GUARDED_BY(mu_)
  bool stopping_ = false;                         // GUARDED_BY(mu_)
  bool wake_ = false;                             // GUARDED_BY(mu_)
  SchedulerStats stats_;                          // GUARDED_BY(mu_)

  std::vector<Running> running_;  // owned by the loop thread
  int running_rows_ = 0;          // GUARDED_BY(mu_): rows of running_ and of jobs being admitted
  std::mutex stop_mu_;            // serialises Stop()
  std::thread thread_;
};

}  // namespace spritediff
