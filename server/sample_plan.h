// Turns a SampleRequest into a validated plan at the RPC boundary: every field is checked
// against the model and the config, and an error names the field and its allowed range.
#pragma once

#include <grpcpp/grpcpp.h>

#include <vector>

#include "core/sampler.h"
#include "common/config.h"
#include "common/grpc_status.h"
#include "core/sampling_defaults.h"
#include "core/sprite_finish.h"
#include "server/model_registry.h"
#include "spritediff/v1/sprites.pb.h"

namespace spritediff {

struct SamplePlan {
  std::vector<RowSpec> rows;
  int frame_every = 0;  // after coarsening to max_frames_per_request
  bool include_x0 = false;
  int steps = 0;
  SamplerKind sampler = SamplerKind::kDdim;
  double eta = 0.0;  // 0 where the sampler ignores eta
  double guidance = 1.0;
  double guidance_low = 0.0, guidance_high = 1.0;  // the guidance interval
  SpriteFinish finish;  // alpha finish and palette lock of the Result's sprites
};

// Between the proto's Sampler and core's; false for SAMPLER_UNSPECIFIED and unknown values.
bool SamplerFromProto(v1::Sampler sampler, SamplerKind* kind);
v1::Sampler SamplerToProto(SamplerKind kind);

grpc::Status PlanSample(const v1::SampleRequest& request, const ServedModel& model, const AppConfig& config,
                        SamplePlan* plan);

}  // namespace spritediff
