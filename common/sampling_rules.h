// The rules of a sampling request, written once and read by the daemon (server/sample_plan),
// the samplers (core/sampler), model.json's sampling defaults (core/sampling_defaults), the
// offline commands and spritectl: the sampler names, which samplers use eta and their own eta
// and step count, and the ranges of steps, eta, guidance and the guidance interval. Torch-free,
// so that spritectl (a user of the public proto only) checks its flags by the same rules.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace spritediff {

enum class SamplerKind { kDdpm, kDdim, kDpmpp2m, kDpmpp2mSde };
inline constexpr SamplerKind kAllSamplers[] = {SamplerKind::kDdpm, SamplerKind::kDdim, SamplerKind::kDpmpp2m,
                                               SamplerKind::kDpmpp2mSde};

// "ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde": the names the CLIs and model.json use.
const char* SamplerName(SamplerKind kind);
// The inverse of SamplerName; false for an unknown name.
bool ParseSamplerName(const std::string& name, SamplerKind* kind);
// The names above, joined with " | " (for help text and error messages).
std::string SamplerNames();
// The names above, for a CLI's IsMember check.
std::vector<std::string> SamplerNameList();

// The eta rule. eta changes the steps of DDIM (0 = deterministic, 1 = DDPM-like) and of
// DPM-Solver++(2M) SDE; DDPM and 2M ignore it. A request that picks a sampler other than its
// model's default gets that sampler's own eta: 1 for the SDE solver, 0 for the others.
bool SamplerUsesEta(SamplerKind kind);
double SamplerDefaultEta(SamplerKind kind);

// The step count a request runs when it names none: every timestep for DDPM, 25 for the others
// (at most T). The daemon, the offline sampler and the trainer's checkpoint grids use it.
inline constexpr int kDefaultDdimSteps = 25;
int DefaultSteps(SamplerKind sampler, int timesteps);

// The ranges. Each check's message names field ("steps", "sampling.eta", "--guidance") and the
// range.
inline constexpr double kMinEta = 0.0;
inline constexpr double kMaxEta = 1.0;
inline constexpr double kMinGuidance = 0.0;
inline constexpr double kMaxGuidance = 20.0;
Status CheckSteps(long long steps, int timesteps, const std::string& field);  // [1, T]
Status CheckEta(double eta, const std::string& field);                        // [0, 1]
Status CheckGuidance(double guidance, const std::string& field);              // [0, 20]
// 0 <= low < high <= 1 (fractions of T; core/sampler.h says which steps are guided).
Status CheckGuidanceInterval(double low, double high, const std::string& field);

}  // namespace spritediff
