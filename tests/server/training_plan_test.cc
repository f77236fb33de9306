// Planning a training job (cheap, on the RPC thread) and checking its dataset (on the worker):
// defaults come from the trainer's TrainConfig, names and ranges are refused by field, a path
// that leaves the data root is refused at once, and a dataset that is missing, unreadable or
// too small is an error naming the dataset and its path. Datasets are copies of a few real
// sprites.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "server/model_registry.h"
#include "tests/server/test_data.h"
#include "server/training_plan.h"

#include "core/runtime.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

class TrainingPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("spritediff-plan-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "data");
    fs::create_directories(root_ / "models");
    fs::create_directories(root_ / "outside");
    // data/small: 2 classes of 3 real sprites each.
    testing::CopyRealSprites(root_ / "data" / "small", {"food", "hero"}, 3);
    fs::create_symlink(root_ / "outside", root_ / "data" / "link-out");
    limits_.data_root = (root_ / "data").string();
    limits_.models_dir = (root_ / "models").string();
    limits_.state_dir = (root_ / "state").string();
    registry_ = std::make_unique<ModelRegistry>(limits_.models_dir, "none", torch::kCPU, SchedulerLimits{});
  }
  void TearDown() override { fs::remove_all(root_); }

  v1::JobSpec Spec(const std::string& dataset) {
    v1::JobSpec spec;
    spec.set_model_name("mine");
    spec.set_dataset(dataset);
    return spec;
  }

  fs::path root_;
  TrainingLimits limits_;
  std::unique_ptr<ModelRegistry> registry_;
};

TEST_F(TrainingPlanTest, DefaultsAreTheTrainersOwn) {
  Result<TrainingPlan> plan = PlanTraining(Spec("small"), limits_, *registry_);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const TrainConfig d;
  const v1::JobSpec& s = plan->spec;
  EXPECT_EQ(static_cast<int>(s.image_size()), d.height);
  EXPECT_EQ(static_cast<int>(s.n_feat()), d.n_feat);
  EXPECT_EQ(static_cast<int>(s.epochs()), d.epochs);
  EXPECT_EQ(static_cast<int>(s.batch_size()), d.batch_size);
  EXPECT_FLOAT_EQ(s.lr(), static_cast<float>(d.lr));
  EXPECT_FLOAT_EQ(s.context_dropout(), static_cast<float>(d.context_dropout));
  EXPECT_FLOAT_EQ(s.ema_decay(), static_cast<float>(d.ema_decay));
  EXPECT_EQ(static_cast<int>(s.checkpoint_every()), d.checkpoint_every);
  EXPECT_EQ(s.class_balance(), d.class_balance);
  EXPECT_EQ(plan->dataset_path, fs::canonical(root_ / "data" / "small").string());
  // The config a worker trains with carries the spec's fields.
  const TrainConfig tc = TrainConfigFor(s, (root_ / "state" / "jobs" / "job-000001").string(), "cpu");
  EXPECT_EQ(tc.epochs, d.epochs);
  EXPECT_EQ(tc.batch_size, d.batch_size);
  EXPECT_EQ(tc.out, (root_ / "state" / "jobs" / "job-000001" / "model").string());
  EXPECT_EQ(s.precision(), "fp32") << "the server's training_precision when the spec names none";
  EXPECT_FALSE(tc.bf16_convolutions);
}

TEST_F(TrainingPlanTest, PrecisionComesFromTheSpecOrTheServer) {
  TrainingLimits bf16_server = limits_;
  bf16_server.training_precision = "bf16";
  Result<TrainingPlan> plan = PlanTraining(Spec("small"), bf16_server, *registry_);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->spec.precision(), "bf16");
  EXPECT_TRUE(TrainConfigFor(plan->spec, (root_ / "j").string(), "cpu").bf16_convolutions);
  v1::JobSpec spec = Spec("small");
  spec.set_precision("fp32");
  plan = PlanTraining(spec, bf16_server, *registry_);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_FALSE(TrainConfigFor(plan->spec, (root_ / "j").string(), "cpu").bf16_convolutions);
  // "auto" is stored as what this server's device runs.
  spec.set_precision("auto");
  plan = PlanTraining(spec, limits_, *registry_);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->spec.precision(), CpuHasNativeBFloat16() ? "bf16" : "fp32");
  // A hostile value is refused with a short, escaped echo.
  spec.set_precision("\n" + std::string(100000, 'x'));
  plan = PlanTraining(spec, limits_, *registry_);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("precision"), std::string::npos) << plan.status().message();
  EXPECT_LT(plan.status().message().size(), 200u);
  EXPECT_EQ(plan.status().message().find('\n'), std::string::npos);
  spec.set_precision("fp32");
  plan = PlanTraining(spec, limits_, *registry_);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  // A job recorded before the field existed has none, and keeps float32.
  plan->spec.clear_precision();
  EXPECT_FALSE(TrainConfigFor(plan->spec, (root_ / "j").string(), "cpu").bf16_convolutions);
}

TEST_F(TrainingPlanTest, BadFieldsAreRefusedByName) {
  struct Case {
    std::function<void(v1::JobSpec&)> edit;
    Status::Code code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](v1::JobSpec& s) { s.set_model_name("../x"); }, Status::Code::kInvalidArgument, "model_name"},
      {[](v1::JobSpec& s) { s.set_image_size(24); }, Status::Code::kInvalidArgument, "image_size"},
      {[](v1::JobSpec& s) { s.set_batch_size(1); }, Status::Code::kInvalidArgument, "batch_size"},
      {[](v1::JobSpec& s) { s.set_lr(0); }, Status::Code::kInvalidArgument, "lr"},
      {[](v1::JobSpec& s) { s.set_class_balance("log"); }, Status::Code::kInvalidArgument, "class_balance"},
      {[](v1::JobSpec& s) { s.set_precision("fp16"); }, Status::Code::kInvalidArgument, "precision"},
      {[](v1::JobSpec& s) { s.set_base_model("nope"); }, Status::Code::kNotFound, "base_model"},
      {[](v1::JobSpec& s) { s.set_dataset(""); }, Status::Code::kInvalidArgument, "dataset"},
      {[](v1::JobSpec& s) { s.set_dataset("../outside"); }, Status::Code::kPermissionDenied, "data root"},
      {[](v1::JobSpec& s) { s.set_dataset("/etc"); }, Status::Code::kPermissionDenied, "data root"},
      {[](v1::JobSpec& s) { s.set_dataset("link-out"); }, Status::Code::kPermissionDenied, "data root"},
  };
  for (const Case& c : cases) {
    v1::JobSpec spec = Spec("small");
    c.edit(spec);
    Result<TrainingPlan> plan = PlanTraining(spec, limits_, *registry_);
    ASSERT_FALSE(plan.ok()) << spec.ShortDebugString();
    EXPECT_EQ(plan.status().code(), c.code) << plan.status().message();
    EXPECT_NE(plan.status().message().find(c.needle), std::string::npos) << plan.status().message();
  }
  fs::create_directories(root_ / "models" / "taken");
  v1::JobSpec spec = Spec("small");
  spec.set_model_name("taken");
  EXPECT_EQ(PlanTraining(spec, limits_, *registry_).status().code(), Status::Code::kAlreadyExists);
}

TEST_F(TrainingPlanTest, AMissingDatasetIsRefusedWhilePlanningAndReadOnlyOnTheWorker) {
  // Planning stats the dataset (a missing one or a file is refused at once, naming it) but does
  // not scan it.
  Result<TrainingPlan> plan = PlanTraining(Spec("nope"), limits_, *registry_);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(plan.status().message().find("dataset 'nope'"), std::string::npos) << plan.status().message();
  EXPECT_NE(plan.status().message().find((root_ / "data" / "nope").string()), std::string::npos)
      << plan.status().message();
  std::ofstream(root_ / "data" / "a-file") << "x";
  plan = PlanTraining(Spec("a-file"), limits_, *registry_);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("not a directory"), std::string::npos) << plan.status().message();
  // One that goes away after planning (or before a restarted job resumes) is the worker's to report.
  fs::create_directories(root_ / "data" / "gone");
  plan = PlanTraining(Spec("gone"), limits_, *registry_);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  fs::remove(root_ / "data" / "gone");
  Status missing = CheckDataset(plan->spec, plan->dataset_path, limits_.data_root, 0);
  EXPECT_EQ(missing.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(missing.message().find(plan->dataset_path), std::string::npos) << missing.message();

  // The real copy reads; it has 6 images, so a batch of 8 is refused, naming both numbers.
  v1::JobSpec spec = Spec("small");
  spec.set_batch_size(8);
  plan = PlanTraining(spec, limits_, *registry_);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  Status small = CheckDataset(plan->spec, plan->dataset_path, limits_.data_root, 0);
  EXPECT_EQ(small.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(small.message().find("6 images"), std::string::npos) << small.message();
  spec.set_batch_size(4);
  plan = PlanTraining(spec, limits_, *registry_);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(CheckDataset(plan->spec, plan->dataset_path, limits_.data_root, 0).ok());
  // A fine-tune must keep the label count.
  Status labels = CheckDataset(plan->spec, plan->dataset_path, limits_.data_root, 5);
  EXPECT_EQ(labels.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(labels.message().find("5 labels"), std::string::npos) << labels.message();

  // A link inside the dataset that leads out of the root is found by the worker's scan.
  fs::create_symlink(root_ / "outside", root_ / "data" / "small" / "food" / "sneaky");
  Status sneaky = CheckDataset(plan->spec, plan->dataset_path, limits_.data_root, 0);
  EXPECT_EQ(sneaky.code(), Status::Code::kPermissionDenied);
  EXPECT_NE(sneaky.message().find("links outside"), std::string::npos) << sneaky.message();
}

}  // namespace
}  // namespace spritediff
