#include "server/sprites_service.h"

#include <spdlog/spdlog.h>

#include <deque>
#include <mutex>
#include <optional>

#include "common/client_text.h"
#include "server/sample_plan.h"

namespace spritediff {

namespace {

// One Sample call. Events come from the model's delivery thread (PNGs already encoded, never
// the thread that steps the network); at most one write is in
// flight; frames for a slow reader are dropped oldest-first past max_pending_frames, the
// Result never. Finish is called exactly once: directly for a request that never reached the
// scheduler, otherwise after the job's on_done, so the scheduler never outlives the reactor.
class SampleReactor : public grpc::ServerWriteReactor<v1::SampleEvent> {
 public:
  SampleReactor(std::string id, int max_pending_frames, RequestMetrics& metrics)
      : id_(std::move(id)), max_pending_(max_pending_frames), metrics_(metrics) {}

  // model: a served model's name, or kUnknownModelLabel; never a client's unchecked string.
  void FinishNow(const grpc::Status& status, const std::string& model) {
    spdlog::info("request {} model {} status {} ({})", id_, model.empty() ? "-" : model, CodeName(status.error_code()),
                 status.error_message());
    metrics_.Record(model.empty() ? "-" : model, CodeName(status.error_code()), 0, 0);
    Finish(status);
  }

  void Run(std::shared_ptr<SampleJob> job, std::shared_ptr<ServedModel> served, int steps) {
    job_ = job;
    served_ = served;  // keeps the scheduler alive for as long as this call may wake it
    BatchScheduler* scheduler = served->scheduler.get();
    const std::string model = served->name;
    job->on_frame = [this](FrameData&& f) { OnFrame(std::move(f)); };
    job->on_done = [this, model, steps, rows = job->rows.size()](JobOutcome&& o) { OnJobDone(std::move(o), model, rows, steps); };
    Status submitted = scheduler->Submit(job);
    if (!submitted.ok()) {
      job_.reset();
      FinishNow(ToGrpc(submitted), model);
    }
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok && !broken_) {
      broken_ = true;  // the client is gone: stop sending, let the scheduler drop the rows
      frames_.clear();
      result_.reset();
      if (job_done_) {
        if (!final_status_) final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      } else {
        job_->cancelled.store(true);
        served_->scheduler->Wake();
      }
    }
    if (ok && wrote_result_ && !final_status_) final_status_ = grpc::Status::OK;
    Pump(lock);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (job_ && !job_done_) {
      job_->cancelled.store(true);
      served_->scheduler->Wake();
    }
  }

  void OnDone() override { delete this; }

 private:
  void OnFrame(FrameData&& f) {
    std::unique_lock<std::mutex> lock(mu_);
    if (broken_) return;
    v1::SampleEvent ev;
    v1::Frame* frame = ev.mutable_frame();
    frame->set_step(f.step);
    frame->set_total_steps(f.total_steps);
    frame->set_t(f.t);
    for (auto& png : f.images) frame->add_images(std::move(png));
    for (auto& png : f.x0_images) frame->add_x0_images(std::move(png));
    frame->set_dropped_before(static_cast<uint32_t>(f.skipped_before));  // frames the scheduler skipped
    frames_.push_back(std::move(ev));
    while (static_cast<int>(frames_.size()) > max_pending_) {
      dropped_ += frames_.front().frame().dropped_before() + 1;  // it, and what was dropped before it
      frames_.pop_front();
    }
    Pump(lock);
  }

  void OnJobDone(JobOutcome&& o, const std::string& model, size_t rows, int steps) {
    std::unique_lock<std::mutex> lock(mu_);
    spdlog::info("request {} model {} rows {} steps {} queued {:.1f}ms run {:.1f}ms status {}{}", id_, model, rows,
                 steps, o.queued_ms, o.run_ms, CodeName(ToGrpc(o.status).error_code()),
                 o.status.ok() ? "" : " (" + o.status.message() + ")");
    metrics_.Record(model, CodeName(ToGrpc(o.status).error_code()), o.queued_ms, o.run_ms);
    if (!o.status.ok() || broken_) {
      frames_.clear();
      final_status_ = broken_ ? grpc::Status(grpc::StatusCode::CANCELLED, "client went away") : ToGrpc(o.status);
    } else {
      v1::SampleEvent ev;
      v1::Result* r = ev.mutable_result();
      for (auto& png : o.images) r->add_images(std::move(png));
      for (const RowSpec& spec : job_->rows) r->add_seeds(spec.seed);
      r->set_queued_ms(o.queued_ms);
      r->set_run_ms(o.run_ms);
      r->set_model(model);
      r->set_steps(static_cast<uint32_t>(steps));
      r->set_request_id(id_);
      if (!job_->rows.empty()) {  // what the server used, defaults filled in
        const RowSpec& used = job_->rows.front();
        r->set_sampler(SamplerToProto(used.sampler));
        r->set_eta(static_cast<float>(used.eta));
        r->set_guidance_scale(static_cast<float>(used.guidance));
        r->set_guidance_interval_low(static_cast<float>(used.guidance_low));
        r->set_guidance_interval_high(static_cast<float>(used.guidance_high));
      }
      const int channels = served_->info.arch.in_channels;
      r->set_channels(static_cast<uint32_t>(channels));
      if (channels == 4) {
        r->set_alpha(job_->finish.alpha == AlphaMode::kSoft ? v1::ALPHA_MODE_SOFT : v1::ALPHA_MODE_BINARY);
      }
      if (job_->finish.palette) r->set_palette(job_->finish.palette->name);
      result_ = std::move(ev);
    }
    job_done_ = true;
    Pump(lock);
  }

  // Starts the next write or the Finish, outside the lock; called with the lock held.
  void Pump(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finished_) return;
    if (!broken_ && !frames_.empty()) {
      current_ = std::move(frames_.front());
      frames_.pop_front();
      current_.mutable_frame()->set_dropped_before(current_.frame().dropped_before() + dropped_);
      dropped_ = 0;
      writing_ = true;
      lock.unlock();
      StartWrite(&current_);
      return;
    }
    if (!broken_ && result_) {
      current_ = std::move(*result_);
      result_.reset();
      wrote_result_ = true;
      writing_ = true;
      lock.unlock();
      StartWrite(&current_);
      return;
    }
    if (final_status_ && job_done_) {
      finished_ = true;
      const grpc::Status status = *final_status_;
      lock.unlock();
      Finish(status);
    }
  }

  const std::string id_;
  const int max_pending_;
  RequestMetrics& metrics_;
  std::shared_ptr<SampleJob> job_;
  std::shared_ptr<ServedModel> served_;

  std::mutex mu_;
  std::deque<v1::SampleEvent> frames_;          // GUARDED_BY(mu_)
  std::optional<v1::SampleEvent> result_;       // GUARDED_BY(mu_)
  std::optional<grpc::Status> final_status_;    // GUARDED_BY(mu_)
  v1::SampleEvent current_;                     // the write in flight
  uint32_t dropped_ = 0;                        // GUARDED_BY(mu_)
  bool writing_ = false;                        // GUARDED_BY(mu_)
  bool wrote_result_ = false;                   // GUARDED_BY(mu_)
  bool job_done_ = false;                       // GUARDED_BY(mu_)
  bool broken_ = false;                         // GUARDED_BY(mu_)
  bool finished_ = false;                       // GUARDED_BY(mu_)
};

}  // namespace

grpc::ServerWriteReactor<v1::SampleEvent>* SpritesService::Sample(grpc::CallbackServerContext* context,
                                                                   const v1::SampleRequest* request) {
  char id[32];
  std::snprintf(id, sizeof(id), "r%06llu", static_cast<unsigned long long>(next_id_++));
  auto* reactor = new SampleReactor(id, config_.max_pending_frames, metrics_);
  if (grpc::Status denied = auth_.Check(*context, Role::kSample); !denied.ok()) {
    reactor->FinishNow(denied, kUnknownModelLabel);
    return reactor;
  }
  if (request->model().size() > kMaxNameBytes) {
    reactor->FinishNow(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                    "model must be at most " + std::to_string(kMaxNameBytes) + " bytes, got " +
                                        std::to_string(request->model().size())),
                       kUnknownModelLabel);
    return reactor;
  }
  std::shared_ptr<ServedModel> model = registry_.Find(request->model());
  if (!model) {
    // Counted under one label value: every name a client invents must not become a series.
    reactor->FinishNow(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                    "model '" + Echo(request->model()) + "' is not served; see ListModels"),
                       kUnknownModelLabel);
    return reactor;
  }
  SamplePlan plan;
  grpc::Status valid = PlanSample(*request, *model, config_, &plan);
  if (!valid.ok()) {
    reactor->FinishNow(valid, model->name);
    return reactor;
  }
  auto job = std::make_shared<SampleJob>();
  job->id = id;
  job->rows = std::move(plan.rows);
  job->frame_every = plan.frame_every;
  job->include_x0 = plan.include_x0;
  job->finish = plan.finish;
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    job->deadline = SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(
                                             deadline - std::chrono::system_clock::now());
  }
  reactor->Run(job, model, plan.steps);
  return reactor;
}

void SpritesService::Describe(const ServedModel& model, v1::ModelInfo* out) const {
  out->set_name(model.name);
  out->set_image_size(static_cast<uint32_t>(model.info.arch.height));
  out->set_channels(static_cast<uint32_t>(model.info.arch.in_channels));
  for (const auto& l : model.info.labels) out->add_labels(l);
  v1::NoiseScheduleInfo* s = out->mutable_schedule();
  s->set_kind("linear");
  s->set_timesteps(static_cast<uint32_t>(model.info.schedule.timesteps));
  s->set_beta1(model.info.schedule.beta1);
  s->set_beta2(model.info.schedule.beta2);
  out->set_provenance_json(model.info.provenance.dump());
  out->set_is_default(model.name == registry_.default_model());
  out->set_parameters(static_cast<uint64_t>(model.parameters));
  out->set_n_feat(static_cast<uint32_t>(model.info.arch.n_feat));
  const SamplingDefaults d = EffectiveSamplingDefaults(model.info);
  v1::SamplingDefaults* sampling = out->mutable_sampling();
  sampling->set_sampler(SamplerToProto(d.sampler));
  sampling->set_steps(static_cast<uint32_t>(d.steps));
  sampling->set_eta(static_cast<float>(d.eta));
  sampling->set_guidance_scale(static_cast<float>(d.guidance));
  sampling->set_guidance_interval_low(static_cast<float>(d.guidance_low));
  sampling->set_guidance_interval_high(static_cast<float>(d.guidance_high));
}

grpc::ServerUnaryReactor* SpritesService::ListModels(grpc::CallbackServerContext* context,
                                                     const v1::ListModelsRequest*, v1::ListModelsResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, Role::kSample); !denied.ok()) {
    auto* refused = context->DefaultReactor();
    refused->Finish(denied);
    return refused;
  }
  for (const auto& model : registry_.List()) Describe(*model, response->add_models());
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* SpritesService::GetModel(grpc::CallbackServerContext* context,
                                                   const v1::GetModelRequest* request, v1::ModelInfo* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = auth_.Check(*context, Role::kSample); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  if (request->name().size() > kMaxNameBytes) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name must be at most " +
                                                                         std::to_string(kMaxNameBytes) + " bytes, got " +
                                                                         std::to_string(request->name().size())));
    return reactor;
  }
  std::shared_ptr<ServedModel> model = registry_.Find(request->name());
  if (!model) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "model '" + Echo(request->name()) + "' is not served"));
    return reactor;
  }
  Describe(*model, response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace spritediff
