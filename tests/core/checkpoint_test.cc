#include "core/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace spritediff {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("spritediff_ckpt_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    info_.name = "tiny";
    info_.arch.n_feat = 16;
    info_.arch.height = 16;
    info_.labels = {"a", "b", "c", "d", "e"};
    info_.provenance = {{"epochs", 3}};
  }
  void TearDown() override { fs::remove_all(dir_); }

  nlohmann::json ModelJson() const {
    std::ifstream in(dir_ / "model.json");
    return nlohmann::json::parse(in);
  }
  void WriteModelJson(const nlohmann::json& j) const { std::ofstream(dir_ / "model.json", std::ios::trunc) << j.dump(); }
  std::string WeightsFile() const { return (dir_ / ModelJson()["weights"].get<std::string>()).string(); }

  fs::path dir_;
  ModelInfo info_;
};

TEST_F(CheckpointTest, SaveLoadRoundTripGivesTheSamePredictions) {
  torch::manual_seed(3);
  ContextUnet net(info_.arch);
  net->eval();
  ASSERT_TRUE(SaveModel(dir_.string(), info_, net).ok());
  Result<LoadedModel> loaded = LoadModel(dir_.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_EQ(loaded->info.labels, info_.labels);
  EXPECT_EQ(loaded->info.arch.n_feat, 16);
  EXPECT_EQ(loaded->info.provenance["epochs"], 3);
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({4, 3, 16, 16});
  torch::Tensor t = torch::rand({4});
  torch::Tensor c = torch::rand({4, 5});
  EXPECT_TRUE(torch::equal(net->forward(x, t, c), loaded->net->forward(x, t, c)));
}

TEST_F(CheckpointTest, ResavingReplacesTheWeightsAndLeavesNoTemporaries) {
  ContextUnet net(info_.arch);
  ASSERT_TRUE(SaveModel(dir_.string(), info_, net).ok());
  const std::string first = WeightsFile();
  ASSERT_TRUE(SaveModel(dir_.string(), info_, net).ok());
  const std::string second = WeightsFile();
  EXPECT_NE(first, second);
  EXPECT_FALSE(fs::exists(first));
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().extension() == ".tmp", false) << e.path();
    ++files;
  }
  EXPECT_EQ(files, 2);  // model.json and one weights file
}

TEST_F(CheckpointTest, TruncatedWeightsGiveAClearError) {
  ContextUnet net(info_.arch);
  ASSERT_TRUE(SaveModel(dir_.string(), info_, net).ok());
  const std::string weights = WeightsFile();
  fs::resize_file(weights, fs::file_size(weights) / 3);
  Result<LoadedModel> loaded = LoadModel(dir_.string());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(weights), std::string::npos) << loaded.status().message();
}

TEST_F(CheckpointTest, ArchitectureMismatchListsTheShapes) {
  ContextUnet net(info_.arch);
  ASSERT_TRUE(SaveModel(dir_.string(), info_, net).ok());
  nlohmann::json j = ModelJson();
  j["architecture"]["n_feat"] = 24;
  WriteModelJson(j);
  Result<LoadedModel> loaded = LoadModel(dir_.string());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("init_conv.conv1.0.weight has shape"), std::string::npos)
      << loaded.status().message();
}

TEST_F(CheckpointTest, ArchitectureFieldsMustBeIntegersThatFitAnInt) {
  ContextUnet net(info_.arch);
  ASSERT_TRUE(SaveModel(dir_.string(), info_, net).ok());
  const nlohmann::json j = ModelJson();
  const int n_feat = j["architecture"]["n_feat"].get<int>();
  // 2^32 + n_feat wraps to n_feat in an int; a float truncates to it: both must be refused.
  for (const nlohmann::json& bad : {nlohmann::json(n_feat + 0.5), nlohmann::json((uint64_t{1} << 32) + n_feat),
                                    nlohmann::json(std::to_string(n_feat)), nlohmann::json(-(int64_t{1} << 40))}) {
    nlohmann::json edited = j;
    edited["architecture"]["n_feat"] = bad;
    WriteModelJson(edited);
    Result<LoadedModel> loaded = LoadModel(dir_.string());
    ASSERT_FALSE(loaded.ok()) << bad.dump();
    EXPECT_NE(loaded.status().message().find("architecture.n_feat must be an integer"), std::string::npos)
        << loaded.status().message();
  }
  // A value is echoed bounded, not at its size.
  nlohmann::json huge = j;
  huge["architecture"]["n_feat"] = std::string(500000, 'x');
  WriteModelJson(huge);
  Result<LoadedModel> refused = LoadModel(dir_.string());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("architecture.n_feat must be an integer"), std::string::npos);
  EXPECT_LT(refused.status().message().size(), 1000u);
  WriteModelJson(j);
  EXPECT_TRUE(LoadModel(dir_.string()).ok());
}

TEST_F(CheckpointTest, BadModelJsonIsRejected) {
  EXPECT_EQ(LoadModel(dir_.string()).status().code(), Status::Code::kNotFound);
  fs::create_directories(dir_);
  std::ofstream(dir_ / "model.json") << "{not json";
  EXPECT_FALSE(LoadModel(dir_.string()).ok());
  ModelInfo wrong = info_;
  wrong.labels.pop_back();
  ContextUnet net(info_.arch);
  Status s = SaveModel(dir_.string(), wrong, net);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("labels"), std::string::npos);
}

}  // namespace
}  // namespace spritediff
