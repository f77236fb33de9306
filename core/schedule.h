// The linear noise schedule of DDPM (Ho et al. 2020) as the course uses it:
//   beta_t = beta1 + (beta2 - beta1) * t / T,  t = 0..T
//   alpha_t = 1 - beta_t,  alpha_bar_t = prod_{s=1..t} alpha_s,  alpha_bar_0 = 1.
// Values are kept in double so that sampler coefficients are exact; tensors are made on demand.
#pragma once

#include <vector>

namespace spritediff {

struct ScheduleConfig {
  int timesteps = 500;  // T
  double beta1 = 1e-4;
  double beta2 = 0.02;
};

class NoiseSchedule {
 public:
  explicit NoiseSchedule(const ScheduleConfig& config);

  const ScheduleConfig& config() const { return config_; }
  int timesteps() const { return config_.timesteps; }
  double beta(int t) const { return beta_[t]; }
  double alpha(int t) const { return 1.0 - beta_[t]; }
  double alpha_bar(int t) const { return alpha_bar_[t]; }

 private:
  ScheduleConfig config_;
  std::vector<double> beta_;       // index 0..T
  std::vector<double> alpha_bar_;  // index 0..T, alpha_bar_[0] == 1
};

}  // namespace spritediff
