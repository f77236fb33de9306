#include "server/training_service.h"

#include <spdlog/spdlog.h>

#include <mutex>

#include "common/grpc_status.h"
#include "common/client_text.h"

namespace spritediff {

namespace {

// One WatchJob call. The runner calls Wake() after every change of the job; with no write in
// flight the reactor sends the newest snapshot it has not sent yet, so events coalesce for a
// slow reader. Finish comes after the event carrying a final state, or when the daemon closes.
class WatchReactor : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  // The runner's listener holds the hook, not the reactor: OnDone clears it under its lock, so
  // a listener call never reaches a deleted reactor.
  struct Hook {
    std::mutex mu;
    WatchReactor* reactor = nullptr;  // GUARDED_BY(mu)
  };

  WatchReactor(JobRunner& runner, std::string id) : runner_(runner), id_(std::move(id)) {
    hook_ = std::make_shared<Hook>();
    hook_->reactor = this;
    std::weak_ptr<Hook> weak = hook_;
    token_ = runner_.Subscribe(id_, [weak] {
      std::shared_ptr<Hook> hook = weak.lock();
      if (!hook) return;
      std::lock_guard<std::mutex> lock(hook->mu);
      if (hook->reactor) hook->reactor->Wake();
    });
    Wake();
  }

  void Wake() {
    std::unique_lock<std::mutex> lock(mu_);
    Pump(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) broken_ = true;
    Pump(lock);
  }

  void OnCancel() override {
    std::unique_lock<std::mutex> lock(mu_);
    broken_ = true;
    Pump(lock);
  }

  void OnDone() override {
    runner_.Unsubscribe(id_, token_);
    {
      std::lock_guard<std::mutex> lock(hook_->mu);
      hook_->reactor = nullptr;
    }
    delete this;
  }

 private:
  // Starts the next write or the Finish, outside the lock; called with the lock held.
  void Pump(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finished_) return;
    grpc::Status final_status;
    JobRunner::Snapshot snap;
    if (broken_) {
      final_status = grpc::Status(grpc::StatusCode::CANCELLED, "watcher went away");
    } else if (!runner_.GetSnapshot(id_, &snap)) {
      final_status = grpc::Status(grpc::StatusCode::NOT_FOUND, "job '" + Echo(id_) + "' does not exist; see ListJobs");
    } else if (snap.version > sent_version_) {
      current_.Clear();
      *current_.mutable_job() = snap.job;
      if (snap.grid_png && snap.grid_epoch != sent_grid_epoch_) {
        current_.set_sample_grid_png(*snap.grid_png);
        current_.set_grid_epoch(snap.grid_epoch);
        sent_grid_epoch_ = snap.grid_epoch;
      }
      sent_version_ = snap.version;
      sent_final_ = IsFinal(snap.job.state());
      writing_ = true;
      lock.unlock();
      StartWrite(&current_);
      return;
    } else if (sent_final_) {
      final_status = grpc::Status::OK;
    } else if (snap.closing) {
      final_status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                  "the server is shutting down; the job resumes when it restarts (WatchJob again)");
    } else {
      return;  // nothing new: wait for the next Wake
    }
    finished_ = true;
    lock.unlock();
    Finish(final_status);
  }

  JobRunner& runner_;
  const std::string id_;
  std::shared_ptr<Hook> hook_;
  uint64_t token_ = 0;

  std::mutex mu_;
  v1::JobEvent current_;         // the write in flight
  uint64_t sent_version_ = 0;    // GUARDED_BY(mu_)
  uint32_t sent_grid_epoch_ = 0; // GUARDED_BY(mu_)
  bool sent_final_ = false;      // GUARDED_BY(mu_)
  bool writing_ = false;         // GUARDED_BY(mu_)
  bool broken_ = false;          // GUARDED_BY(mu_)
  bool finished_ = false;        // GUARDED_BY(mu_)
};

}  // namespace

grpc::ServerUnaryReactor* TrainingService::SubmitJob(grpc::CallbackServerContext* context, const v1::JobSpec* spec,
                                                     v1::Job* job) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = auth_.Check(*context, Role::kTrain); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  // Cheap checks here; the dataset is read by the training worker.
  Result<TrainingPlan> plan = runner_.Plan(*spec);
  const grpc::Status status = ToGrpc(plan.ok() ? runner_.Submit(std::move(*plan), job) : plan.status());
  if (!status.ok()) {
    spdlog::info("SubmitJob model '{}' dataset '{}' rejected: {}", Echo(spec->model_name()), Echo(spec->dataset()),
                 status.error_message());
  }
  reactor->Finish(status);
  return reactor;
}

grpc::ServerWriteReactor<v1::JobEvent>* TrainingService::WatchJob(grpc::CallbackServerContext* context,
                                                                  const v1::JobRef* ref) {
  if (grpc::Status denied = auth_.Check(*context, Role::kTrain); !denied.ok()) {
    return new RefusedWriteReactor<v1::JobEvent>(denied);
  }
  return new WatchReactor(runner_, ref->id());
}

grpc::ServerUnaryReactor* TrainingService::GetJob(grpc::CallbackServerContext* context, const v1::JobRef* ref,
                                                  v1::Job* job) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = auth_.Check(*context, Role::kTrain); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  reactor->Finish(ToGrpc(runner_.Get(ref->id(), job)));
  return reactor;
}

grpc::ServerUnaryReactor* TrainingService::ListJobs(grpc::CallbackServerContext* context, const v1::ListJobsRequest*,
                                                    v1::ListJobsResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, Role::kTrain); !denied.ok()) {
    auto* refused = context->DefaultReactor();
    refused->Finish(denied);
    return refused;
  }
  for (v1::Job& job : runner_.List()) *response->add_jobs() = std::move(job);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* TrainingService::CancelJob(grpc::CallbackServerContext* context, const v1::JobRef* ref,
                                                     v1::Job* job) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = auth_.Check(*context, Role::kTrain); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  reactor->Finish(ToGrpc(runner_.Cancel(ref->id(), job)));
  return reactor;
}

}  // namespace spritediff
