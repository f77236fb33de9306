#include "core/sampling_defaults.h"

#include <algorithm>
#include <cmath>

namespace spritediff {

using nlohmann::json;

SamplingDefaults BuiltinSamplingDefaults(int timesteps) {
  SamplingDefaults d;
  d.steps = DefaultSteps(d.sampler, timesteps);
  return d;
}

Status ValidateSamplingDefaults(const SamplingDefaults& d, int timesteps) {
  for (const Status& s : {CheckSteps(d.steps, timesteps, "sampling.steps"), CheckEta(d.eta, "sampling.eta"),
                          CheckGuidance(d.guidance, "sampling.guidance"),
                          CheckGuidanceInterval(d.guidance_low, d.guidance_high, "sampling.guidance_interval")}) {
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

json SamplingDefaultsToJson(const SamplingDefaults& d) {
  json j{{"sampler", SamplerName(d.sampler)}, {"steps", d.steps}, {"eta", d.eta}, {"guidance", d.guidance}};
  if (d.guidance_low != 0.0 || d.guidance_high != 1.0) j["guidance_interval"] = {d.guidance_low, d.guidance_high};
  return j;
}

Result<SamplingDefaults> SamplingDefaultsFromJson(const json& j, int timesteps) {
  if (!j.is_object()) return Status::InvalidArgument("sampling must be an object");
  SamplingDefaults d = BuiltinSamplingDefaults(timesteps);
  for (const auto& [key, value] : j.items()) {
    if (key == "sampler") {
      if (!value.is_string() || !ParseSamplerName(value.get<std::string>(), &d.sampler)) {
        return Status::InvalidArgument("sampling.sampler must be one of " + SamplerNames() + ", got " +
                                       value.dump().substr(0, 40));
      }
    } else if (key == "steps") {
      if (!value.is_number_integer()) return Status::InvalidArgument("sampling.steps must be an integer");
      const int64_t steps = value.get<int64_t>();
      d.steps = static_cast<int>(std::clamp<int64_t>(steps, -1, int64_t{1} << 30));
    } else if (key == "eta" || key == "guidance") {
      if (!value.is_number()) return Status::InvalidArgument("sampling." + key + " must be a number");
      (key == "eta" ? d.eta : d.guidance) = value.get<double>();
    } else if (key == "guidance_interval") {
      if (!value.is_array() || value.size() != 2 || !value[0].is_number() || !value[1].is_number()) {
        return Status::InvalidArgument("sampling.guidance_interval must be [low, high], two numbers");
      }
      d.guidance_low = value[0].get<double>();
      d.guidance_high = value[1].get<double>();
    } else {
      return Status::InvalidArgument("sampling: unknown key '" + key.substr(0, 40) +
                                     "' (known: sampler, steps, eta, guidance, guidance_interval)");
    }
  }
  Status s = ValidateSamplingDefaults(d, timesteps);
  if (!s.ok()) return s;
  return d;
}

SamplingDefaults ResolveSampling(const SamplingChoice& request, const SamplingDefaults& model, int timesteps) {
  SamplingDefaults out;
  out.sampler = request.sampler.value_or(model.sampler);
  const bool models_sampler = out.sampler == model.sampler;
  out.steps = request.steps ? *request.steps
                            : (models_sampler ? model.steps : DefaultSteps(out.sampler, timesteps));
  out.eta = request.eta ? *request.eta : (models_sampler ? model.eta : SamplerDefaultEta(out.sampler));
  out.guidance = request.guidance.value_or(model.guidance);
  out.guidance_low = request.guidance_low.value_or(model.guidance_low);
  out.guidance_high = request.guidance_high.value_or(model.guidance_high);
  return out;
}

}  // namespace spritediff
