#include "server/batch_scheduler.h"

#include <spdlog/spdlog.h>

namespace spritediff {

namespace {

double MillisBetween(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// PNG bytes for each [C, H, W] tensor, moved to the CPU in one go.
std::vector<std::string> EncodeRows(const std::vector<torch::Tensor>& rows) {
  torch::Tensor cpu = torch::stack(rows).to(torch::kCPU);
  std::vector<std::string> out;
  out.reserve(rows.size());
  for (int64_t i = 0; i < cpu.size(0); ++i) {
    Result<std::string> png = EncodePng(TensorToImage(cpu[i]));
    out.push_back(png.ok() ? std::move(*png) : std::string());
  }
  return out;
}

}  // namespace

BatchScheduler::BatchScheduler(std::string model_name, LoadedModel model, torch::Device device,
                               SchedulerLimits limits)
    : model_name_(std::move(model_name)),
      info_(model.info),
      net_(model.net),
      schedule_(model.info.schedule),
      device_(device),
      limits_(limits) {
  net_->to(device_);
  net_->eval();
  thread_ = std::thread([this] { Loop(); });
}

BatchScheduler::~BatchScheduler() { Stop(); }

Status BatchScheduler::Submit(std::shared_ptr<SampleJob> job) {
  const int rows = static_cast<int>(job->rows.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Status::Unavailable("server is shutting down");
    if (queued_rows_ + rows > limits_.max_queued_rows) {
      return Status::ResourceExhausted("queue full: " + std::to_string(queued_rows_) + " rows waiting for model '" +
                                       model_name_ + "', limit max_queued_rows=" +
                                       std::to_string(limits_.max_queued_rows) + "; retry later");
    }
    queue_.push_back(std::move(job));
    queued_rows_ += rows;
  }
  cv_.notify_one();
  return Status::Ok();
}

void BatchScheduler::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  cv_.notify_one();
}

void BatchScheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void BatchScheduler::AdmitLocked() {
  int running_rows = 0;
  for (const Running& r : running_) running_rows += static_cast<int>(r.rows.size());
  // Strict arrival order: a large request at the head is not overtaken (no starvation).
  while (!queue_.empty()) {
    const std::shared_ptr<SampleJob>& job = queue_.front();
    const int rows = static_cast<int>(job->rows.size());
    if (running_rows + rows > limits_.max_batch_rows && running_rows > 0) break;
    Running r;
    r.job = job;
    r.admitted = SteadyClock::now();
    r.rows.reserve(rows);
    for (const RowSpec& spec : job->rows) r.rows.emplace_back(spec, schedule_, info_.arch, device_);
    running_rows += rows;
    queued_rows_ -= rows;
    running_.push_back(std::move(r));
    queue_.pop_front();
  }
  stats_.queued_rows = queued_rows_;
  stats_.running_rows = running_rows;
}

void BatchScheduler::FinishRunning(Running& r, Status status) {
  JobOutcome outcome;
  outcome.status = std::move(status);
  outcome.queued_ms = MillisBetween(r.job->arrived, r.admitted);
  outcome.run_ms = MillisBetween(r.admitted, SteadyClock::now());
  if (outcome.status.ok()) {
    std::vector<torch::Tensor> xs;
    for (const SampleRow& row : r.rows) xs.push_back(row.x());
    outcome.images = EncodeRows(xs);
  }
  r.job->on_done(std::move(outcome));
}

void BatchScheduler::RetireCancelledAndExpired() {
  const auto now = SteadyClock::now();
  for (size_t i = 0; i < running_.size();) {
    SampleJob& job = *running_[i].job;
    if (job.cancelled.load()) {
      FinishRunning(running_[i], Status::Cancelled("request cancelled"));
    } else if (job.deadline && now > *job.deadline) {
      FinishRunning(running_[i], Status::DeadlineExceeded("deadline passed after " +
                                                          std::to_string(running_[i].rows.front().steps_done()) +
                                                          " of " + std::to_string(running_[i].rows.front().steps_total()) +
                                                          " steps"));
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
  try {
    DenoiseStep(net_, schedule_, rows, want_x0);
  } catch (const std::exception& e) {
    spdlog::error("model {}: denoising step failed: {}", model_name_, e.what());
    for (Running& r : running_) FinishRunning(r, Status::Internal(std::string("denoising step failed: ") + e.what()));
    running_.clear();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.steps++;
    stats_.rows_stepped += static_cast<int64_t>(rows.size());
  }
  for (size_t i = 0; i < running_.size();) {
    Running& r = running_[i];
    const SampleRow& lead = r.rows.front();
    if (lead.done()) {
      FinishRunning(r, Status::Ok());
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      std::lock_guard<std::mutex> lock(mu_);
      stats_.jobs_done++;
      continue;
    }
    const SampleJob& job = *r.job;
    if (job.frame_every > 0 && lead.steps_done() % job.frame_every == 0 && job.on_frame) {
      FrameData frame;
      frame.step = lead.steps_done();
      frame.total_steps = lead.steps_total();
      frame.t = lead.current_t();
      std::vector<torch::Tensor> xs, x0s;
      for (const SampleRow& row : r.rows) {
        xs.push_back(row.x());
        if (job.include_x0) x0s.push_back(row.x0_pred());
      }
      frame.images = EncodeRows(xs);
      if (job.include_x0) frame.x0_images = EncodeRows(x0s);
      job.on_frame(std::move(frame));
    }
    ++i;
  }
}

void BatchScheduler::Loop() {
  torch::NoGradGuard no_grad;
  while (true) {
    std::vector<std::shared_ptr<SampleJob>> dropped;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || wake_ || !queue_.empty() || !running_.empty(); });
      wake_ = false;
      if (stopping_) break;
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
      AdmitLocked();
    }
    for (auto& job : dropped) {
      JobOutcome outcome;
      outcome.status = job->cancelled.load() ? Status::Cancelled("request cancelled while queued")
                                             : Status::DeadlineExceeded("deadline passed while queued");
      outcome.queued_ms = MillisBetween(job->arrived, SteadyClock::now());
      job->on_done(std::move(outcome));
    }
    RetireCancelledAndExpired();
    if (!running_.empty()) StepOnce();
  }
  // Stopping: nothing is left behind without an answer.
  for (Running& r : running_) FinishRunning(r, Status::Unavailable("server is shutting down"));
  running_.clear();
  std::deque<std::shared_ptr<SampleJob>> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(queue_);
    queued_rows_ = 0;
  }
  for (auto& job : queued) {
    JobOutcome outcome;
    outcome.status = Status::Unavailable("server is shutting down");
    job->on_done(std::move(outcome));
  }
}

}  // namespace spritediff
