#include "server/batch_scheduler.h"

#include "core/runtime.h"

#include <spdlog/spdlog.h>

namespace spritediff {

namespace {

double MillisBetween(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// PNG bytes for each [C, H, W] tensor, moved to the CPU in one go.
Result<std::vector<std::string>> EncodeRows(const std::vector<torch::Tensor>& rows) {
  torch::Tensor cpu = torch::stack(rows).to(torch::kCPU);
  std::vector<std::string> out;
  out.reserve(rows.size());
  for (int64_t i = 0; i < cpu.size(0); ++i) {
    Result<std::string> png = EncodePng(TensorToImage(cpu[i]));
    if (!png.ok()) return png.status();
    out.push_back(std::move(*png));
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
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void BatchScheduler::TakeAdmissibleLocked(std::vector<std::shared_ptr<SampleJob>>& admitted) {
  // Strict arrival order: a large request at the head is not overtaken (no starvation).
  while (!queue_.empty()) {
    const int rows = static_cast<int>(queue_.front()->rows.size());
    if (running_rows_ + rows > limits_.max_batch_rows && running_rows_ > 0) break;
    running_rows_ += rows;
    queued_rows_ -= rows;
    admitted.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
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
    std::lock_guard<std::mutex> lock(mu_);
    running_rows_ -= static_cast<int>(r.job->rows.size());
    stats_.running_rows = running_rows_;
    if (status.ok()) stats_.jobs_done++;
  }
  JobOutcome outcome;
  outcome.status = std::move(status);
  outcome.queued_ms = MillisBetween(r.job->arrived, r.admitted);
  outcome.run_ms = MillisBetween(r.admitted, SteadyClock::now());
  if (outcome.status.ok()) {
    try {
      std::vector<torch::Tensor> xs;
      for (const SampleRow& row : r.rows) xs.push_back(row.x());
      Result<std::vector<std::string>> images = EncodeRows(xs);
      if (images.ok()) outcome.images = std::move(*images);
      else outcome.status = Status::Internal("encoding the sprites failed: " + images.status().message());
    } catch (const std::exception& e) {
      outcome.status = Status::Internal(std::string("encoding the sprites failed: ") + e.what());
    }
  }
  r.job->on_done(std::move(outcome));
}

void BatchScheduler::RetireCancelledAndExpired() {
  const auto now = SteadyClock::now();
  for (size_t i = 0; i < running_.size();) {
    SampleJob& job = *running_[i].job;
    if (job.deadline && now > *job.deadline) {
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
      Result<std::vector<std::string>> images = EncodeRows(xs);
      if (images.ok()) frame.images = std::move(*images);
      if (images.ok() && job.include_x0) {
        Result<std::vector<std::string>> x0 = EncodeRows(x0s);
        if (x0.ok()) frame.x0_images = std::move(*x0);
      }
      if (images.ok()) job.on_frame(std::move(frame));  // a frame that cannot be encoded is skipped
    }
    ++i;
  }
}

void BatchScheduler::Iterate() {
  std::vector<std::shared_ptr<SampleJob>> dropped, admitted;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stopping_ || wake_ || !queue_.empty() || !running_.empty(); });
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
    job->on_done(std::move(outcome));
  }
  Admit(admitted);
  RetireCancelledAndExpired();
  if (!running_.empty()) StepOnce();
}

void BatchScheduler::Loop() {
  SetThreadIntraOpThreads(limits_.threads);
  torch::NoGradGuard no_grad;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
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
