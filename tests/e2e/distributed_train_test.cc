// Data-parallel `spritediffd train` (core/distributed.h): two ranks on 127.0.0.1, started here
// the way torchrun starts them (environment only), on a tiny copy of the real sprites.
//
// What is true, and tested: the ranks' weights are bit-identical after every step (checked by
// a checksum all-reduce inside the run, --verify-replicas), and the run equals one process that
// computes the same global batch as the two ranks would (--simulate-ranks 2). It does not equal a
// plain single process with the global batch: the model has BatchNorm, whose batch statistics
// each rank takes over its own rows only (as torch's DDP without SyncBatchNorm does); the
// simulated run takes them per half-batch too. Everything else (sample order, noise, timesteps,
// flips, context dropout) is the single-process draw for the global batch.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/checkpoint.h"
#include "core/distributed.h"
#include "tests/e2e/free_port.h"

namespace fs = std::filesystem;

namespace {

using spritediff::e2e::FreePort;

const std::string kBin = std::string(SPRITEDIFF_BIN_DIR) + "/spritediffd";
const int kImagesPerClass = 8;
const int kClasses = 2;
const int kBatchPerRank = 2;
const int kEpochs = 2;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A spritediffd process with its stdout+stderr in `log`.
struct Proc {
  pid_t pid = -1;
  fs::path log;
};

Proc Start(const std::vector<std::string>& args, const std::map<std::string, std::string>& env, const fs::path& log) {
  Proc p;
  p.log = log;
  p.pid = fork();
  if (p.pid == 0) {
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    FILE* f = fopen(log.c_str(), "w");
    dup2(fileno(f), 1);
    dup2(fileno(f), 2);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(kBin.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(kBin.c_str(), argv.data());
    _exit(127);
  }
  return p;
}

// Exit code, or -1 when it ran past `timeout_s` (then it is killed).
int Wait(Proc& p, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(p.pid, &status, WNOHANG);
    if (r == p.pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (std::chrono::steady_clock::now() > deadline) {
      kill(p.pid, SIGKILL);
      waitpid(p.pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::map<std::string, std::string> RankEnv(int port, int rank, int world = 2) {
  return {{"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)},
          {"WORLD_SIZE", std::to_string(world)},
          {"RANK", std::to_string(rank)},
          {"LOCAL_RANK", "0"}};
}

// Per-step losses from the progress lines ("step N loss X").
std::vector<double> StepLosses(const std::string& log) {
  std::vector<double> out;
  std::regex re("step (\\d+) loss ([0-9.]+)");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator(); ++it) {
    out.push_back(std::stod((*it)[2]));
  }
  return out;
}

// Sets environment variables for one test and restores them after.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::string>& vars) {
    for (const char* k : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SPRITEDIFF_DIST_TIMEOUT_S"}) {
      const char* v = getenv(k);
      saved_[k] = v ? std::optional<std::string>(v) : std::nullopt;
      unsetenv(k);
    }
    for (const auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  }
  ~ScopedEnv() {
    for (const auto& [k, v] : saved_) {
      if (v) setenv(k.c_str(), v->c_str(), 1);
      else unsetenv(k.c_str());
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST(DistributedFromEnv, NoWorldSizeIsOneProcess) {
  ScopedEnv env({});
  auto c = spritediff::DistributedFromEnv();
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_FALSE(c->enabled());
  EXPECT_EQ(c->timeout_s, spritediff::kDefaultDistTimeoutS);
  EXPECT_LE(c->timeout_s, 300);
}

TEST(DistributedFromEnv, ReadsTheTorchrunVariablesAndTheTimeout) {
  ScopedEnv env({{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.1"},
                 {"MASTER_PORT", "29500"}, {"SPRITEDIFF_DIST_TIMEOUT_S", "42"}});
  auto c = spritediff::DistributedFromEnv();
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->enabled());
  EXPECT_EQ(c->world_size, 4);
  EXPECT_EQ(c->rank, 3);
  EXPECT_EQ(c->local_rank, 1);
  EXPECT_EQ(c->master_addr, "10.0.0.1");
  EXPECT_EQ(c->master_port, 29500);
  EXPECT_EQ(c->timeout_s, 42);
  EXPECT_EQ(spritediff::DistributedFromEnv(7)->timeout_s, 7) << "the flag wins over the environment";
}

TEST(DistributedFromEnv, BadValuesNameTheVariable) {
  const std::map<std::string, std::string> good = {
      {"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}};
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"RANK", "2"}, {"RANK", "-1"}, {"WORLD_SIZE", "two"}, {"MASTER_PORT", "70000"}, {"MASTER_ADDR", ""},
      {"SPRITEDIFF_DIST_TIMEOUT_S", "0"}};
  for (const auto& [key, value] : bad) {
    auto vars = good;
    vars[key] = value;
    ScopedEnv env(vars);
    auto c = spritediff::DistributedFromEnv();
    ASSERT_FALSE(c.ok()) << key << "=" << value;
    EXPECT_NE(c.status().message().find(key), std::string::npos) << c.status().message();
  }
}

TEST(TensorChecksum, SeesEveryBit) {
  torch::Tensor a = torch::randn({100});
  torch::Tensor b = a.clone();
  EXPECT_EQ(spritediff::TensorChecksum({a}), spritediff::TensorChecksum({b}));
  // The smallest change a float can take, in one element.
  b[57] = std::nextafter(b[57].item<float>(), 1e9f);
  EXPECT_NE(spritediff::TensorChecksum({a}), spritediff::TensorChecksum({b}));
}

class DistributedTrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("spritediff-dist-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // A tiny subset of the real data set: the first images of two classes.
    const fs::path src = SPRITEDIFF_DATA_DIR;
    for (const char* label : {"food", "hero"}) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(src / label)) {
        if (e.path().extension() == ".png") files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      ASSERT_GE(files.size(), static_cast<size_t>(kImagesPerClass));
      fs::create_directories(dir_ / "data" / label);
      for (int i = 0; i < kImagesPerClass; ++i) fs::copy_file(files[i], dir_ / "data" / label / files[i].filename());
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> TrainArgs(const fs::path& out, int epochs = kEpochs) const {
    return {"--threads", "1", "--device", "cpu", "train", "--data", (dir_ / "data").string(), "--out", out.string(),
            "--n-feat", "8", "--epochs", std::to_string(epochs), "--batch-size", std::to_string(kBatchPerRank),
            "--ema-decay", "0", "--grid-per-label", "0", "--log-every", "1", "--seed", "5", "--timesteps", "100"};
  }

  fs::path dir_;
};

std::vector<std::string> Plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

double MaxWeightDiff(const fs::path& a, const fs::path& b) {
  auto ma = spritediff::LoadModel(a.string());
  auto mb = spritediff::LoadModel(b.string());
  EXPECT_TRUE(ma.ok()) << ma.status().message();
  EXPECT_TRUE(mb.ok()) << mb.status().message();
  if (!ma.ok() || !mb.ok()) return 1e9;
  auto pa = ma->net->named_parameters();
  auto pb = mb->net->named_parameters();
  double worst = 0;
  for (const auto& p : pa) worst = std::max(worst, (p.value() - pb[p.key()]).abs().max().item<double>());
  for (const auto& buf : ma->net->named_buffers()) {
    if (!buf.value().is_floating_point()) continue;
    worst = std::max(worst, (buf.value() - mb->net->named_buffers()[buf.key()]).abs().max().item<double>());
  }
  return worst;
}

TEST_F(DistributedTrainTest, TwoRanksStayIdenticalAndEqualOneProcessComputingTheSameGlobalBatch) {
  const int port = FreePort();
  const fs::path out_dp = dir_ / "dp", out_rank1 = dir_ / "rank1-out", out_ref = dir_ / "ref", out_one = dir_ / "one";
  // Rank 1 gets its own --out so the test sees that it writes nothing.
  // Buckets of 2 KB: the tiny model's gradients travel in dozens of all-reduces, launched from
  // the backward hooks as they fill, so bucketing and its ordering are exercised.
  const std::vector<std::string> dp_flags = {"--verify-replicas", "--dist-timeout", "60", "--bucket-mb", "0.002"};
  Proc r0 = Start(Plus(TrainArgs(out_dp), dp_flags), RankEnv(port, 0),
                  dir_ / "rank0.log");
  Proc r1 = Start(Plus(TrainArgs(out_rank1), dp_flags), RankEnv(port, 1),
                  dir_ / "rank1.log");
  Proc ref = Start(Plus(TrainArgs(out_ref), {"--simulate-ranks", "2"}), {}, dir_ / "ref.log");
  Proc one = Start(TrainArgs(out_one), {}, dir_ / "one.log");
  ASSERT_EQ(Wait(r0, 300), 0) << ReadFile(r0.log);
  ASSERT_EQ(Wait(r1, 300), 0) << ReadFile(r1.log);
  ASSERT_EQ(Wait(ref, 300), 0) << ReadFile(ref.log);
  ASSERT_EQ(Wait(one, 300), 0) << ReadFile(one.log);

  const std::string log0 = ReadFile(r0.log), log1 = ReadFile(r1.log), log_ref = ReadFile(ref.log);
  const int global_batch = 2 * kBatchPerRank;
  const int steps = kEpochs * (kClasses * kImagesPerClass / global_batch);
  EXPECT_NE(log0.find("world size 2 (this is rank 0), batch 2 per rank, global batch 4"), std::string::npos) << log0;
  // (a) the checksum all-reduce after every step found the replicas identical, on both ranks.
  const std::string identical = "replicas bit-identical on all 2 ranks after each of " + std::to_string(steps) + " steps";
  EXPECT_NE(log0.find(identical), std::string::npos) << log0;
  EXPECT_NE(log1.find(identical), std::string::npos) << log1;
  // Rank 0 alone writes.
  EXPECT_TRUE(fs::exists(out_dp / "model.json"));
  EXPECT_TRUE(fs::exists(out_dp / "train-state.pt"));
  EXPECT_FALSE(fs::exists(out_rank1)) << "rank 1 wrote files";

  // (b) the loss at every step and the final weights equal the one-process computation.
  const std::vector<double> dp_losses = StepLosses(log0), ref_losses = StepLosses(log_ref);
  ASSERT_EQ(dp_losses.size(), static_cast<size_t>(steps));
  ASSERT_EQ(ref_losses.size(), dp_losses.size());
  for (size_t i = 0; i < dp_losses.size(); ++i) EXPECT_NEAR(dp_losses[i], ref_losses[i], 2e-5) << "step " << i + 1;
  const double diff_ref = MaxWeightDiff(out_dp, out_ref);
  EXPECT_LE(diff_ref, 1e-6) << "max |w_dp - w_ref|";
  // ... and differ from a process that trained on one rank's share: the ranks' gradients were combined.
  const double diff_one = MaxWeightDiff(out_dp, out_one);
  std::cout << "max |w| difference: 2 ranks vs one process simulating them " << diff_ref
            << ", 2 ranks vs one rank's share alone " << diff_one << "\n";
  EXPECT_GT(diff_one, 1e-4) << "max |w_dp - w_one_rank|";

  // Resume refuses another world size and says why; the same split (2 ranks, here simulated) resumes.
  Proc wrong = Start(Plus(TrainArgs(out_dp, kEpochs + 1), {"--resume"}), {}, dir_ / "wrong.log");
  EXPECT_NE(Wait(wrong, 120), 0);
  EXPECT_NE(ReadFile(wrong.log).find("written by a run on 2 rank(s)"), std::string::npos) << ReadFile(wrong.log);
  EXPECT_NE(ReadFile(wrong.log).find("WORLD_SIZE=2"), std::string::npos) << ReadFile(wrong.log);
}

TEST_F(DistributedTrainTest, ARankThatNeverArrivesFailsTheOtherWithinTheTimeoutNamingIt) {
  const int port = FreePort();
  const auto start = std::chrono::steady_clock::now();
  Proc r0 = Start(Plus(TrainArgs(dir_ / "out"), {"--dist-timeout", "3"}), RankEnv(port, 0), dir_ / "rank0.log");
  EXPECT_NE(Wait(r0, 60), -1) << "rank 0 hung";
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string log = ReadFile(r0.log);
  EXPECT_NE(log.find("rank 1 of 2 did not arrive"), std::string::npos) << log;
  EXPECT_GE(waited, 3.0);
  // And the other way round: rank 1 alone names rank 0.
  Proc r1 = Start(Plus(TrainArgs(dir_ / "out"), {"--dist-timeout", "3"}), RankEnv(FreePort(), 1), dir_ / "rank1.log");
  EXPECT_NE(Wait(r1, 60), -1) << "rank 1 hung";
  EXPECT_NE(ReadFile(r1.log).find("rank 0 never arrived"), std::string::npos) << ReadFile(r1.log);
}

TEST_F(DistributedTrainTest, AKilledRankFailsTheOtherNamingIt) {
  const int port = FreePort();
  Proc r0 = Start(Plus(TrainArgs(dir_ / "out", 100000), {"--dist-timeout", "30"}), RankEnv(port, 0), dir_ / "rank0.log");
  Proc r1 = Start(Plus(TrainArgs(dir_ / "out1", 100000), {"--dist-timeout", "30"}), RankEnv(port, 1), dir_ / "rank1.log");
  // Wait until training runs, then kill rank 1 the hard way.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (StepLosses(ReadFile(r0.log)).size() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GE(StepLosses(ReadFile(r0.log)).size(), 3u) << ReadFile(r0.log);
  kill(r1.pid, SIGKILL);
  Wait(r1, 10);
  const int rc = Wait(r0, 60);
  EXPECT_NE(rc, -1) << "rank 0 hung after rank 1 died";
  EXPECT_NE(rc, 0);
  const std::string log = ReadFile(r0.log);
  EXPECT_NE(log.find("rank 1 is gone"), std::string::npos) << log;
}

TEST_F(DistributedTrainTest, CtrlCOnOneRankStopsBothWithAResumableState) {
  const int port = FreePort();
  Proc r0 = Start(Plus(TrainArgs(dir_ / "out", 100000), {"--dist-timeout", "30"}), RankEnv(port, 0), dir_ / "rank0.log");
  Proc r1 = Start(Plus(TrainArgs(dir_ / "out1", 100000), {"--dist-timeout", "30"}), RankEnv(port, 1), dir_ / "rank1.log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (StepLosses(ReadFile(r0.log)).size() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GE(StepLosses(ReadFile(r0.log)).size(), 3u) << ReadFile(r0.log);
  kill(r1.pid, SIGINT);  // only rank 1 is interrupted
  EXPECT_EQ(Wait(r1, 60), 0) << ReadFile(r1.log);
  EXPECT_EQ(Wait(r0, 60), 0) << ReadFile(r0.log);
  EXPECT_NE(ReadFile(r0.log).find("state saved; continue with --resume"), std::string::npos) << ReadFile(r0.log);
  EXPECT_TRUE(fs::exists(dir_ / "out" / "train-state.pt"));
  EXPECT_FALSE(fs::exists(dir_ / "out1"));

  // Both ranks resume from rank 0's state (rank 1 reads it as it would on shared storage) and
  // finish two more epochs.
  std::smatch m;
  const std::string log0 = ReadFile(r0.log);
  ASSERT_TRUE(std::regex_search(log0, m, std::regex("stopped after (\\d+) epochs"))) << log0;
  const int target = std::stoi(m[1]) + 2;
  const std::string state = (dir_ / "out" / "train-state.pt").string();
  const int port2 = FreePort();
  Proc q0 = Start(Plus(TrainArgs(dir_ / "out", target), {"--resume", "--dist-timeout", "30"}), RankEnv(port2, 0),
                  dir_ / "resume0.log");
  Proc q1 = Start(Plus(TrainArgs(dir_ / "out1", target), {"--resume", "--state", state, "--dist-timeout", "30"}),
                  RankEnv(port2, 1), dir_ / "resume1.log");
  EXPECT_EQ(Wait(q0, 120), 0) << ReadFile(q0.log);
  EXPECT_EQ(Wait(q1, 120), 0) << ReadFile(q1.log);
  EXPECT_NE(ReadFile(q0.log).find("done: " + std::to_string(target) + " epochs"), std::string::npos)
      << ReadFile(q0.log);
}

}  // namespace
