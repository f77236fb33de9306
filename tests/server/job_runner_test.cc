// JobRunner in-process: SubmitJob's work is cheap (the dataset is read by the worker, and a
// bad one ends the job FAILED with its path), CancelJob answers at once with cancel_requested
// and the job then ends CANCELLED, and job.json follows the record. Waits are on the runner's
// own change notifications, not on time.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "server/job_runner.h"
#include "server/model_registry.h"
#include "tests/server/test_data.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

class JobRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("spritediff-jobs-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "models");
    testing::CopyRealSprites(root_ / "data" / "small", {"food", "hero"}, 3);
    limits_.data_root = (root_ / "data").string();
    limits_.models_dir = (root_ / "models").string();
    limits_.state_dir = (root_ / "state").string();
    limits_.max_concurrent_jobs = 1;
    registry_ = std::make_unique<ModelRegistry>(limits_.models_dir, "none", torch::kCPU, SchedulerLimits{});
    runner_ = std::make_unique<JobRunner>(limits_, *registry_);
    ASSERT_TRUE(runner_->Start().ok());
  }
  void TearDown() override {
    runner_.reset();
    registry_.reset();
    fs::remove_all(root_);
  }

  v1::Job Submit(const std::string& name, const std::string& dataset, uint32_t epochs) {
    v1::JobSpec spec;
    spec.set_model_name(name);
    spec.set_dataset(dataset);
    spec.set_n_feat(8);
    spec.set_batch_size(2);
    spec.set_epochs(epochs);
    spec.set_checkpoint_every(100000);
    Result<TrainingPlan> plan = runner_->Plan(spec);
    EXPECT_TRUE(plan.ok()) << plan.status().message();
    v1::Job job;
    Status s = runner_->Submit(std::move(*plan), &job);
    EXPECT_TRUE(s.ok()) << s.message();
    return job;
  }

  // Blocks until pred(job) holds, woken by the runner's listener; false after 120 s.
  template <typename Pred>
  bool WaitJob(const std::string& id, Pred pred) {
    std::mutex mu;
    std::condition_variable cv;
    const uint64_t token = runner_->Subscribe(id, [&] {
      std::lock_guard<std::mutex> lock(mu);
      cv.notify_all();
    });
    EXPECT_NE(token, 0u);
    bool held = false;
    {
      std::unique_lock<std::mutex> lock(mu);
      held = cv.wait_for(lock, std::chrono::seconds(120), [&] {
        JobRunner::Snapshot snap;
        return runner_->GetSnapshot(id, &snap) && pred(snap.job);
      });
    }
    runner_->Unsubscribe(id, token);
    return held;
  }

  v1::Job OnDisk(const std::string& id) {
    std::ifstream in(root_ / "state" / "jobs" / id / "job.json");
    std::stringstream text;
    text << in.rdbuf();
    v1::Job job;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(text.str(), &job).ok()) << text.str();
    return job;
  }

  // job.json is written after the runner's lock is released, so it may trail what Get shows
  // by a moment: wait for the record on disk to reach the state.
  v1::JobState OnDiskState(const std::string& id, v1::JobState want) {
    v1::JobState seen = v1::JOB_STATE_UNSPECIFIED;
    for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
         std::chrono::steady_clock::now() < until; std::this_thread::sleep_for(std::chrono::milliseconds(5))) {
      seen = OnDisk(id).state();
      if (seen == want) break;
    }
    return seen;
  }

  fs::path root_;
  TrainingLimits limits_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<JobRunner> runner_;
};

TEST_F(JobRunnerTest, AMissingDatasetIsRefusedAtOnceAndOneThatVanishesFailsOnTheWorkerWithItsPath) {
  v1::JobSpec missing;
  missing.set_model_name("mine");
  missing.set_dataset("nope");
  Result<TrainingPlan> refused = runner_->Plan(missing);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find((root_ / "data" / "nope").string()), std::string::npos)
      << refused.status().message();
  // There when the job was submitted, gone when the worker reads it.
  std::filesystem::create_directories(root_ / "data" / "vanishing");
  v1::JobSpec spec;
  spec.set_model_name("mine");
  spec.set_dataset("vanishing");
  spec.set_n_feat(8);
  spec.set_batch_size(2);
  spec.set_epochs(2);
  Result<TrainingPlan> plan = runner_->Plan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  std::filesystem::remove(root_ / "data" / "vanishing");
  v1::Job job;
  ASSERT_TRUE(runner_->Submit(std::move(*plan), &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(WaitJob(job.id(), [](const v1::Job& j) { return j.state() == v1::JOB_STATE_FAILED; }));
  v1::Job failed;
  ASSERT_TRUE(runner_->Get(job.id(), &failed).ok());
  EXPECT_NE(failed.message().find((root_ / "data" / "vanishing").string()), std::string::npos) << failed.message();
  EXPECT_NE(failed.message().find("no such file"), std::string::npos) << failed.message();
  EXPECT_EQ(OnDiskState(job.id(), v1::JOB_STATE_FAILED), v1::JOB_STATE_FAILED);
  // The name is free again: the failed job does not hold it.
  EXPECT_TRUE(runner_->Plan([] {
    v1::JobSpec s;
    s.set_model_name("mine");
    s.set_dataset("small");
    return s;
  }()).ok());
}

TEST_F(JobRunnerTest, CancelAnswersAtOnceAndTheRunningJobThenEndsCancelled) {
  const v1::Job running = Submit("long", "small", 100000);
  const v1::Job queued = Submit("waits", "small", 2);  // one slot: it queues behind
  ASSERT_TRUE(WaitJob(running.id(), [](const v1::Job& j) { return j.progress().step() > 0; }));

  v1::Job out;
  ASSERT_TRUE(runner_->Cancel(queued.id(), &out).ok());
  EXPECT_EQ(out.state(), v1::JOB_STATE_CANCELLED);

  ASSERT_TRUE(runner_->Cancel(running.id(), &out).ok());
  EXPECT_TRUE(out.cancel_requested());
  EXPECT_EQ(out.state(), v1::JOB_STATE_RUNNING);  // the trainer stops at its next step, not inside Cancel
  ASSERT_TRUE(WaitJob(running.id(), [](const v1::Job& j) { return j.state() == v1::JOB_STATE_CANCELLED; }));
  EXPECT_EQ(runner_->Cancel(running.id(), &out).code(), Status::Code::kFailedPrecondition);
  EXPECT_EQ(OnDiskState(running.id(), v1::JOB_STATE_CANCELLED), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(OnDiskState(queued.id(), v1::JOB_STATE_CANCELLED), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(fs::exists(root_ / "models" / "long"));
}

}  // namespace
}  // namespace spritediff
