// PublishModel: the staging dir becomes the served model with a card, and a publish that
// completed just before a crash is recognised on the resumed run, whose card then gives the
// same resume count as GetJob (issue 13: 8; before, the card kept the count from before the
// crash).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/checkpoint.h"
#include "core/model.h"
#include "server/model_publisher.h"
#include "server/model_registry.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

std::string ReadText(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A job record and its staged model, as the training worker leaves them before publishing.
v1::Job StageJob(const fs::path& job_dir, const std::string& id, const std::string& name) {
  v1::Job job;
  job.set_id(id);
  job.mutable_spec()->set_model_name(name);
  job.mutable_spec()->set_n_feat(8);
  job.mutable_spec()->set_image_size(16);
  ModelInfo info;
  info.name = name;
  info.arch.n_feat = 8;
  info.arch.height = 16;
  info.labels = {"food", "hero"};
  info.arch.n_cfeat = 2;
  info.provenance["command"] = "Training.SubmitJob " + id + " {}";
  torch::manual_seed(1);
  ContextUnet net(info.arch);
  net->eval();
  Status saved = SaveModel((job_dir / "model").string(), info, net);
  EXPECT_TRUE(saved.ok()) << saved.message();
  return job;
}

class ModelPublisherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("spritediff-publish-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "models");
    registry_ = std::make_unique<ModelRegistry>((root_ / "models").string(), "none", torch::kCPU, SchedulerLimits{});
  }
  void TearDown() override {
    registry_.reset();
    fs::remove_all(root_);
  }
  fs::path root_;
  std::unique_ptr<ModelRegistry> registry_;
};

TEST_F(ModelPublisherTest, RepublishAfterACrashRewritesTheCardWithTheResumeCount) {
  const fs::path job_dir = root_ / "state" / "jobs" / "job-000007";
  v1::Job job = StageJob(job_dir, "job-000007", "pub");
  Status first = PublishModel(job, job_dir.string(), (root_ / "models").string(), *registry_);
  ASSERT_TRUE(first.ok()) << first.message();
  ASSERT_NE(registry_->Find("pub"), nullptr);
  const fs::path card = root_ / "models" / "pub" / "README.md";
  EXPECT_NE(ReadText(card).find("| resumed after daemon restarts (GetJob `resumes`) | 0 |"), std::string::npos)
      << ReadText(card);
  EXPECT_FALSE(fs::exists(job_dir / "model"));

  // kill -9 after the rename, before the record said SUCCEEDED: the next start resumes the
  // job (resumes 1) and publishes again; the model is this job's, so it is kept and served.
  job.set_resumes(1);
  ModelRegistry after_restart((root_ / "models").string(), "none", torch::kCPU, SchedulerLimits{});
  ASSERT_TRUE(PublishModel(job, job_dir.string(), (root_ / "models").string(), after_restart).ok());
  EXPECT_NE(after_restart.Find("pub"), nullptr);
  EXPECT_NE(ReadText(card).find("| resumed after daemon restarts (GetJob `resumes`) | 1 |"), std::string::npos)
      << ReadText(card);
  after_restart.StopAll();
}

TEST_F(ModelPublisherTest, AnotherJobsModelUnderTheNameIsNotTaken) {
  const fs::path first_dir = root_ / "state" / "jobs" / "job-000001";
  ASSERT_TRUE(
      PublishModel(StageJob(first_dir, "job-000001", "taken"), first_dir.string(), (root_ / "models").string(), *registry_)
          .ok());
  const std::string card_before = ReadText(root_ / "models" / "taken" / "README.md");
  // A second job with the same target, whose staging is gone: not its model, so it fails and
  // leaves the first job's card alone.
  v1::Job other;
  other.set_id("job-000002");
  other.mutable_spec()->set_model_name("taken");
  Status s = PublishModel(other, (root_ / "state" / "jobs" / "job-000002").string(), (root_ / "models").string(),
                          *registry_);
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition) << s.message();
  EXPECT_EQ(ReadText(root_ / "models" / "taken" / "README.md"), card_before);
}

}  // namespace
}  // namespace spritediff
