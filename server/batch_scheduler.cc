#include "server/batch_scheduler.h"

#include "core/runtime.h"
#include "server/admission.h"

#include <algorithm>
#include <cstdio>

#include <spdlog/spdlog.h>

namespace spritediff {

namespace {

double MillisBetween(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// One CPU tensor [N, C, H, W] holding copies of the rows (the network's tensors move on).
torch::Tensor CpuCopy(const std::vector<torch::Tensor>& rows) { return torch::stack(rows).to(torch::kCPU); }

// PNG bytes for each row of a CPU tensor [N, C, H, W], each finished as `finish` says.
Result<std::vector<std::string>> EncodeRows(const torch::Tensor& cpu, const SpriteFinish& finish) {
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(cpu.size(0)));
  for (int64_t i = 0; i < cpu.size(0); ++i) {
    Result<std::string> png = EncodePng(FinishSprite(cpu[i], finish));
    if (!png.ok()) return png.status();
    out.push_back(std::move(*png));
  }
  return out;
}

// The steps a job runs (its rows run together and end with its longest one).
int JobSteps(const SampleJob& job) {
  int steps = 0;
  for (const RowSpec& r : job.rows) steps = std::max(steps, r.steps);
  return steps;
}

// The steps a running request has left (its rows end together, with its longest one).
int StepsLeft(const std::vector<SampleRow>& rows) {
  int left = 0;
  for (const SampleRow& row : rows) left = std::max(left, row.steps_total() - row.steps_done());
  return left;
}

}  // namespace

BatchScheduler::BatchScheduler(std::string model_name, LoadedModel model, torch::Device device,
                               SchedulerLimits limits)
    : model_name_(std::move(model_name)),
      info_(model.info),
      net_(model.net),
      schedule_(model.info.schedule),
      device_(device),
      limits_(limits),
      fill_rows_(device.is_cpu() && limits.cpu_batch_rows > 0 ? std::min(limits.cpu_batch_rows, limits.max_batch_rows)
                                                               : limits.max_batch_rows),
      overload_rows_(device.is_cpu() && limits.cpu_overload_batch_rows > 0 ? std::min(limits.cpu_overload_batch_rows, fill_rows_)
                                                                        : fill_rows_) {
  net_->to(device_);
  // The scheduler owns this network (the registry hands it over), so folding cannot surprise a saver.
  ConvertForInference(net_, device_, limits_.fold_batchnorm, limits_.bf16);
  if (limits_.cuda_graphs && device_.is_cuda() && StepGraphs::CompiledWithCuda()) {
    graphs_ = std::make_unique<StepGraphs>(net_, device_, limits_.max_batch_rows);
  }
  delivery_thread_ = std::thread([this] { DeliveryLoop(); });
  thread_ = std::thread([this] { Loop(); });
}

BatchScheduler::~BatchScheduler() { Stop(); }

Status BatchScheduler::Submit(std::shared_ptr<SampleJob> job) {
  const int rows = static_cast<int>(job->rows.size());
  {
    MutexLock lock(mu_);
    if (stopping_) return stop_reason_;
    if (queued_rows_ + rows > limits_.max_queued_rows) {
      last_refusal_ = SteadyClock::now();
      return Status::ResourceExhausted("queue full: " + std::to_string(queued_rows_) + " rows waiting for model '" +
                                       model_name_ + "', limit max_queued_rows=" +
                                       std::to_string(limits_.max_queued_rows) + "; retry later");
    }
    // With room in the batch (within fill_rows_, the CPU fill where one is set; overload_rows_
    // while overloaded) the request starts at the next step; else it waits for places to free.
    // Two signs of a wait past the limit: the oldest queued request has already waited that
    // long (measured), or the running and queued requests free a place that late (estimated
    // from their steps left and the measured step time; catches a burst before anything has
    // aged). Below capacity an empty queue admits at once (on a CPU the first request in it may
    // join past cpu_batch_rows); while overloaded it does not, so the estimate also holds for
    // the request that arrives at a full batch.
    const bool overloaded = OverloadedLocked();
    const int fill = overloaded ? overload_rows_ : fill_rows_;
    if (limits_.max_queue_wait_s > 0 && (overloaded || !queue_.empty()) && running_rows_ + queued_rows_ + rows > fill) {
      const double waited_s =
          queue_.empty() ? 0 : std::chrono::duration<double>(SteadyClock::now() - queue_.front()->arrived).count();
      std::vector<RowsAndSteps> ahead;
      ahead.reserve(queue_.size());
      for (const auto& queued : queue_) ahead.push_back({static_cast<int>(queued->rows.size()), JobSteps(*queued)});
      const double wait_s = EstimateWaitForPlace(running_left_, ahead, rows, fill, step_s_);
      if (waited_s > limits_.max_queue_wait_s || wait_s > limits_.max_queue_wait_s) {
        char msg[320];
        std::snprintf(msg, sizeof(msg), "server busy: model '%s' would give this request a place in %.1f s (the "
                      "oldest queued request has waited %.1f s), limit max_queue_wait_s=%g; retry later",
                      model_name_.c_str(), wait_s, waited_s, limits_.max_queue_wait_s);
        // A request bigger than the overload fill waits for an empty batch whatever the load, so
        // its refusal is no sign of overload: counting it would keep a daemon below capacity in
        // overload for as long as such requests keep coming.
        if (rows <= overload_rows_) last_refusal_ = SteadyClock::now();
        return Status::ResourceExhausted(msg);
      }
    }
    queue_.push_back(std::move(job));
    queued_rows_ += rows;
    stats_.queued_rows = queued_rows_;
  }
  cv_.NotifyOne();
  return Status::Ok();
}

bool BatchScheduler::OverloadedLocked() const {
  return last_refusal_ && SteadyClock::now() - *last_refusal_ < kOverloadWindow;
}

void BatchScheduler::Wake() {
  {
    MutexLock lock(mu_);
    wake_ = true;
  }
  cv_.NotifyOne();
}

void BatchScheduler::Stop(Status reason) {
  MutexLock stop_lock(stop_mu_);
  {
    MutexLock lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      stop_reason_ = std::move(reason);
    }
  }
  cv_.NotifyOne();
  if (thread_.joinable()) thread_.join();
  // The loop has answered everyone; the delivery thread finishes what it was given, then ends.
  {
    MutexLock lock(delivery_mu_);
    delivery_stopping_ = true;
  }
  delivery_cv_.NotifyAll();
  if (delivery_thread_.joinable()) delivery_thread_.join();
}

SchedulerStats BatchScheduler::stats() const {
  MutexLock lock(mu_);
  SchedulerStats st = stats_;
  st.overloaded = OverloadedLocked();
  st.step_seconds = step_s_;
  return st;
}

void BatchScheduler::Post(std::function<void()> task) {
  {
    MutexLock lock(delivery_mu_);
    deliveries_.push_back(std::move(task));
  }
  delivery_cv_.NotifyOne();
}

void BatchScheduler::DeliveryLoop() {
  while (true) {
    std::function<void()> task;
    {
      MutexLock lock(delivery_mu_);
      while (deliveries_.empty() && !delivery_stopping_) delivery_cv_.Wait(delivery_mu_);
      if (deliveries_.empty()) return;  // stopping and drained
      task = std::move(deliveries_.front());
      deliveries_.pop_front();
    }
    try {
      task();
    } catch (const std::exception& e) {  // tasks guard their callbacks; this is the last resort
      spdlog::error("model {}: delivery failed: {}", model_name_, e.what());
    } catch (...) {
      spdlog::error("model {}: delivery failed with an unknown exception", model_name_);
    }
  }
}

void BatchScheduler::Answer(const std::shared_ptr<SampleJob>& job, JobOutcome outcome, torch::Tensor rows) {
  Post([this, job, outcome = std::move(outcome), rows]() mutable {
    if (outcome.status.ok() && rows.defined()) {
      try {
        Result<std::vector<std::string>> images = EncodeRows(rows, job->finish);
        if (images.ok()) outcome.images = std::move(*images);
        else outcome.status = Status::Internal("encoding the sprites failed: " + images.status().message());
      } catch (const std::exception& e) {
        outcome.status = Status::Internal(std::string("encoding the sprites failed: ") + e.what());
      }
    }
    if (job->answered.exchange(true)) return;  // exactly once
    try {
      job->on_done(std::move(outcome));
    } catch (const std::exception& e) {
      spdlog::error("model {}: request {}: on_done threw: {}", model_name_, job->id, e.what());
    } catch (...) {
      spdlog::error("model {}: request {}: on_done threw", model_name_, job->id);
    }
  });
}

int BatchScheduler::FillRowsLocked() const {
  // Refusing requests means the load is past what the daemon serves. Joining past
  // cpu_batch_rows would then keep the batch near max_batch_rows and slow every accepted
  // request (at 120% of capacity one sweep's p50 went from 1.6 to 2.5 s when it did); a batch
  // held at cpu_overload_batch_rows runs each step faster for little less throughput (docs/performance.md,
  // "Evidence for the CPU batch settings"), so accepted requests keep about the latency they have below capacity,
  // and the excess queues, and is refused, instead. Below capacity nothing is refused.
  if (OverloadedLocked()) return overload_rows_;
  if (fill_rows_ >= limits_.max_batch_rows || limits_.cpu_batch_wait_steps <= 0 || queue_.empty()) return fill_rows_;
  const int head = static_cast<int>(queue_.front()->rows.size());
  // A head that fits nowhere but an empty batch gains nothing from a fuller one, and the rows
  // behind it would overtake it into a batch past cpu_batch_rows.
  if (running_rows_ + head > limits_.max_batch_rows) return fill_rows_;
  const auto now = SteadyClock::now();
  // Rows the running requests free within cpu_batch_wait_steps steps (a request's rows finish
  // together with its last one; a cancelled or expired one is retired at the next step).
  int freed = 0;
  for (const Running& r : running_) {
    const int left = StepsLeft(r.rows);
    const bool ending = r.job->cancelled.load() || (r.job->deadline && now > *r.job->deadline);
    if (ending || left <= limits_.cpu_batch_wait_steps) freed += static_cast<int>(r.rows.size());
  }
  // Waits when a place within cpu_batch_rows frees up in time, or the batch empties in time (a
  // head bigger than cpu_batch_rows then gets the empty batch, as without this rule).
  const int staying = running_rows_ - freed;
  return staying + head <= fill_rows_ || staying == 0 ? fill_rows_ : limits_.max_batch_rows;
}

void BatchScheduler::TakeAdmissibleLocked(std::vector<std::shared_ptr<SampleJob>>& admitted) {
  std::vector<QueuedRows> sizes;
  sizes.reserve(queue_.size());
  for (const auto& job : queue_) sizes.push_back({static_cast<int>(job->rows.size()), job->overtaken});
  const std::vector<size_t> picks = PickAdmissions(sizes, running_rows_, FillRowsLocked(), limits_.max_overtakes);
  for (size_t i = 0; i < queue_.size(); ++i) queue_[i]->overtaken = sizes[i].overtaken;
  for (auto it = picks.rbegin(); it != picks.rend(); ++it) {
    const int rows = static_cast<int>(queue_[*it]->rows.size());
    running_rows_ += rows;
    queued_rows_ -= rows;
    running_left_.push_back({rows, JobSteps(*queue_[*it])});
    running_left_jobs_.push_back(queue_[*it].get());
    admitted.push_back(std::move(queue_[*it]));
    queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(*it));
  }
  std::reverse(admitted.begin(), admitted.end());  // arrival order
  stats_.queued_rows = queued_rows_;
  stats_.running_rows = running_rows_;
}

void BatchScheduler::Admit(std::vector<std::shared_ptr<SampleJob>>& admitted) {
  for (auto& job : admitted) {
    Running r;
    r.job = job;
    r.admitted = SteadyClock::now();
    try {
      r.rows.reserve(job->rows.size());
      for (const RowSpec& spec : job->rows) r.rows.emplace_back(spec, schedule_, info_.arch, device_);
    } catch (const std::exception& e) {
      spdlog::error("model {}: cannot start request {}: {}", model_name_, job->id, e.what());
      FinishRunning(r, Status::Internal(std::string("cannot start sampling: ") + e.what()));
      continue;
    }
    running_.push_back(std::move(r));
  }
  admitted.clear();
}

void BatchScheduler::FinishRunning(Running& r, Status status) {
  {
    MutexLock lock(mu_);
    running_rows_ -= static_cast<int>(r.job->rows.size());
    stats_.running_rows = running_rows_;
    for (size_t i = 0; i < running_left_jobs_.size(); ++i) {
      if (running_left_jobs_[i] != r.job.get()) continue;
      running_left_.erase(running_left_.begin() + static_cast<std::ptrdiff_t>(i));
      running_left_jobs_.erase(running_left_jobs_.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
    if (status.ok()) stats_.jobs_done++;
  }
  JobOutcome outcome;
  outcome.status = std::move(status);
  outcome.queued_ms = MillisBetween(r.job->arrived, r.admitted);
  outcome.run_ms = MillisBetween(r.admitted, SteadyClock::now());
  torch::Tensor rows;
  if (outcome.status.ok()) {
    try {
      std::vector<torch::Tensor> xs;
      for (const SampleRow& row : r.rows) xs.push_back(row.x());
      rows = CpuCopy(xs);
    } catch (const std::exception& e) {
      outcome.status = Status::Internal(std::string("copying the sprites failed: ") + e.what());
    }
  }
  Answer(r.job, std::move(outcome), rows);
}

void BatchScheduler::RetireCancelledAndExpired() {
  const auto now = SteadyClock::now();
  for (size_t i = 0; i < running_.size();) {
    SampleJob& job = *running_[i].job;
    if (job.delivery_failed.load()) {
      FinishRunning(running_[i], Status::Internal("delivering a frame failed; the request was stopped"));
    } else if (job.deadline && now > *job.deadline) {
      FinishRunning(running_[i], Status::DeadlineExceeded("deadline passed after " +
                                                          std::to_string(running_[i].rows.front().steps_done()) +
                                                          " of " + std::to_string(running_[i].rows.front().steps_total()) +
                                                          " steps"));
    } else if (job.cancelled.load()) {
      FinishRunning(running_[i], Status::Cancelled("request cancelled"));
    } else {
      ++i;
      continue;
    }
    running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

void BatchScheduler::StepOnce() {
  std::vector<SampleRow*> rows;
  bool want_x0 = false;
  for (Running& r : running_) {
    const SampleJob& job = *r.job;
    const int next = r.rows.front().steps_done() + 1;
    if (job.include_x0 && job.frame_every > 0 && next % job.frame_every == 0) want_x0 = true;
    for (SampleRow& row : r.rows) rows.push_back(&row);
  }
  const auto step_start = SteadyClock::now();
  try {
    DenoiseStep(net_, schedule_, rows, want_x0, graphs_.get());
    WaitForDevice(device_);  // the step time, which max_queue_wait_s's estimate works from, is the device's
    if (graphs_ != nullptr && !graphs_warned_ && !graphs_->capture_error().empty()) {
      spdlog::warn("model '{}': {}; denoising steps run eagerly from now on", model_name_, graphs_->capture_error());
      graphs_warned_ = true;
    }
  } catch (const std::exception& e) {
    spdlog::error("model {}: denoising step failed: {}", model_name_, e.what());
    for (Running& r : running_) FinishRunning(r, Status::Internal(std::string("denoising step failed: ") + e.what()));
    running_.clear();
    return;
  }
  {
    const double seconds = std::chrono::duration<double>(SteadyClock::now() - step_start).count();
    // A step that captured a CUDA graph, or the first one (lazy initialisation), is no sample of
    // the step time; one sample moves the estimate at most to 4x (a burst that fills the batch
    // still raises it within a few steps).
    const int captured = graphs_ != nullptr ? graphs_->captured_graphs() : 0;
    const bool captured_now = captured != graphs_seen_;
    graphs_seen_ = captured;
    std::vector<RowsAndSteps> left;
    std::vector<const SampleJob*> jobs;
    left.reserve(running_.size());
    jobs.reserve(running_.size());
    for (const Running& r : running_) {
      left.push_back({static_cast<int>(r.rows.size()), StepsLeft(r.rows)});
      jobs.push_back(r.job.get());
    }
    MutexLock lock(mu_);
    const bool sample = stats_.steps > 0 && !captured_now;
    stats_.steps++;
    stats_.rows_stepped += static_cast<int64_t>(rows.size());
    if (sample) step_s_ = step_s_ > 0 ? 0.8 * step_s_ + 0.2 * std::min(seconds, 4 * step_s_) : seconds;
    running_left_ = std::move(left);
    running_left_jobs_ = std::move(jobs);
  }
  for (size_t i = 0; i < running_.size();) {
    Running& r = running_[i];
    const SampleRow& lead = r.rows.front();
    if (lead.done()) {
      FinishRunning(r, Status::Ok());
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    const std::shared_ptr<SampleJob>& job = r.job;
    if (job->frame_every > 0 && lead.steps_done() % job->frame_every == 0 && job->on_frame) {
      if (job->frames_in_delivery.load() >= limits_.max_frames_in_delivery) {
        ++job->frames_skipped;
        MutexLock lock(mu_);
        stats_.frames_skipped++;
        ++i;
        continue;
      }
      FrameData frame;
      frame.step = lead.steps_done();
      frame.total_steps = lead.steps_total();
      frame.t = lead.current_t();
      torch::Tensor xs, x0s;
      try {
        std::vector<torch::Tensor> x, x0;
        for (const SampleRow& row : r.rows) {
          x.push_back(row.x());
          if (job->include_x0) x0.push_back(row.x0_pred());
        }
        xs = CpuCopy(x);
        if (job->include_x0) x0s = CpuCopy(x0);
      } catch (const std::exception& e) {
        spdlog::warn("model {}: request {}: frame skipped: {}", model_name_, job->id, e.what());
        ++i;
        continue;
      }
      frame.skipped_before = job->frames_skipped;
      job->frames_skipped = 0;
      job->frames_in_delivery.fetch_add(1);
      Post([this, job, frame = std::move(frame), xs, x0s]() mutable {
        struct Delivered {  // however the task ends
          SampleJob& job;
          ~Delivered() { job.frames_in_delivery.fetch_sub(1); }
        } delivered{*job};
        if (job->answered.load() || job->delivery_failed.load()) return;
        // A frame that cannot be encoded is skipped; the request goes on.
        try {
          SpriteFinish frame_finish;  // frames show alpha as the Result will, but no palette
          frame_finish.alpha = job->finish.alpha;
          Result<std::vector<std::string>> images = EncodeRows(xs, frame_finish);
          if (!images.ok()) return;
          frame.images = std::move(*images);
          if (x0s.defined()) {
            Result<std::vector<std::string>> x0 = EncodeRows(x0s, frame_finish);
            if (x0.ok()) frame.x0_images = std::move(*x0);
          }
        } catch (const std::exception& e) {
          spdlog::warn("model {}: request {}: frame skipped: {}", model_name_, job->id, e.what());
          return;
        }
        try {
          job->on_frame(std::move(frame));
        } catch (const std::exception& e) {
          spdlog::error("model {}: request {}: on_frame threw: {}", model_name_, job->id, e.what());
          job->delivery_failed.store(true);
          Wake();
        } catch (...) {
          job->delivery_failed.store(true);
          Wake();
        }
      });
    }
    ++i;
  }
}

void BatchScheduler::Iterate() {
  std::vector<std::shared_ptr<SampleJob>> dropped, admitted;
  {
    MutexLock lock(mu_);
    while (!stopping_ && !wake_ && queue_.empty() && running_.empty()) cv_.Wait(mu_);
    wake_ = false;
    if (stopping_) return;
    const auto now = SteadyClock::now();
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->cancelled.load() || ((*it)->deadline && now > *(*it)->deadline)) {
        queued_rows_ -= static_cast<int>((*it)->rows.size());
        dropped.push_back(*it);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    TakeAdmissibleLocked(admitted);
  }
  for (auto& job : dropped) {
    JobOutcome outcome;
    const bool expired = job->deadline && SteadyClock::now() > *job->deadline;
    outcome.status = expired ? Status::DeadlineExceeded("deadline passed while queued")
                             : Status::Cancelled("request cancelled while queued");
    outcome.queued_ms = MillisBetween(job->arrived, SteadyClock::now());
    Answer(job, std::move(outcome));
  }
  Admit(admitted);
  RetireCancelledAndExpired();
  if (!running_.empty()) StepOnce();
}

void BatchScheduler::Loop() {
  try {
    SetThreadIntraOpThreads(limits_.threads);
  } catch (const std::exception& e) {
    spdlog::error("model {}: cannot set the thread count: {}", model_name_, e.what());
  }
  torch::NoGradGuard no_grad;
  Status reason;
  while (true) {
    {
      MutexLock lock(mu_);
      if (stopping_) {
        reason = stop_reason_;
        break;
      }
    }
    try {
      Iterate();
    } catch (const std::exception& e) {
      // Whatever failed, no request is left without an answer and the daemon lives on.
      spdlog::error("model {}: scheduler step failed: {}", model_name_, e.what());
      for (Running& r : running_) FinishRunning(r, Status::Internal(std::string("sampling failed: ") + e.what()));
      running_.clear();
    }
  }
  // Stopping: nothing is left behind without an answer.
  for (Running& r : running_) FinishRunning(r, reason);
  running_.clear();
  std::deque<std::shared_ptr<SampleJob>> queued;
  {
    MutexLock lock(mu_);
    queued.swap(queue_);
    queued_rows_ = 0;
    stats_.queued_rows = 0;
  }
  for (auto& job : queued) {
    JobOutcome outcome;
    outcome.status = reason;
    outcome.queued_ms = MillisBetween(job->arrived, SteadyClock::now());
    Answer(job, std::move(outcome));
  }
}

}  // namespace spritediff
