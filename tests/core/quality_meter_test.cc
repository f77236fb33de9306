#include "core/quality_meter.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include <filesystem>
#include <fstream>

#include "core/classifier.h"
#include "core/runtime.h"
#include "core/sample_metrics.h"
#include "core/trainer.h"

namespace spritediff {
namespace {

namespace fs = std::filesystem;

torch::Tensor RandomSet(int64_t n, int64_t d, uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  // Correlated, non-isotropic features, as a network's would be.
  const torch::Tensor mix = torch::randn({d, d}, gen, torch::kFloat64);
  return torch::randn({n, d}, gen, torch::kFloat64).matmul(mix) + 0.5;
}

TEST(FrechetDistance, OfASetWithItselfIsZero) {
  const torch::Tensor a = RandomSet(200, 16, 1);
  EXPECT_NEAR(*FrechetDistance(a, a), 0.0, 1e-6 * a.var(0).sum().item<double>());
}

TEST(FrechetDistance, IsSymmetric) {
  const torch::Tensor a = RandomSet(150, 12, 2), b = RandomSet(90, 12, 3);
  const double ab = *FrechetDistance(a, b), ba = *FrechetDistance(b, a);
  EXPECT_GT(ab, 0.0);
  EXPECT_NEAR(ab, ba, 1e-9 * ab);
}

// A shifted copy has the same covariance, so d^2 is exactly ||shift||^2.
TEST(FrechetDistance, ShiftedCopyGivesTheSquaredShift) {
  const torch::Tensor a = RandomSet(120, 10, 4);
  const torch::Tensor shift = torch::linspace(-1.0, 2.0, 10, torch::kFloat64);
  const double expected = shift.pow(2).sum().item<double>();
  EXPECT_NEAR(*FrechetDistance(a, a + shift), expected, 1e-7 * (expected + a.var(0).sum().item<double>()));
}

// b = 2a: mu_b = 2 mu_a, S_b = 4 S_a, so d^2 = ||mu_a||^2 + tr S_a + 4 tr S_a - 2 tr(2 S_a)
//                                        = ||mu_a||^2 + tr S_a. Exercises both square roots.
TEST(FrechetDistance, ScaledCopyMatchesTheClosedForm) {
  const torch::Tensor a = RandomSet(100, 8, 5);
  const double expected = a.mean(0).pow(2).sum().item<double>() + a.var(0).sum().item<double>();
  EXPECT_NEAR(*FrechetDistance(a, 2 * a), expected, 1e-7 * expected);
}

// Fewer points than dimensions: singular covariances, still finite and ~0 against itself. (The
// square root of the ~1e-16 relative rounding noise in the 58 null directions is what limits
// the precision: ~1e-8 relative each, hence the looser bound.)
TEST(FrechetDistance, RankDeficientSetsAreStable) {
  const torch::Tensor a = RandomSet(6, 64, 6), b = RandomSet(9, 64, 7);
  const double aa = *FrechetDistance(a, a), ab = *FrechetDistance(a, b);
  const double trace = a.var(0).sum().item<double>();
  EXPECT_TRUE(std::isfinite(ab));
  EXPECT_NEAR(aa, 0.0, 1e-4 * trace);
  EXPECT_GT(ab, 0.1 * trace);
}

TEST(FrechetDistance, RefusesTooSmallOrMismatchedSets) {
  EXPECT_EQ(FrechetDistance(RandomSet(1, 4, 1), RandomSet(5, 4, 2)).status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(FrechetDistance(RandomSet(5, 4, 1), RandomSet(5, 3, 2)).status().code(), Status::Code::kInvalidArgument);
}

TEST(ManifoldPrecisionRecall, OfASetWithItselfIsOne) {
  const torch::Tensor a = RandomSet(80, 6, 8);
  Result<PrecisionRecall> pr = ManifoldPrecisionRecall(a, a, 3);
  ASSERT_TRUE(pr.ok()) << pr.status().message();
  EXPECT_EQ(pr->precision, 1.0);
  EXPECT_EQ(pr->recall, 1.0);
}

TEST(ManifoldPrecisionRecall, FarAwaySetIsZeroAndASubsetHasFullPrecision) {
  const torch::Tensor a = RandomSet(80, 6, 9);
  const double spread = a.std().item<double>();
  Result<PrecisionRecall> far = ManifoldPrecisionRecall(a, a + 1000 * spread, 3);
  EXPECT_EQ(far->precision, 0.0);
  EXPECT_EQ(far->recall, 0.0);
  // Every point of a subset lies in (at the centre of) a real ball; the real set is covered only partly.
  Result<PrecisionRecall> subset = ManifoldPrecisionRecall(a, a.slice(0, 0, 20), 3);
  EXPECT_EQ(subset->precision, 1.0);
  EXPECT_LT(subset->recall, 1.0);
  EXPECT_GE(subset->recall, 20.0 / 80.0);
}

TEST(SplitPerClass, IsADeterministicPartitionWithTheHeldOutShareOfEachClass) {
  std::vector<int64_t> ids;
  const std::vector<int64_t> sizes = {10, 3, 27, 1};
  for (size_t c = 0; c < sizes.size(); ++c) ids.insert(ids.end(), sizes[c], static_cast<int64_t>(c));
  const torch::Tensor classes = torch::tensor(ids, torch::kInt64);
  const DataSplit a = SplitPerClass(classes, 4, 0.2, 7), b = SplitPerClass(classes, 4, 0.2, 7);
  EXPECT_EQ(a.train, b.train);
  EXPECT_EQ(a.held_out, b.held_out);
  std::vector<int> seen(ids.size(), 0);
  for (int64_t i : a.train) seen[i]++;
  for (int64_t i : a.held_out) seen[i]++;
  for (int s : seen) EXPECT_EQ(s, 1);
  std::vector<int64_t> held(sizes.size(), 0);
  for (int64_t i : a.held_out) held[ids[i]]++;
  for (size_t c = 0; c < sizes.size(); ++c) {
    const int64_t want = sizes[c] < 2 ? 0 : std::clamp<int64_t>(std::llround(0.2 * sizes[c]), 1, sizes[c] - 1);
    EXPECT_EQ(held[c], want) << "class " << c;
  }
  EXPECT_NE(SplitPerClass(classes, 4, 0.2, 8).held_out, a.held_out);
}

// A small ImageFolder copied from the real data set: the first 20 sprites of three classes.
class QualityMeterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ConfigureThreads(2);
    root_ = fs::temp_directory_path() / ("spritediff-meter-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    data_ = root_ / "data";
    const fs::path source = SPRITEDIFF_DATA_DIR;
    if (!fs::exists(source)) {
      // CI has the data: a missing set there is a failure, not a skip.
      if (std::getenv("CI") != nullptr) FAIL() << "no data set at " << source << " (CI is set)";
      GTEST_SKIP() << "no data set at " << source << " (../shared/data/dcss-sprites; see its README)";
    }
    for (const std::string label : {"hero", "spell", "item"}) {
      fs::create_directories(data_ / label);
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(source / label)) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (int i = 0; i < 20; ++i) fs::copy_file(files[i], data_ / label / files[i].filename());
    }
    std::ofstream(data_ / "labels.txt") << "hero\nspell\nitem\n";
    options_.data = data_.string();
    options_.cache_dir = (root_ / "cache").string();
    options_.width = 8;
    options_.feature_dim = 16;
    options_.training.epochs = 2;
    options_.training.batch_size = 16;
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path root_, data_;
  MeterOptions options_;
};

TEST_F(QualityMeterTest, TrainsOnceThenLoadsTheCache) {
  Result<QualityMeter> first = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(first.ok()) << first.status().message();
  EXPECT_FALSE(first->loaded_from_cache());
  EXPECT_EQ(first->labels(), (std::vector<std::string>{"hero", "spell", "item"}));
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(first->held_out_count(c), 4);  // 0.2 * 20
    EXPECT_EQ(first->train_count(c), 16);
  }
  const fs::path weights = fs::path(first->cache_path()) / "classifier.pt";
  ASSERT_TRUE(fs::exists(weights));
  const auto written = fs::last_write_time(weights);

  Result<QualityMeter> second = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(second.ok()) << second.status().message();
  EXPECT_TRUE(second->loaded_from_cache());
  EXPECT_EQ(second->cache_path(), first->cache_path());
  EXPECT_EQ(fs::last_write_time(weights), written);
  EXPECT_DOUBLE_EQ(second->held_out_accuracy(), first->held_out_accuracy());

  // The cached classifier judges exactly as the freshly trained one.
  torch::manual_seed(3);
  const torch::Tensor images = torch::rand({12, 3, 16, 16}) * 2 - 1;
  std::vector<int64_t> classes;
  for (int i = 0; i < 12; ++i) classes.push_back(i % 3);
  Result<QualityReport> r1 = first->Measure(images, classes), r2 = second->Measure(images, classes);
  ASSERT_TRUE(r1.ok()) << r1.status().message();
  ASSERT_TRUE(r2.ok());
  EXPECT_DOUBLE_EQ(r1->accuracy, r2->accuracy);
  EXPECT_DOUBLE_EQ(r1->frechet, r2->frechet);

  // A changed data set is a different fingerprint: trained afresh.
  fs::remove(*fs::directory_iterator(data_ / "item"));
  Result<QualityMeter> third = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(third->loaded_from_cache());
  EXPECT_NE(third->cache_path(), first->cache_path());
}

TEST_F(QualityMeterTest, HeldOutRealSpritesHaveRatioOneAndNoFlags) {
  Result<QualityMeter> meter = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(meter.ok()) << meter.status().message();
  Result<QualityReport> real = meter->MeasureHeldOutReal(100);
  ASSERT_TRUE(real.ok()) << real.status().message();
  ASSERT_EQ(real->classes.size(), 3u);
  EXPECT_DOUBLE_EQ(real->frechet_ratio, 1.0);
  EXPECT_DOUBLE_EQ(real->worst_frechet_ratio, 1.0);
  EXPECT_GT(real->frechet_real, 0.0);  // held-out against the training split: a real distance, not 0 / 0
  EXPECT_TRUE(real->flags.empty());
  for (const ClassQuality& c : real->classes) {
    EXPECT_EQ(c.count, 4);     // the 4 held-out images of each class; never training images
    EXPECT_EQ(c.fd_count, 4);
    EXPECT_DOUBLE_EQ(c.frechet_ratio, 1.0);
    EXPECT_FALSE(c.copies) << c.label;
    EXPECT_EQ(c.modes_judged, 0) << "4 sprites expect fewer than 4 in any mode";
  }
  // At most per_class images of each class.
  Result<QualityReport> fewer = meter->MeasureHeldOutReal(1);
  ASSERT_TRUE(fewer.ok());
  EXPECT_EQ(fewer->count, 3);
}

// The two failures the first meter could not see: a generator that copies training sprites,
// and one that makes a single kind of sprite for a class (mode dropping).
TEST_F(QualityMeterTest, FlagsCopiesAndDroppedModes) {
  Result<QualityMeter> meter = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(meter.ok()) << meter.status().message();
  Result<Dataset> data = LoadDataset(data_.string(), 16);
  ASSERT_TRUE(data.ok());
  const torch::Tensor classes = data->contexts.argmax(1);
  // The real sprites themselves, as if generated: every one is a copy of itself.
  std::vector<int64_t> ids(classes.data_ptr<int64_t>(), classes.data_ptr<int64_t>() + classes.numel());
  Result<QualityReport> copies = meter->Measure(data->images, ids);
  ASSERT_TRUE(copies.ok()) << copies.status().message();
  for (const ClassQuality& c : copies->classes) {
    EXPECT_DOUBLE_EQ(c.copy_share, 1.0) << c.label;
    EXPECT_TRUE(c.copies) << c.label;
    EXPECT_EQ(c.copied_sources, 20) << c.label;
  }
  EXPECT_EQ(copies->flags.size(), 3u);
  // One hero sprite, 40 times, slightly noised so it is no copy: it covers one of hero's modes.
  const torch::Tensor hero_rows = (classes == 0).nonzero().flatten();
  torch::manual_seed(5);
  const torch::Tensor one = data->images[hero_rows[0].item<int64_t>()];
  const torch::Tensor same = (one.unsqueeze(0).expand({40, -1, -1, -1}) + 0.3 * torch::randn({40, 3, 16, 16})).clamp(-1, 1);
  Result<QualityReport> dropped = meter->Measure(same, std::vector<int64_t>(40, 0));
  ASSERT_TRUE(dropped.ok()) << dropped.status().message();
  ASSERT_EQ(dropped->classes.size(), 1u);
  const ClassQuality& hero = dropped->classes[0];
  EXPECT_GE(hero.modes_judged, 2);
  EXPECT_GE(hero.modes_missed, 1);
  EXPECT_TRUE(hero.drops_modes);
  EXPECT_FALSE(hero.copies);
  EXPECT_LT(hero.mode_share_min, 0.25);
  ASSERT_FALSE(dropped->flags.empty());
  EXPECT_NE(dropped->flags[0].find("hero drops modes"), std::string::npos) << dropped->flags[0];
  EXPECT_EQ(dropped->worst_frechet_class, "hero");
}

// An RGBA meter judges alpha too (its classifier sees 4 channels, its own cache); a 3-channel
// meter judges RGBA sprites composited onto black, as the 3-channel data set holds them.
TEST_F(QualityMeterTest, JudgesRgbaWithAlphaOrComposited) {
  MeterOptions rgba_options = options_;
  rgba_options.channels = 4;
  Result<QualityMeter> rgba = QualityMeter::Open(rgba_options, nullptr);
  ASSERT_TRUE(rgba.ok()) << rgba.status().message();
  Result<QualityMeter> rgb = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(rgb.ok());
  EXPECT_NE(rgba->cache_path(), rgb->cache_path());
  Result<Dataset> data4 = LoadDataset(data_.string(), 16, 4);
  Result<Dataset> data3 = LoadDataset(data_.string(), 16, 3);
  ASSERT_TRUE(data4.ok() && data3.ok());
  const torch::Tensor classes = data4->contexts.argmax(1);
  std::vector<int64_t> ids(classes.data_ptr<int64_t>(), classes.data_ptr<int64_t>() + classes.numel());
  Result<QualityReport> with_alpha = rgba->Measure(data4->images, ids);
  ASSERT_TRUE(with_alpha.ok()) << with_alpha.status().message();
  EXPECT_EQ(with_alpha->count, 60);
  // The same sprites as RGBA and as composited RGB look alike to the 3-channel meter, up to the
  // binary alpha finish of the soft-edged pixels (which un-premultiplies and makes them opaque).
  Result<QualityReport> composited = rgb->Measure(data4->images, ids);
  Result<QualityReport> plain = rgb->Measure(data3->images, ids);
  ASSERT_TRUE(composited.ok() && plain.ok());
  EXPECT_NEAR(composited->accuracy, plain->accuracy, 0.05);
}

TEST_F(QualityMeterTest, GeneratesEveryLabelAndRefusesUnknownOnes) {
  Result<QualityMeter> meter = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(meter.ok()) << meter.status().message();
  ModelConfig arch;
  arch.n_feat = 8;
  arch.n_cfeat = 2;
  torch::manual_seed(0);
  ContextUnet net(arch);
  EvalSampling sampling;
  sampling.spec.steps = 2;
  sampling.per_class = 4;
  sampling.batch_rows = 3;  // several batches
  const NoiseSchedule schedule{ScheduleConfig{}};
  Result<GeneratedSet> set =
      GenerateForMeter(*meter, net, arch, {"item", "hero"}, schedule, sampling, torch::Device(torch::kCPU));
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_EQ(set->images.sizes(), (std::vector<int64_t>{8, 3, 16, 16}));
  EXPECT_EQ(set->classes, (std::vector<int64_t>{2, 2, 2, 2, 0, 0, 0, 0}));
  Result<QualityReport> report = meter->Measure(set->images, set->classes);
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->classes.size(), 2u);  // only the classes that had images
  EXPECT_EQ(report->classes[0].label, "hero");
  EXPECT_EQ(report->classes[0].fd_count, 4);  // min(4 generated, 4 held-out images)

  Result<GeneratedSet> unknown =
      GenerateForMeter(*meter, net, arch, {"item", "food"}, schedule, sampling, torch::Device(torch::kCPU));
  EXPECT_EQ(unknown.status().code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(unknown.status().message().find("food"), std::string::npos);
}

TEST_F(QualityMeterTest, BadInputIsAClearError) {
  MeterOptions bad = options_;
  bad.held_out_fraction = 0;
  EXPECT_EQ(QualityMeter::Open(bad, nullptr).status().code(), Status::Code::kInvalidArgument);
  bad = options_;
  bad.height = 6;
  EXPECT_EQ(QualityMeter::Open(bad, nullptr).status().code(), Status::Code::kInvalidArgument);
  bad = options_;
  bad.data = (root_ / "missing").string();
  Result<QualityMeter> missing = QualityMeter::Open(bad, nullptr);
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
  EXPECT_NE(missing.status().message().find("missing"), std::string::npos);

  Result<QualityMeter> meter = QualityMeter::Open(options_, nullptr);
  ASSERT_TRUE(meter.ok());
  EXPECT_EQ(meter->Measure(torch::zeros({2, 3, 32, 32}), {0, 1}).status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(meter->Measure(torch::zeros({2, 3, 16, 16}), {0, 7}).status().code(), Status::Code::kInvalidArgument);
}

// The trainer's hook: at a checkpoint the meter judges the saved weights; the figures reach
// the progress callback and model.json.
TEST_F(QualityMeterTest, TrainingCheckpointsCarryTheMetersFigures) {
  TrainConfig config;
  config.data = data_.string();
  config.out = (root_ / "model").string();
  config.n_feat = 8;
  config.batch_size = 16;
  config.epochs = 1;
  config.sample_grid_per_label = 0;
  config.eval.per_class = 4;
  config.eval.cache_dir = (root_ / "train-cache").string();
  config.eval.sampling.spec.steps = 3;
  config.eval.meter = options_;  // the fixture's tiny classifier recipe
  int reports = 0;
  QualityReport seen;
  Result<TrainSummary> summary = Train(config, nullptr, [&](const TrainProgress& p) {
    if (p.quality != nullptr) {
      ++reports;
      EXPECT_TRUE(p.checkpoint);
      seen = *p.quality;
    }
  });
  ASSERT_TRUE(summary.ok()) << summary.status().message();
  EXPECT_EQ(reports, 1);
  EXPECT_EQ(seen.count, 12);  // 4 per label, 3 labels
  EXPECT_EQ(seen.classes.size(), 3u);
  EXPECT_GE(seen.accuracy, 0.0);
  EXPECT_LE(seen.accuracy, 1.0);
  Result<ModelInfo> info = ReadModelInfo(config.out);
  ASSERT_TRUE(info.ok());
  ASSERT_TRUE(info->provenance.contains("quality"));
  EXPECT_DOUBLE_EQ(info->provenance["quality"]["accuracy"].get<double>(), seen.accuracy);
  EXPECT_EQ(info->provenance["quality"]["sampling"]["per_class"], 4);
  EXPECT_TRUE(fs::exists(fs::path(config.eval.cache_dir)));

  config.eval.per_class = 1001;
  EXPECT_EQ(Train(config, nullptr, nullptr).status().code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace spritediff
