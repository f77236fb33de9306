#include "core/schedule.h"

namespace spritediff {

NoiseSchedule::NoiseSchedule(const ScheduleConfig& config) : config_(config) {
  const int T = config.timesteps;
  beta_.resize(T + 1);
  alpha_bar_.resize(T + 1);
  for (int t = 0; t <= T; ++t) {
    beta_[t] = config.beta1 + (config.beta2 - config.beta1) * static_cast<double>(t) / T;
  }
  alpha_bar_[0] = 1.0;
  for (int t = 1; t <= T; ++t) alpha_bar_[t] = alpha_bar_[t - 1] * (1.0 - beta_[t]);
}

}  // namespace spritediff
