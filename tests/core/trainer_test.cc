#include "core/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "core/runtime.h"
#include "core/schedule.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

TEST(ForwardProcess, MomentsMatchTheClosedForm) {
  NoiseSchedule s(ScheduleConfig{});
  std::vector<float> sab, s1mab;
  for (int t = 0; t <= 500; ++t) {
    sab.push_back(static_cast<float>(std::sqrt(s.alpha_bar(t))));
    s1mab.push_back(static_cast<float>(std::sqrt(1 - s.alpha_bar(t))));
  }
  torch::manual_seed(0);
  for (int t : {1, 100, 500}) {
    const int64_t n = 200000;
    torch::Tensor x0 = torch::full({n, 1, 1, 1}, 0.7f);
    torch::Tensor tt = torch::full({n}, t, torch::kInt64);
    torch::Tensor xt = ForwardDiffuse(x0, tt, torch::randn({n, 1, 1, 1}), torch::tensor(sab), torch::tensor(s1mab));
    // mean sqrt(ab) x0 and variance 1 - ab (not sqrt(1 - ab): the course text's bug).
    EXPECT_NEAR(xt.mean().item<double>(), std::sqrt(s.alpha_bar(t)) * 0.7, 0.01) << "t=" << t;
    EXPECT_NEAR(xt.var().item<double>(), 1 - s.alpha_bar(t), 0.01 * (1 - s.alpha_bar(t)) + 1e-5) << "t=" << t;
  }
}

// A training worker gives itself one intra-op thread; that must not change the count of the
// process (which a serving thread starting later inherits) or of any other thread. (It once
// went through at::set_num_threads, whose process-wide side effects made a 32-sprite request
// take 16.0 s instead of 12.3 s.)
TEST(Threads, PerThreadCountLeavesTheProcessCountAlone) {
  if (ConfigureThreads(2) != 2) GTEST_SKIP() << "libtorch without a settable thread count";
  int in_worker = 0, in_worker_after_work = 0, in_later_thread = 0;
  std::thread worker([&] {
    SetThreadIntraOpThreads(1);
    in_worker = at::get_num_threads();
    torch::mm(torch::ones({64, 64}), torch::ones({64, 64}));  // parallel work keeps the count
    in_worker_after_work = at::get_num_threads();
  });
  worker.join();
  std::thread later([&] {
    in_later_thread = at::get_num_threads();  // initialised from the process count
  });
  later.join();
  EXPECT_EQ(in_worker, 1);
  EXPECT_EQ(in_worker_after_work, 1);
  EXPECT_EQ(in_later_thread, 2);
  EXPECT_EQ(at::get_num_threads(), 2);
}

TEST(Ema, MovesTowardTheLiveWeights) {
  torch::nn::Linear live(2, 2), ema(2, 2);
  torch::NoGradGuard no_grad;
  live->weight.fill_(1.0);
  ema->weight.fill_(0.0);
  UpdateEma(*ema, *live, 0.9);
  EXPECT_NEAR(ema->weight[0][0].item<double>(), 0.1, 1e-6);
  UpdateEma(*ema, *live, 0.0);
  EXPECT_TRUE(torch::equal(ema->weight, live->weight));
}

class TinyTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("spritediff_train_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    at::set_num_threads(1);
    config_.data = SPRITEDIFF_DATA_DIR;
    config_.n_feat = 8;
    config_.height = 16;
    config_.batch_size = 64;
    config_.epochs = 3;
    config_.lr = 3e-3;
    config_.sample_grid_per_label = 1;
    config_.checkpoint_every = 100;
    config_.seed = 5;
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
  TrainConfig config_;
};

TEST_F(TinyTraining, LowersTheLossAndWritesAModel) {
  config_.out = (root_ / "m").string();
  Result<TrainSummary> s = Train(config_, nullptr, nullptr);
  ASSERT_TRUE(s.ok()) << s.status().message();
  ASSERT_EQ(s->epoch_losses.size(), 3u);
  EXPECT_LT(s->epoch_losses.back(), s->epoch_losses.front());
  EXPECT_LT(s->epoch_losses.back(), 0.3) << "noise alone has MSE 1 against a zero prediction";
  Result<ModelInfo> info = ReadModelInfo(config_.out);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->labels, (std::vector<std::string>{"hero", "non_hero", "food", "spell", "item"}));
  EXPECT_EQ(info->provenance["epochs_done"], 3);
  EXPECT_TRUE(fs::exists(root_ / "m" / "samples.png"));
  EXPECT_TRUE(fs::exists(root_ / "m" / "training-log.csv"));
}

// The same run in mixed precision: its loss falls about as far as float32's, and what it saves
// is a float32 model that says how it was trained.
TEST_F(TinyTraining, MixedPrecisionLearnsLikeFloat32) {
  config_.sample_grid_per_label = 0;
  config_.out = (root_ / "fp32").string();
  Result<TrainSummary> fp32 = Train(config_, nullptr, nullptr);
  ASSERT_TRUE(fp32.ok()) << fp32.status().message();
  TrainConfig mixed = config_;
  mixed.out = (root_ / "bf16").string();
  mixed.bf16_convolutions = true;
  Result<TrainSummary> bf16 = Train(mixed, nullptr, nullptr);
  ASSERT_TRUE(bf16.ok()) << bf16.status().message();
  ASSERT_EQ(bf16->epoch_losses.size(), 3u);
  EXPECT_LT(bf16->epoch_losses.back(), bf16->epoch_losses.front());
  EXPECT_NEAR(bf16->epoch_losses.back(), fp32->epoch_losses.back(), 0.1 * fp32->epoch_losses.back());
  EXPECT_NE(bf16->epoch_losses.back(), fp32->epoch_losses.back()) << "the convolutions must really run in bf16";
  Result<LoadedModel> saved = LoadModel(mixed.out);
  ASSERT_TRUE(saved.ok()) << saved.status().message();
  for (const auto& p : saved->net->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
  EXPECT_EQ(saved->info.provenance["precision"], "bf16 convolutions, float32 weights");
}

TEST_F(TinyTraining, InterruptedAndResumedRunEqualsAnUninterruptedOne) {
  config_.epochs = 2;
  config_.batch_size = 256;
  config_.sample_grid_per_label = 0;
  config_.out = (root_ / "straight").string();
  ASSERT_TRUE(Train(config_, nullptr, nullptr).ok());

  TrainConfig interrupted = config_;
  interrupted.out = (root_ / "resumed").string();
  interrupted.log_every = 1;
  std::atomic<bool> stop{false};
  // Stop in the middle of the second epoch (11 steps per epoch at batch 256).
  Result<TrainSummary> first = Train(interrupted, &stop, [&](const TrainProgress& p) {
    if (p.step == 15) stop.store(true);
  });
  ASSERT_TRUE(first.ok()) << first.status().message();
  EXPECT_TRUE(first->stopped_early);
  EXPECT_EQ(first->steps, 15);
  interrupted.resume = true;
  // The state says what precision it was written in, and a resume in another one is refused:
  // it would not continue the same run.
  const std::string state = (fs::path(interrupted.out) / "train-state.pt").string();
  Result<std::string> saved_precision = SavedTrainingPrecision(state);
  ASSERT_TRUE(saved_precision.ok()) << saved_precision.status().message();
  EXPECT_EQ(*saved_precision, "fp32");
  TrainConfig other_precision = interrupted;
  other_precision.bf16_convolutions = true;
  Result<TrainSummary> refused = Train(other_precision, nullptr, nullptr);
  EXPECT_EQ(refused.status().code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("--training-precision fp32"), std::string::npos) << refused.status().message();
  EXPECT_EQ(SavedTrainingPrecision((fs::path(interrupted.out) / "model.json").string()).status().code(),
            Status::Code::kInvalidArgument);
  Result<TrainSummary> second = Train(interrupted, nullptr, nullptr);
  ASSERT_TRUE(second.ok()) << second.status().message();
  EXPECT_EQ(second->steps, 22);

  Result<LoadedModel> a = LoadModel(config_.out);
  Result<LoadedModel> b = LoadModel(interrupted.out);
  ASSERT_TRUE(a.ok() && b.ok());
  auto pa = a->net->named_parameters();
  auto pb = b->net->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
}

TEST_F(TinyTraining, BadConfigurationsAreRejected) {
  config_.out = (root_ / "bad").string();
  TrainConfig c = config_;
  c.height = 20;
  EXPECT_NE(Train(c, nullptr, nullptr).status().message().find("height"), std::string::npos);
  c = config_;
  c.data = "/nonexistent";
  EXPECT_EQ(Train(c, nullptr, nullptr).status().code(), Status::Code::kNotFound);
  c = config_;
  c.resume = true;
  EXPECT_EQ(Train(c, nullptr, nullptr).status().code(), Status::Code::kNotFound);
}

}  // namespace
}  // namespace spritediff
