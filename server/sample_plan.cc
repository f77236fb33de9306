#include "server/sample_plan.h"

#include <cmath>
#include <random>

#include "common/client_text.h"

namespace spritediff {

namespace {

grpc::Status Invalid(const std::string& message) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message); }

uint64_t RandomSeed() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  uint64_t seed = 0;
  while (seed == 0 || seed > (UINT64_MAX >> 1)) seed = rng() >> 1;
  return seed;
}

}  // namespace

bool SamplerFromProto(v1::Sampler sampler, SamplerKind* kind) {
  switch (sampler) {
    case v1::SAMPLER_DDPM: *kind = SamplerKind::kDdpm; return true;
    case v1::SAMPLER_DDIM: *kind = SamplerKind::kDdim; return true;
    case v1::SAMPLER_DPMPP_2M: *kind = SamplerKind::kDpmpp2m; return true;
    case v1::SAMPLER_DPMPP_2M_SDE: *kind = SamplerKind::kDpmpp2mSde; return true;
    default: return false;
  }
}

v1::Sampler SamplerToProto(SamplerKind kind) {
  switch (kind) {
    case SamplerKind::kDdpm: return v1::SAMPLER_DDPM;
    case SamplerKind::kDdim: return v1::SAMPLER_DDIM;
    case SamplerKind::kDpmpp2m: return v1::SAMPLER_DPMPP_2M;
    case SamplerKind::kDpmpp2mSde: return v1::SAMPLER_DPMPP_2M_SDE;
  }
  return v1::SAMPLER_UNSPECIFIED;
}

grpc::Status PlanSample(const v1::SampleRequest& req, const ServedModel& model, const AppConfig& config,
                        SamplePlan* plan) {
  const ModelInfo& info = model.info;
  const int T = info.schedule.timesteps;
  const int count = req.count() == 0 ? 1 : static_cast<int>(std::min<uint32_t>(req.count(), 1u << 20));
  if (count > config.max_rows_per_request) {
    return Invalid("count must be in [1, " + std::to_string(config.max_rows_per_request) + "], got " +
                   std::to_string(req.count()));
  }
  // The one place where a request's unset fields take the model's defaults
  // (core/sampling_defaults.h states the rule); the offline `spritediffd sample` uses the same.
  SamplingChoice choice;
  if (req.sampler() != v1::SAMPLER_UNSPECIFIED) {
    SamplerKind kind;
    if (!SamplerFromProto(req.sampler(), &kind)) {
      return Invalid("sampler must be SAMPLER_UNSPECIFIED (the model's), SAMPLER_DDPM, SAMPLER_DDIM, "
                     "SAMPLER_DPMPP_2M or SAMPLER_DPMPP_2M_SDE, got " + std::to_string(req.sampler()));
    }
    choice.sampler = kind;
  }
  if (req.steps() != 0) {  // 0 = the default
    Status steps = CheckSteps(req.steps(), T, "steps");
    if (!steps.ok()) return Invalid(steps.message() + " (0 = default)");
    choice.steps = static_cast<int>(req.steps());
  }
  if (req.has_eta()) {
    Status eta = CheckEta(req.eta(), "eta");
    if (!eta.ok()) return Invalid(eta.message());
    choice.eta = req.eta();
  }
  if (req.has_guidance_scale()) {
    Status guidance = CheckGuidance(req.guidance_scale(), "guidance_scale");
    if (!guidance.ok()) return Invalid(guidance.message());
    choice.guidance = req.guidance_scale();
  }
  if (req.has_guidance_interval_low()) choice.guidance_low = req.guidance_interval_low();
  if (req.has_guidance_interval_high()) choice.guidance_high = req.guidance_interval_high();
  const SamplingDefaults used = ResolveSampling(choice, EffectiveSamplingDefaults(info), T);
  plan->sampler = used.sampler;
  plan->steps = used.steps;
  plan->eta = SamplerUsesEta(used.sampler) ? used.eta : 0.0;
  plan->guidance = used.guidance;
  plan->guidance_low = used.guidance_low;
  plan->guidance_high = used.guidance_high;
  if (req.frame_every() > static_cast<uint32_t>(plan->steps)) {
    return Invalid("frame_every must be in [0, steps=" + std::to_string(plan->steps) + "], got " +
                   std::to_string(req.frame_every()));
  }
  plan->frame_every = static_cast<int>(req.frame_every());
  if (plan->frame_every > 0 && plan->steps / plan->frame_every > config.max_frames_per_request) {
    plan->frame_every = (plan->steps + config.max_frames_per_request - 1) / config.max_frames_per_request;
  }
  plan->include_x0 = req.include_x0();

  switch (req.alpha()) {
    case v1::ALPHA_MODE_UNSPECIFIED:
    case v1::ALPHA_MODE_BINARY: plan->finish.alpha = AlphaMode::kBinary; break;
    case v1::ALPHA_MODE_SOFT: plan->finish.alpha = AlphaMode::kSoft; break;
    default:
      return Invalid("alpha must be ALPHA_MODE_UNSPECIFIED (binary), ALPHA_MODE_BINARY or ALPHA_MODE_SOFT, got " +
                     std::to_string(req.alpha()));
  }
  if (req.palette_colors_size() > kMaxPaletteColors) {  // refused before a string is looked at
    return Invalid("palette_colors: needs " + std::to_string(kMinPaletteColors) + ".." +
                   std::to_string(kMaxPaletteColors) + " colours, got " + std::to_string(req.palette_colors_size()));
  }
  Result<std::optional<Palette>> palette = ResolvePalette(
      req.palette(), std::vector<std::string>(req.palette_colors().begin(), req.palette_colors().end()));
  if (!palette.ok()) return Invalid(palette.status().message());
  plan->finish.palette = *palette;
  plan->finish.dither = req.dither();

  std::vector<float> context(info.arch.n_cfeat, 0.0f);
  if (req.labels_size() > 0 && req.context_size() > 0) return Invalid("give labels or context, not both");
  if (req.context_size() > 0) {
    if (req.context_size() != info.arch.n_cfeat) {
      return Invalid("context must have exactly " + std::to_string(info.arch.n_cfeat) + " values for model '" +
                     model.name + "', got " + std::to_string(req.context_size()));
    }
    for (int i = 0; i < req.context_size(); ++i) {
      const float v = req.context(i);
      if (!std::isfinite(v) || std::fabs(v) > 100.0f) {
        return Invalid("context[" + std::to_string(i) + "] must be finite and in [-100, 100]");
      }
      context[i] = v;
    }
  } else if (req.labels_size() > 0) {
    if (req.labels_size() > 64) return Invalid("labels may hold at most 64 entries");
    std::vector<std::pair<std::string, float>> mix;
    for (const auto& lw : req.labels()) {
      if (lw.label().size() > kMaxLabelBytes) {
        return Invalid("labels: a label must be at most " + std::to_string(kMaxLabelBytes) + " bytes, got " +
                       std::to_string(lw.label().size()));
      }
      mix.emplace_back(lw.label(), lw.has_weight() ? lw.weight() : 1.0f);
    }
    Result<std::vector<float>> ctx = ContextFromLabels(info.labels, mix);
    if (!ctx.ok()) return Invalid("labels: " + ctx.status().message());
    context = *ctx;
  }

  const uint64_t seed = req.seed() == 0 ? RandomSeed() : req.seed();
  plan->rows.clear();
  for (int i = 0; i < count; ++i) {
    RowSpec spec;
    spec.sampler = plan->sampler;
    spec.steps = plan->steps;
    spec.eta = plan->eta;
    spec.guidance = plan->guidance;
    spec.guidance_low = plan->guidance_low;
    spec.guidance_high = plan->guidance_high;
    spec.context = context;
    spec.seed = seed + static_cast<uint64_t>(i);
    Status s = ValidateRowSpec(spec, T, info.arch.n_cfeat);
    if (!s.ok()) return Invalid(s.message());
    plan->rows.push_back(std::move(spec));
  }
  return grpc::Status::OK;
}

}  // namespace spritediff
