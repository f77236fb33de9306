#include "core/torch_import.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/dataset.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(SPRITEDIFF_SOURCE_DIR) + "/tests/fixtures/";

torch::Tensor Npy(const std::string& name) {
  Result<NpyArray> arr = ReadNpy(kFixtures + name);
  EXPECT_TRUE(arr.ok()) << arr.status().message();
  EXPECT_EQ(arr->dtype, "<f4");
  return torch::from_blob(arr->data.data(), arr->shape, torch::kFloat32).clone();
}

ImportOptions TinyOptions() {
  ImportOptions o;
  o.name = "course-tiny";
  o.labels = {"hero", "non_hero", "food", "spell", "side_facing"};
  o.n_feat = 8;
  o.height = 16;
  return o;
}

TEST(TorchImport, CourseCheckpointPredictsTheReferenceNoise) {
  Result<StateDict> state = ReadTorchStateDict(kFixtures + "course-tiny.pth");
  ASSERT_TRUE(state.ok()) << state.status().message();
  Result<ImportResult> imported = ImportStateDict(*state, TinyOptions());
  ASSERT_TRUE(imported.ok()) << imported.status().message();
  ASSERT_EQ(imported->notes.size(), 1u);
  EXPECT_NE(imported->notes[0].find("init_conv.shortcut.weight"), std::string::npos);
  torch::NoGradGuard no_grad;
  const torch::Tensor eps = imported->model.net->forward(Npy("course-tiny-x.npy"), Npy("course-tiny-t.npy"),
                                                         Npy("course-tiny-c.npy"));
  const torch::Tensor expected = Npy("course-tiny-eps.npy");
  EXPECT_LT((eps - expected).abs().max().item<double>(), 1e-5);
}

TEST(TorchImport, PrefixedNamesMapAndProblemsAreListed) {
  Result<StateDict> state = ReadTorchStateDict(kFixtures + "course-tiny.pth");
  ASSERT_TRUE(state.ok());
  StateDict prefixed;
  for (const auto& [k, v] : *state) prefixed.emplace_back("nn_model." + k, v);
  Result<ImportResult> ok = ImportStateDict(prefixed, TinyOptions());
  ASSERT_TRUE(ok.ok()) << ok.status().message();

  StateDict extra = *state;
  extra.emplace_back("bogus.weight", torch::zeros({2}));
  Result<ImportResult> bad = ImportStateDict(extra, TinyOptions());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unexpected keys: bogus.weight"), std::string::npos) << bad.status().message();

  ImportOptions wide = TinyOptions();
  wide.n_feat = 16;
  Result<ImportResult> wrong = ImportStateDict(*state, wide);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("init_conv.conv1.0.weight is [8, 3, 3, 3], expected [16, 3, 3, 3]"),
            std::string::npos) << wrong.status().message();

  StateDict partial(state->begin() + 2, state->end());
  Result<ImportResult> missing = ImportStateDict(partial, TinyOptions());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing keys"), std::string::npos);
}

TEST(TorchImport, NonCheckpointsAndTruncatedFilesAreClearErrors) {
  const fs::path dir = fs::temp_directory_path() / ("spritediff_import_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "text.pth") << "hello, not a checkpoint";
  Result<StateDict> text = ReadTorchStateDict((dir / "text.pth").string());
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("not a PyTorch checkpoint"), std::string::npos);

  fs::copy_file(kFixtures + "course-tiny.pth", dir / "cut.pth");
  fs::resize_file(dir / "cut.pth", fs::file_size(dir / "cut.pth") / 2);
  Result<StateDict> cut = ReadTorchStateDict((dir / "cut.pth").string());
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.status().message().find("cut.pth"), std::string::npos);

  EXPECT_EQ(ReadTorchStateDict((dir / "absent.pth").string()).status().code(), Status::Code::kNotFound);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace spritediff
