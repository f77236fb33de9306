// Iteration-level (continuous) batching for one model. One thread owns the network and a
// running batch of rows; at every denoising step it admits queued requests while rows are
// free, runs one batched forward over rows at different timesteps/samplers/guidance, advances
// every row, emits frames, and retires finished, cancelled or expired requests. Other threads
// talk to it only through Submit/Wake/Stop. No gRPC in here: callers pass callbacks.
//
// PNG encoding and the callbacks run on a second thread per model (the delivery thread), so
// the thread that owns the network only steps: it hands CPU copies of the rows over, in order,
// and a request's frames reach on_frame before its on_done. No exception leaves either thread;
// a callback that throws ends its request with INTERNAL, and on_done still runs exactly once.
//
// Admission: queued requests are admitted in arrival order while rows are free. A request
// that does not fit may be overtaken by later, smaller ones, but only max_overtakes times;
// after that nothing passes it, so it runs as soon as the running rows drain (no starvation),
// and a big request never blocks small ones for longer than that.
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

#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "core/checkpoint.h"
#include "core/sampler.h"
#include "core/sprite_finish.h"
#include "core/step_graphs.h"
#include "server/admission.h"

namespace spritediff {

using SteadyClock = std::chrono::steady_clock;

struct FrameData {
  int step = 0;
  int total_steps = 0;
  int t = 0;
  int skipped_before = 0;              // frames of this request skipped since the last one
                                       // (the delivery thread was max_frames_in_delivery behind)
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
  SpriteFinish finish;        // how the final sprites are finished (frames take only its alpha)
  SteadyClock::time_point arrived = SteadyClock::now();
  std::optional<SteadyClock::time_point> deadline;
  std::atomic<bool> cancelled{false};
  // Both run on the model's delivery thread (not the one that steps the network) and should
  // not block. on_done runs exactly once, also when a callback throws.
  std::function<void(FrameData&&)> on_frame;
  std::function<void(JobOutcome&&)> on_done;

  // The scheduler's own bookkeeping.
  int overtaken = 0;                        // later requests admitted before this one (under the scheduler's lock)
  std::atomic<bool> delivery_failed{false};  // on_frame threw: the request ends with INTERNAL
  std::atomic<bool> answered{false};         // on_done has been called
  std::atomic<int> frames_in_delivery{0};    // frames handed to the delivery thread, not yet delivered
  int frames_skipped = 0;                    // since the last frame handed over (stepping thread only)
};

struct SchedulerLimits {
  int max_batch_rows = 64;
  // On a CPU device, the rows the running batch is filled to before new requests wait (0 = up
  // to max_batch_rows). A step's time there grows with every row, so a full 64-row batch makes
  // every request in it slow; an empty batch still takes any request of up to max_batch_rows.
  // GPUs, where a step of 64 rows costs about what one costs, fill to max_batch_rows.
  int cpu_batch_rows = 0;
  // On a CPU device with cpu_batch_rows set: the queue's first request waits for a place within
  // cpu_batch_rows only when the running requests free one within this many steps; else (behind
  // big, long requests) it joins at the next step, up to max_batch_rows, as on a GPU, except
  // while the scheduler is refusing requests (one within kOverloadWindow): past capacity a
  // bigger batch would only slow every accepted request. 0 = it always waits for a place within
  // cpu_batch_rows. As AppConfig's.
  int cpu_batch_wait_steps = 4;
  // On a CPU device, the rows the batch fills to within kOverloadWindow of a refusal (0 =
  // cpu_batch_rows; at most cpu_batch_rows). A smaller batch steps faster: past capacity the
  // accepted requests then keep about their latency below it, and a little more is refused.
  // As AppConfig's.
  int cpu_overload_batch_rows = 0;
  int max_queued_rows = 1024;
  int threads = 1;  // intra-op threads of the scheduler thread
  int max_overtakes = 4;  // times a request that does not fit may be overtaken by later ones
  bool fold_batchnorm = false;  // fold the network's BatchNorms into its convolutions at start
  bool bf16 = false;            // run the network in bfloat16 (config precision, core/runtime.h)
  bool cuda_graphs = true;      // on a CUDA device, replay the step as CUDA graphs per batch bucket
  // Frames of one request waiting for the delivery thread (PNG encoding, on_frame). When a
  // step is faster than encoding (a GPU, many rows, x0 images), further frames of that request
  // are skipped until one is delivered, so the delivery queue stays bounded by the running
  // requests instead of growing with every step. The config's max_pending_frames.
  int max_frames_in_delivery = 4;
  // Refuse (RESOURCE_EXHAUSTED) a request that would wait longer than this for a place in the
  // batch: when the running and queued requests free one, from their steps left and the
  // measured step time (EstimateWaitForPlace), or when the oldest queued request has already
  // waited longer. Overload is then answered at once instead of by a queue whose latency grows
  // without bound. 0 = off (only max_queued_rows bounds the queue).
  double max_queue_wait_s = 0;
};

// How long after refusing a request (RESOURCE_EXHAUSTED: max_queue_wait_s, max_queued_rows) the
// scheduler counts as overloaded: on a CPU the batch then stays within cpu_overload_batch_rows.
inline constexpr std::chrono::seconds kOverloadWindow{5};

struct SchedulerStats {
  int64_t steps = 0;           // batched forwards run
  int64_t rows_stepped = 0;    // sum over steps of rows in the batch
  int64_t jobs_done = 0;
  int64_t frames_skipped = 0;  // frames not made because their request had max_frames_in_delivery waiting
  int queued_rows = 0;
  int running_rows = 0;
  bool overloaded = false;  // a request was refused within kOverloadWindow (the batch fills to
                            // cpu_overload_batch_rows on a CPU; max_queue_wait_s judges every request)
  double step_seconds = 0;  // a denoising step's time, smoothed: what max_queue_wait_s's estimate uses
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
  // Ends every queued and running job with `reason` (UNAVAILABLE "server is shutting down"
  // by default; the registry says when a model is being replaced) and joins both threads.
  void Stop(Status reason = Status::Unavailable("server is shutting down"));

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
  void TakeAdmissibleLocked(std::vector<std::shared_ptr<SampleJob>>& admitted) REQUIRES(mu_);
  // The rows admission fills the batch to now: overload_rows_ within kOverloadWindow of a
  // refusal; else fill_rows_, or max_batch_rows when the queue's first request would wait past
  // cpu_batch_wait_steps for a place (loop thread: reads running_).
  int FillRowsLocked() const REQUIRES(mu_);
  // A request was refused within kOverloadWindow.
  bool OverloadedLocked() const REQUIRES(mu_);
  void Admit(std::vector<std::shared_ptr<SampleJob>>& admitted);
  void RetireCancelledAndExpired();
  void StepOnce();
  void FinishRunning(Running& r, Status status);
  // Hands on_done to the delivery thread; `rows` ([N, C, H, W] on the CPU) are encoded there.
  void Answer(const std::shared_ptr<SampleJob>& job, JobOutcome outcome, torch::Tensor rows = {});
  // Queues work for the delivery thread (FIFO).
  void Post(std::function<void()> task) LOCKS_EXCLUDED(delivery_mu_);
  void DeliveryLoop() LOCKS_EXCLUDED(delivery_mu_);

  const std::string model_name_;
  const ModelInfo info_;
  ContextUnet net_;
  std::unique_ptr<StepGraphs> graphs_;  // CUDA devices with cuda_graphs only; the scheduler thread's
  bool graphs_warned_ = false;          // a capture failure is logged once (steps then run eagerly)
  const NoiseSchedule schedule_;
  const torch::Device device_;
  const SchedulerLimits limits_;
  // Rows admission fills the batch to: cpu_batch_rows on a CPU, else max_batch_rows; on a CPU,
  // FillRowsLocked raises it to max_batch_rows while no place frees within cpu_batch_wait_steps.
  const int fill_rows_;
  // Rows admission fills the batch to while overloaded: cpu_overload_batch_rows on a CPU where
  // set (at most fill_rows_), else fill_rows_.
  const int overload_rows_;

  mutable Mutex mu_;
  CondVar cv_;
  std::deque<std::shared_ptr<SampleJob>> queue_ GUARDED_BY(mu_);
  int queued_rows_ GUARDED_BY(mu_) = 0;
  // What the wait estimate (EstimateWaitForPlace) starts from: the running requests' rows and
  // steps left after the latest step, plus those admitted since; a step's seconds, smoothed.
  // Each entry's request: FinishRunning drops it under the same lock as its rows, so the
  // estimate never counts a request that has left (cancelled, failed to start, a failed step),
  // even when no step follows to rebuild it.
  std::vector<RowsAndSteps> running_left_ GUARDED_BY(mu_);
  std::vector<const SampleJob*> running_left_jobs_ GUARDED_BY(mu_);
  double step_s_ GUARDED_BY(mu_) = 0;
  std::optional<SteadyClock::time_point> last_refusal_ GUARDED_BY(mu_);  // the latest RESOURCE_EXHAUSTED
  bool stopping_ GUARDED_BY(mu_) = false;
  Status stop_reason_ GUARDED_BY(mu_);
  bool wake_ GUARDED_BY(mu_) = false;
  SchedulerStats stats_ GUARDED_BY(mu_);

  std::vector<Running> running_;  // owned by the loop thread
  int graphs_seen_ = 0;           // loop thread: CUDA graphs captured before the latest step
  int running_rows_ GUARDED_BY(mu_) = 0;  // rows of running_ and of jobs being admitted
  Mutex stop_mu_;                         // serialises Stop()
  std::thread thread_;

  Mutex delivery_mu_;
  CondVar delivery_cv_;
  std::deque<std::function<void()>> deliveries_ GUARDED_BY(delivery_mu_);
  bool delivery_stopping_ GUARDED_BY(delivery_mu_) = false;
  std::thread delivery_thread_;
};

}  // namespace spritediff
