// A model's recommended sampling settings (model.json "sampling") and the one rule that fills a
// request's unset fields from them. The daemon (server/sample_plan.cc) and the offline
// `spritediffd sample` both resolve through ResolveSampling, so a request that gives only labels,
// count and seed gets the same sprites from either.
//
// The rule, per field a request leaves unset:
//   sampler  = the model's sampler;
//   steps    = the model's steps when the sampler is the model's, otherwise the sampler's own
//              default (T for DDPM, min(25, T) for the others);
//   eta      = the model's eta when the sampler is the model's, otherwise the sampler's own
//              default (1 for DPM++ 2M SDE, 0 for the rest; DDPM and DPM++ 2M ignore eta);
//   guidance = the model's guidance;
//   guidance interval = the model's interval (core/sampler.h; [0, 1] = every step).
// A model.json without "sampling" has the built-in defaults: DDIM, min(25, T) steps, eta 0,
// guidance 1 (the daemon's behaviour before per-model defaults).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>

#include "core/sampler.h"
#include "common/status.h"

namespace spritediff {

struct SamplingDefaults {
  SamplerKind sampler = SamplerKind::kDdim;
  int steps = kDefaultDdimSteps;
  double eta = 0.0;
  double guidance = 1.0;
  double guidance_low = 0.0;  // the guidance interval, fractions of T (core/sampler.h)
  double guidance_high = 1.0;
};

// What a request set; an empty optional takes the default.
struct SamplingChoice {
  std::optional<SamplerKind> sampler;
  std::optional<int> steps;
  std::optional<double> eta;
  std::optional<double> guidance;
  std::optional<double> guidance_low;
  std::optional<double> guidance_high;
};

SamplingDefaults BuiltinSamplingDefaults(int timesteps);

// A sampler's own eta and step count, used when a request picks a sampler other than the
// model's: SamplerDefaultEta and DefaultSteps in common/sampling_rules.h.

// Steps in [1, T], eta in [0, 1], guidance in [0, 20]; the message names the field.
Status ValidateSamplingDefaults(const SamplingDefaults& d, int timesteps);

// {"sampler": "ddim", "steps": 25, "eta": 1.0, "guidance": 2.0, "guidance_interval": [0, 0.8]}
// ("guidance_interval" only when it is not [0, 1]). Reading refuses unknown keys
// and out-of-range values; a key left out takes the built-in default.
nlohmann::json SamplingDefaultsToJson(const SamplingDefaults& d);
Result<SamplingDefaults> SamplingDefaultsFromJson(const nlohmann::json& j, int timesteps);

// The rule in the header comment. Does not validate: callers check the result with
// ValidateRowSpec (which names the field).
SamplingDefaults ResolveSampling(const SamplingChoice& request, const SamplingDefaults& model, int timesteps);

}  // namespace spritediff
