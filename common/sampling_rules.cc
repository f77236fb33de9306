#include "common/sampling_rules.h"

#include <algorithm>

#include "common/rule_text.h"

namespace spritediff {

namespace {

Status OutOfRange(const std::string& field, double lo, double hi, double got) {
  return Status::InvalidArgument(field + " must be in [" + FormatNumber(lo) + ", " + FormatNumber(hi) + "], got " +
                                 FormatNumber(got));
}

}  // namespace

const char* SamplerName(SamplerKind kind) {
  switch (kind) {
    case SamplerKind::kDdpm: return "ddpm";
    case SamplerKind::kDdim: return "ddim";
    case SamplerKind::kDpmpp2m: return "dpmpp-2m";
    case SamplerKind::kDpmpp2mSde: return "dpmpp-2m-sde";
  }
  return "unknown";
}

bool ParseSamplerName(const std::string& name, SamplerKind* kind) {
  for (SamplerKind k : kAllSamplers) {
    if (name == SamplerName(k)) {
      *kind = k;
      return true;
    }
  }
  return false;
}

std::string SamplerNames() {
  std::string names;
  for (SamplerKind k : kAllSamplers) names += (names.empty() ? "" : " | ") + std::string(SamplerName(k));
  return names;
}

std::vector<std::string> SamplerNameList() {
  std::vector<std::string> names;
  for (SamplerKind k : kAllSamplers) names.emplace_back(SamplerName(k));
  return names;
}

bool SamplerUsesEta(SamplerKind kind) { return kind == SamplerKind::kDdim || kind == SamplerKind::kDpmpp2mSde; }

double SamplerDefaultEta(SamplerKind kind) { return kind == SamplerKind::kDpmpp2mSde ? 1.0 : 0.0; }

int DefaultSteps(SamplerKind sampler, int timesteps) {
  return sampler == SamplerKind::kDdpm ? timesteps : std::min(timesteps, kDefaultDdimSteps);
}

Status CheckSteps(long long steps, int timesteps, const std::string& field) {
  if (steps < 1 || steps > timesteps) {
    return Status::InvalidArgument(field + " must be in [1, " + std::to_string(timesteps) + "], got " +
                                   std::to_string(steps));
  }
  return Status::Ok();
}

Status CheckEta(double eta, const std::string& field) {
  return eta >= kMinEta && eta <= kMaxEta ? Status::Ok() : OutOfRange(field, kMinEta, kMaxEta, eta);
}

Status CheckGuidance(double guidance, const std::string& field) {
  return guidance >= kMinGuidance && guidance <= kMaxGuidance ? Status::Ok()
                                                              : OutOfRange(field, kMinGuidance, kMaxGuidance, guidance);
}

Status CheckGuidanceInterval(double low, double high, const std::string& field) {
  if (low >= 0.0 && low < high && high <= 1.0) return Status::Ok();
  return Status::InvalidArgument(field + " must be [low, high] with 0 <= low < high <= 1, got [" +
                                 FormatNumber(low) + ", " + FormatNumber(high) + "]");
}

}  // namespace spritediff
