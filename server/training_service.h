// The Training gRPC service: a thin layer over JobRunner. WatchJob streams through a callback
// reactor that always sends the job's latest state (a slow reader skips intermediate ones).
#pragma once

#include "server/auth.h"
#include "server/job_runner.h"
#include "spritediff/v1/training.grpc.pb.h"

namespace spritediff {

class TrainingService final : public v1::Training::CallbackService {
 public:
  // auth: checked first in every call (role train); the default lets every call through.
  explicit TrainingService(JobRunner& runner, Authorizer auth = Authorizer())
      : runner_(runner), auth_(std::move(auth)) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context, const v1::JobSpec* spec,
                                      v1::Job* job) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                   const v1::JobRef* ref) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const v1::JobRef* ref,
                                   v1::Job* job) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context, const v1::JobRef* ref,
                                      v1::Job* job) override;

 private:
  JobRunner& runner_;
  const Authorizer auth_;
};

}  // namespace spritediff
