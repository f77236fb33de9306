// The Sprites gRPC service: Sample streams frames and a result through a callback reactor
// (a slow client costs a queue entry, not a thread); ListModels and GetModel describe models.
#pragma once

#include <atomic>
#include <string>

#include "common/config.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "spritediff/v1/sprites.grpc.pb.h"

namespace spritediff {

class SpritesService final : public v1::Sprites::CallbackService {
 public:
  // auth: checked first in every call (role sample); the default lets every call through.
  SpritesService(ModelRegistry& registry, const AppConfig& config, RequestMetrics& metrics,
                 Authorizer auth = Authorizer())
      : registry_(registry), config_(config), metrics_(metrics), auth_(std::move(auth)) {}

  grpc::ServerWriteReactor<v1::SampleEvent>* Sample(grpc::CallbackServerContext* context,
                                                     const v1::SampleRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context, const v1::GetModelRequest* request,
                                     v1::ModelInfo* response) override;

 private:
  void Describe(const ServedModel& model, v1::ModelInfo* out) const;

  ModelRegistry& registry_;
  const AppConfig config_;
  RequestMetrics& metrics_;
  const Authorizer auth_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace spritediff
