#include "core/schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace spritediff {
namespace {

TEST(NoiseSchedule, LinearBetaMatchesClosedForm) {
  NoiseSchedule s(ScheduleConfig{});
  const int T = s.timesteps();
  ASSERT_EQ(T, 500);
  EXPECT_DOUBLE_EQ(s.beta(0), 1e-4);
  EXPECT_DOUBLE_EQ(s.beta(T), 0.02);
  for (int t : {1, 7, 250, 499}) {
    EXPECT_NEAR(s.beta(t), 1e-4 + (0.02 - 1e-4) * t / T, 1e-15) << "t=" << t;
    EXPECT_NEAR(s.alpha(t), 1.0 - s.beta(t), 1e-15);
  }
}

TEST(NoiseSchedule, AlphaBarIsTheProductOfAlphas) {
  NoiseSchedule s(ScheduleConfig{});
  EXPECT_EQ(s.alpha_bar(0), 1.0);
  // Closed form through logs: log ab_t = sum_{s=1..t} log(1 - beta_s).
  for (int t : {1, 2, 100, 500}) {
    double log_sum = 0;
    for (int k = 1; k <= t; ++k) log_sum += std::log1p(-(1e-4 + (0.02 - 1e-4) * k / 500.0));
    EXPECT_NEAR(s.alpha_bar(t), std::exp(log_sum), 1e-12) << "t=" << t;
  }
  for (int t = 1; t <= 500; ++t) EXPECT_LT(s.alpha_bar(t), s.alpha_bar(t - 1));
  // At T the signal is nearly gone: sqrt(ab_T) ~ 0.08 for this schedule.
  EXPECT_LT(std::sqrt(s.alpha_bar(500)), 0.1);
}

TEST(NoiseSchedule, OtherConfigurations) {
  NoiseSchedule s(ScheduleConfig{1000, 1e-4, 0.02});
  EXPECT_NEAR(s.beta(500), 1e-4 + (0.02 - 1e-4) * 0.5, 1e-15);
  EXPECT_EQ(s.timesteps(), 1000);
}

}  // namespace
}  // namespace spritediff
