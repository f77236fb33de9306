#include "core/quality_meter.h"

#include "common/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/sample_metrics.h"
#include "core/sampler.h"

namespace spritediff {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kCacheFormat = 1;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();


uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
}

// What the cached classifier depends on: every file of the dataset (relative path and size),
// the image size, the split and the classifier's recipe.
Result<json> MeterIdentity(const MeterOptions& o) {
  std::error_code ec;
  if (!fs::is_directory(o.data, ec)) return Status::NotFound("--data '" + o.data + "': not a directory");
  std::vector<std::pair<std::string, uintmax_t>> files;
  for (auto it = fs::recursive_directory_iterator(o.data, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    files.emplace_back(fs::relative(it->path(), o.data, ec).generic_string(), it->file_size(ec));
  }
  if (ec) return Status::IoError("--data '" + o.data + "': cannot list (" + ec.message() + ")");
  std::sort(files.begin(), files.end());
  std::string listing;
  for (const auto& [name, size] : files) listing += name + "\t" + std::to_string(size) + "\n";
  return json{{"format", kCacheFormat},
              {"files", files.size()},
              {"files_hash", Fnv1a64(listing)},
              {"height", o.height},
              {"channels", o.channels},
              {"held_out_fraction", o.held_out_fraction},
              {"split_seed", o.split_seed},
              {"width", o.width},
              {"feature_dim", o.feature_dim},
              {"epochs", o.training.epochs},
              {"batch_size", o.training.batch_size},
              {"lr", o.training.lr},
              {"weight_decay", o.training.weight_decay},
              {"seed", o.training.seed},
              {"flip", o.training.flip},
              {"balance", o.training.balance}};
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

torch::Tensor RowsOf(const torch::Tensor& classes, int64_t c) { return (classes == c).nonzero().flatten(); }

// What a PNG of each image holds, in [-1, 1]: alpha finished binary (TensorToImage), then
// premultiplied (4 channels) or composited onto black (3); [N, channels, H, W].
torch::Tensor AsStored(const torch::Tensor& images, int channels) {
  const torch::Tensor cpu = images.to(torch::kCPU, torch::kFloat32);
  std::vector<torch::Tensor> out;
  out.reserve(static_cast<size_t>(cpu.size(0)));
  for (int64_t i = 0; i < cpu.size(0); ++i) {
    const Image finished = TensorToImage(cpu[i], AlphaMode::kBinary);
    Image stored = channels == 4 ? PremultiplyAlpha(finished) : CompositeOnBlack(finished);
    if (stored.channels != channels) {  // a 3-channel image for an RGBA meter: opaque everywhere
      Image rgba(stored.width, stored.height, 4);
      for (int y = 0; y < stored.height; ++y)
        for (int x = 0; x < stored.width; ++x) {
          for (int c = 0; c < 3; ++c) rgba.at(x, y, c) = stored.at(x, y, c);
          rgba.at(x, y, 3) = 255;
        }
      stored = rgba;
    }
    out.push_back(torch::from_blob(stored.pixels.data(), {stored.height, stored.width, stored.channels}, torch::kUInt8)
                      .permute({2, 0, 1})
                      .to(torch::kFloat32)
                      .div(127.5)
                      .sub(1.0));
  }
  return torch::stack(out);
}

// Pixel distance in 8-bit units, RMS over every channel value: [A, D] x [B, D] -> [A, B].
torch::Tensor PixelDistances(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::cdist(a.to(torch::kFloat64), b.to(torch::kFloat64)).div(std::sqrt(static_cast<double>(a.size(1))))
      .mul(127.5);
}

// k-means (k-means++ seeding, then Lloyd's iterations) of the rows of x [n, D]; [k, D] centres.
torch::Tensor KMeans(const torch::Tensor& x_in, int k, uint64_t seed) {
  const torch::Tensor x = x_in.to(torch::kFloat64);
  const int64_t n = x.size(0);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<int64_t> chosen{static_cast<int64_t>(rng() % static_cast<uint64_t>(n))};
  while (static_cast<int>(chosen.size()) < k) {
    const torch::Tensor centres = x.index_select(0, torch::tensor(chosen, torch::kInt64));
    const torch::Tensor d2 = torch::cdist(x, centres).pow(2).amin(1).contiguous();
    const double total = d2.sum().item<double>();
    if (!(total > 0)) break;  // fewer distinct points than k
    double r = uniform(rng) * total;
    const double* p = d2.data_ptr<double>();
    int64_t pick = n - 1;
    for (int64_t i = 0; i < n; ++i) {
      r -= p[i];
      if (r <= 0) {
        pick = i;
        break;
      }
    }
    chosen.push_back(pick);
  }
  torch::Tensor centres = x.index_select(0, torch::tensor(chosen, torch::kInt64)).clone();
  for (int iter = 0; iter < 50; ++iter) {
    const torch::Tensor assign = torch::cdist(x, centres).argmin(1);
    torch::Tensor next = centres.clone();
    for (int64_t j = 0; j < centres.size(0); ++j) {
      const torch::Tensor members = (assign == j).nonzero().flatten();
      if (members.numel() > 0) next[j] = x.index_select(0, members).mean(0);
    }
    if (torch::equal(next, centres)) break;
    centres = next;
  }
  return centres;
}

constexpr double kModeMinShare = 0.1;      // a cluster holding this share of a class's real sprites is a mode
constexpr double kModeMissedFactor = 0.25;  // missed: generated share below this times the real share
constexpr double kModeMinExpected = 4;      // judged only where this many generated sprites are expected
constexpr double kCopyPercentile = 0.05;    // of held-out -> training-split distances: the near-copy threshold
constexpr double kCopyFlagShare = 0.2;      // a class with more near-copies than this is flagged
constexpr int kFrechetSubsets = 16;         // generated subsets of m_c averaged per class
constexpr int kThumbnailSide = 8;           // appearance space of the mode check: 8x8 box-downscaled pixels

// Appearance: flattened [N, C*H*W] pixels of side x side sprites -> [N, C*8*8] box-downscaled.
torch::Tensor Thumbnails(const torch::Tensor& pixels, int channels, int side) {
  const torch::Tensor images = pixels.to(torch::kFloat64).view({pixels.size(0), channels, side, side});
  return torch::adaptive_avg_pool2d(images, {kThumbnailSide, kThumbnailSide}).flatten(1);
}

}  // namespace

Status MeterOptions::Validate() const {
  if (data.empty()) return Status::InvalidArgument("--data is required");
  if (height < 4 || height > 256 || height % 4 != 0) {
    return Status::InvalidArgument("height must be a multiple of 4 in [4, 256], got " + std::to_string(height));
  }
  if (cache_dir.empty()) return Status::InvalidArgument("--cache-dir must not be empty");
  if (!(held_out_fraction > 0 && held_out_fraction < 1)) {
    return Status::InvalidArgument("--held-out must be in (0, 1), got " + std::to_string(held_out_fraction));
  }
  if (training.epochs < 1 || training.epochs > 10000) {
    return Status::InvalidArgument("--classifier-epochs must be in [1, 10000], got " + std::to_string(training.epochs));
  }
  if (training.batch_size < 2 || training.batch_size > 4096) return Status::InvalidArgument("classifier batch size must be in [2, 4096]");
  if (knn_k < 1 || knn_k > 100) return Status::InvalidArgument("k must be in [1, 100]");
  if (channels != 3 && channels != 4) {
    return Status::InvalidArgument("channels must be 3 or 4, got " + std::to_string(channels));
  }
  ClassifierConfig c;
  c.channels = channels;
  c.height = height;
  c.width = width;
  c.feature_dim = feature_dim;
  return c.Validate();
}

json QualityReportToJson(const QualityReport& r) {
  json classes = json::array();
  for (const ClassQuality& c : r.classes) {
    classes.push_back({{"label", c.label}, {"count", c.count}, {"fd_count", c.fd_count}, {"accuracy", c.accuracy},
                       {"frechet", c.frechet}, {"frechet_real", c.frechet_real}, {"frechet_ratio", c.frechet_ratio},
                       {"frechet_factor", c.frechet_factor}, {"copy_share_real", c.copy_share_real},
                       {"precision", c.precision}, {"recall", c.recall}, {"modes", c.modes},
                       {"modes_judged", c.modes_judged}, {"modes_missed", c.modes_missed},
                       {"mode_share_min", c.mode_share_min}, {"drops_modes", c.drops_modes},
                       {"copy_share", c.copy_share}, {"copied_sources", c.copied_sources}, {"copies", c.copies},
                       {"opaque_share", c.opaque_share}, {"opaque_share_real", c.opaque_share_real},
                       {"partial_alpha_share", c.partial_alpha_share}});
  }
  // nlohmann writes NaN as null: "not measurable for this class".
  return json{{"count", r.count},         {"accuracy", r.accuracy},   {"frechet", r.frechet},
              {"frechet_real", r.frechet_real}, {"frechet_ratio", r.frechet_ratio},
              {"worst_frechet_ratio", r.worst_frechet_ratio}, {"worst_frechet_factor", r.worst_frechet_factor},
              {"worst_frechet_class", r.worst_frechet_class},
              {"precision", r.precision}, {"recall", r.recall}, {"flags", r.flags}, {"classes", classes}};
}

int64_t QualityMeter::held_out_count(int c) const { return (held_out_classes_ == c).sum().item<int64_t>(); }
int64_t QualityMeter::train_count(int c) const { return (train_classes_ == c).sum().item<int64_t>(); }

Result<QualityMeter> QualityMeter::Open(const MeterOptions& options, const MeterLog& log_in) {
  const MeterLog log = log_in ? log_in : [](const std::string&) {};
  Status valid = options.Validate();
  if (!valid.ok()) return valid;
  Result<json> identity = MeterIdentity(options);
  if (!identity.ok()) return identity.status();

  QualityMeter meter;
  meter.options_ = options;
  meter.fingerprint_ = Hex(Fnv1a64(identity->dump()));
  const fs::path dir = fs::path(options.cache_dir) / meter.fingerprint_;
  meter.cache_path_ = dir.string();
  const fs::path meta_path = dir / "meta.json", weights_path = dir / "classifier.pt";

  std::error_code ec;
  if (fs::exists(meta_path, ec)) {
    try {
      std::ifstream in(meta_path);
      const json meta = json::parse(in);
      if (meta.at("identity") != *identity) throw std::runtime_error("identity differs");
      meter.labels_ = meta.at("labels").get<std::vector<std::string>>();
      meter.held_out_accuracy_ = meta.at("held_out_accuracy").get<double>();
      meter.held_out_class_accuracy_ = meta.at("held_out_class_accuracy").get<std::vector<double>>();
      ClassifierConfig config;
      config.num_classes = static_cast<int>(meter.labels_.size());
      config.height = options.height;
      config.channels = options.channels;
      config.width = options.width;
      config.feature_dim = options.feature_dim;
      meter.net_ = SpriteClassifier(config);
      torch::serialize::InputArchive archive, net_archive;
      archive.load_from(weights_path.string());
      archive.read("classifier", net_archive);
      Status s = ReadModuleTensors(net_archive, *meter.net_, weights_path.string());
      if (!s.ok()) throw std::runtime_error(s.message());
      archive.read("held_out_features", meter.held_out_features_);
      archive.read("held_out_classes", meter.held_out_classes_);
      archive.read("train_features", meter.train_features_);
      archive.read("train_classes", meter.train_classes_);
      meter.net_->eval();
      meter.loaded_from_cache_ = true;
      log("classifier loaded from cache " + meter.cache_path_ + " (held-out accuracy " +
          std::to_string(meter.held_out_accuracy_) + ")");
      Result<Dataset> data = LoadDataset(options.data, options.height, options.channels);
      if (!data.ok()) return Status(data.status());
      Status real = meter.PrepareRealSets(*data);
      if (!real.ok()) return real;
      return meter;
    } catch (const std::exception& e) {
      log(std::string("cache ") + meter.cache_path_ + " unusable (" + e.what() + "); retraining");
    }
  }

  Result<Dataset> data = LoadDataset(options.data, options.height, options.channels);
  if (!data.ok()) return Status(data.status());
  const int64_t k = static_cast<int64_t>(data->labels.size());
  if (k < 2) return Status::FailedPrecondition("--data '" + options.data + "': the meter needs at least 2 classes");
  meter.labels_ = data->labels;
  const torch::Tensor classes = data->contexts.argmax(1);
  const DataSplit split = SplitPerClass(classes, k, options.held_out_fraction, options.split_seed);
  if (split.held_out.empty()) return Status::FailedPrecondition("--data '" + options.data + "': too few images to hold out");

  ClassifierConfig config;
  config.num_classes = static_cast<int>(k);
  config.height = options.height;
  config.channels = options.channels;
  config.width = options.width;
  config.feature_dim = options.feature_dim;
  log("training the meter's classifier on " + std::to_string(split.train.size()) + " images (" +
      std::to_string(split.held_out.size()) + " held out), " + std::to_string(options.training.epochs) + " epochs");
  const auto start = std::chrono::steady_clock::now();
  meter.net_ = TrainClassifier(config, options.training, data->images, classes, split.train, log);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const torch::Tensor held_index = torch::tensor(split.held_out, torch::kInt64);
  const torch::Tensor train_index = torch::tensor(split.train, torch::kInt64);
  ClassifierOutput held = RunClassifier(meter.net_, data->images.index_select(0, held_index));
  ClassifierOutput train = RunClassifier(meter.net_, data->images.index_select(0, train_index));
  meter.held_out_features_ = held.features;
  meter.held_out_classes_ = classes.index_select(0, held_index);
  meter.train_features_ = train.features;
  meter.train_classes_ = classes.index_select(0, train_index);
  const torch::Tensor right = (held.predicted == meter.held_out_classes_).to(torch::kFloat64);
  meter.held_out_accuracy_ = right.mean().item<double>();
  for (int64_t c = 0; c < k; ++c) {
    const torch::Tensor rows = RowsOf(meter.held_out_classes_, c);
    meter.held_out_class_accuracy_.push_back(rows.numel() ? right.index_select(0, rows).mean().item<double>() : kNaN);
  }
  log("classifier trained in " + std::to_string(static_cast<int>(seconds)) + " s; held-out accuracy " +
      std::to_string(meter.held_out_accuracy_));

  // Cache: weights and features first, meta.json (the commit point) last.
  fs::create_directories(dir, ec);
  if (ec) return Status::IoError(dir.string() + ": cannot create (" + ec.message() + ")");
  torch::serialize::OutputArchive archive, net_archive;
  WriteModuleTensors(net_archive, *meter.net_);
  archive.write("classifier", net_archive);
  archive.write("held_out_features", meter.held_out_features_);
  archive.write("held_out_classes", meter.held_out_classes_);
  archive.write("train_features", meter.train_features_);
  archive.write("train_classes", meter.train_classes_);
  std::ostringstream bytes;
  try {
    archive.save_to(bytes);
  } catch (const std::exception& e) {
    return Status::Internal(std::string("serialising the classifier: ") + e.what());
  }
  Status s = WriteFileAtomic(weights_path.string(), bytes.str());
  if (!s.ok()) return s;
  const json meta = {{"identity", *identity},
                     {"data", options.data},
                     {"labels", meter.labels_},
                     {"train_images", split.train.size()},
                     {"held_out_images", split.held_out.size()},
                     {"held_out_accuracy", meter.held_out_accuracy_},
                     {"held_out_class_accuracy", meter.held_out_class_accuracy_},
                     {"train_seconds", seconds}};
  s = WriteFileAtomic(meta_path.string(), meta.dump(2) + "\n");
  if (!s.ok()) return s;
  log("classifier cached in " + meter.cache_path_);
  s = meter.PrepareRealSets(*data);
  if (!s.ok()) return s;
  return meter;
}

Status QualityMeter::PrepareRealSets(const Dataset& data) {
  const int64_t k = static_cast<int64_t>(labels_.size());
  const torch::Tensor classes = data.contexts.argmax(1);
  const DataSplit split = SplitPerClass(classes, k, options_.held_out_fraction, options_.split_seed);
  if (static_cast<int64_t>(split.held_out.size()) != held_out_features_.size(0)) {
    return Status::FailedPrecondition("--data '" + options_.data + "' changed since its meter was cached");
  }
  // As a PNG holds them: 8-bit steps.
  const torch::Tensor pixels = data.images.add(1.0).mul(127.5).round().div(127.5).sub(1.0).flatten(1);
  real_pixels_ = pixels;
  train_pixels_ = pixels.index_select(0, torch::tensor(split.train, torch::kInt64));
  held_out_pixels_ = pixels.index_select(0, torch::tensor(split.held_out, torch::kInt64));
  // The near-copy threshold: how close unseen real sprites come to the training split.
  const torch::Tensor nearest = PixelDistances(held_out_pixels_, train_pixels_).amin(1);
  const torch::Tensor sorted = std::get<0>(nearest.sort());
  copy_threshold_ = sorted[static_cast<int64_t>(kCopyPercentile * (sorted.size(0) - 1))].item<double>();
  // RGBA: each class's mean opaque share (alpha >= 1/2, as binary finishing decides).
  real_opaque_share_.assign(k, kNaN);
  if (options_.channels == 4) {
    const int64_t area = static_cast<int64_t>(options_.height) * options_.height;
    const torch::Tensor opaque = pixels.slice(1, 3 * area, 4 * area).ge(0.0).to(torch::kFloat64).mean(1);
    for (int64_t c = 0; c < k; ++c) real_opaque_share_[c] = opaque.index_select(0, RowsOf(classes, c)).mean().item<double>();
  }
  // Each class's share of held-out sprites that are near-copies of training ones.
  real_copy_share_.assign(k, 0.0);
  const torch::Tensor held_classes = classes.index_select(0, torch::tensor(split.held_out, torch::kInt64));
  for (int64_t c = 0; c < k; ++c) {
    const torch::Tensor rows = RowsOf(held_classes, c);
    if (rows.numel() > 0) {
      real_copy_share_[c] = nearest.index_select(0, rows).lt(copy_threshold_).to(torch::kFloat64).mean().item<double>();
    }
  }
  // Each class's modes: k-means of its real sprites' thumbnails (both splits).
  const torch::Tensor thumbs = Thumbnails(pixels, options_.channels, options_.height);
  mode_centres_.assign(k, torch::Tensor());
  mode_shares_.assign(k, {});
  for (int64_t c = 0; c < k; ++c) {
    const torch::Tensor feats = thumbs.index_select(0, RowsOf(classes, c));
    if (feats.size(0) < 4) continue;
    const int modes = static_cast<int>(std::clamp<int64_t>(std::llround(feats.size(0) / 10.0), 2, 6));
    mode_centres_[c] = KMeans(feats, modes, options_.split_seed * 7919 + static_cast<uint64_t>(c));
    const torch::Tensor assign = torch::cdist(feats.to(torch::kFloat64), mode_centres_[c]).argmin(1);
    for (int64_t j = 0; j < mode_centres_[c].size(0); ++j) {
      mode_shares_[c].push_back((assign == j).sum().item<double>() / feats.size(0));
    }
  }
  return Status::Ok();
}

Result<QualityReport> QualityMeter::MeasureFeatures(const torch::Tensor& features, const torch::Tensor& predicted,
                                                    const std::vector<int64_t>& classes, const torch::Tensor& pixels,
                                                    const torch::Tensor& copy_pool) const {
  const int64_t k = static_cast<int64_t>(labels_.size());
  if (static_cast<int64_t>(classes.size()) != features.size(0)) {
    return Status::InvalidArgument("one class per image needed");
  }
  for (int64_t c : classes) {
    if (c < 0 || c >= k) return Status::InvalidArgument("class index " + std::to_string(c) + " out of range");
  }
  const torch::Tensor cls = torch::tensor(classes, torch::kInt64);
  QualityReport report;
  report.count = features.size(0);
  if (report.count == 0) return Status::InvalidArgument("no images to judge");
  report.accuracy = (predicted == cls).to(torch::kFloat64).mean().item<double>();
  std::mt19937_64 rng(options_.split_seed * 104729 + 17);
  std::vector<torch::Tensor> pooled_gen, pooled_held, pooled_train, pooled_real;
  report.worst_frechet_ratio = report.worst_frechet_factor = kNaN;
  for (int64_t c = 0; c < k; ++c) {
    const torch::Tensor rows = RowsOf(cls, c);
    if (rows.numel() == 0) continue;
    ClassQuality q;
    q.frechet_factor = kNaN;
    q.label = labels_[c];
    q.count = rows.numel();
    q.accuracy = (predicted.index_select(0, rows) == c).to(torch::kFloat64).mean().item<double>();
    const torch::Tensor gen = features.index_select(0, rows);
    const torch::Tensor held = held_out_features_.index_select(0, RowsOf(held_out_classes_, c));
    const torch::Tensor train = train_features_.index_select(0, RowsOf(train_classes_, c));
    pooled_real.push_back(held);
    q.fd_count = std::min<int64_t>(q.count, held.size(0));
    q.frechet = q.frechet_real = q.frechet_ratio = q.precision = q.recall = kNaN;
    if (q.fd_count >= 2 && train.size(0) >= 2) {
      // Subsets of m_c generated sprites, each against the training split; the first also pools.
      double sum = 0;
      const int subsets = q.count > q.fd_count ? kFrechetSubsets : 1;
      for (int s = 0; s < subsets; ++s) {
        std::vector<int64_t> pick(static_cast<size_t>(q.count));
        std::iota(pick.begin(), pick.end(), 0);
        for (size_t i = 0; i < static_cast<size_t>(q.fd_count); ++i) {
          std::swap(pick[i], pick[i + rng() % (pick.size() - i)]);
        }
        pick.resize(static_cast<size_t>(q.fd_count));
        std::sort(pick.begin(), pick.end());
        const torch::Tensor subset = gen.index_select(0, torch::tensor(pick, torch::kInt64));
        if (s == 0) pooled_gen.push_back(subset);
        Result<double> fd = FrechetDistance(subset, train);
        if (!fd.ok()) return fd.status();
        sum += *fd;
      }
      Result<double> fd_real = FrechetDistance(held.slice(0, 0, q.fd_count), train);
      if (!fd_real.ok()) return fd_real.status();
      pooled_held.push_back(held.slice(0, 0, q.fd_count));
      pooled_train.push_back(train);
      q.frechet = sum / subsets;
      q.frechet_real = *fd_real;
      q.frechet_ratio = q.frechet_real > 0 ? q.frechet / q.frechet_real : kNaN;
      q.frechet_factor = q.frechet_ratio > 0 ? std::max(q.frechet_ratio, 1.0 / q.frechet_ratio) : kNaN;
      if (std::isfinite(q.frechet_factor) &&
          (!std::isfinite(report.worst_frechet_factor) || q.frechet_factor > report.worst_frechet_factor)) {
        report.worst_frechet_factor = q.frechet_factor;
        report.worst_frechet_ratio = q.frechet_ratio;
        report.worst_frechet_class = q.label;
      }
    }
    if (gen.size(0) > options_.knn_k && held.size(0) > options_.knn_k) {
      Result<PrecisionRecall> pr = ManifoldPrecisionRecall(held, gen, options_.knn_k);
      if (!pr.ok()) return pr.status();
      q.precision = pr->precision;
      q.recall = pr->recall;
    }
    // Modes: the images' shares of the real class's k-means clusters in appearance space.
    q.mode_share_min = kNaN;
    if (pixels.defined() && pixels.size(0) == features.size(0) && mode_centres_.size() == static_cast<size_t>(k) &&
        mode_centres_[c].defined()) {
      const torch::Tensor thumbs = Thumbnails(pixels.index_select(0, rows), options_.channels, options_.height);
      const torch::Tensor assign = torch::cdist(thumbs, mode_centres_[c]).argmin(1);
      for (int64_t j = 0; j < mode_centres_[c].size(0); ++j) {
        const double real_share = mode_shares_[c][static_cast<size_t>(j)];
        if (real_share < kModeMinShare) continue;
        ++q.modes;
        if (real_share * q.count < kModeMinExpected) continue;
        ++q.modes_judged;
        const double share = (assign == j).sum().item<double>() / q.count;
        const double relative = share / real_share;
        if (!std::isfinite(q.mode_share_min) || relative < q.mode_share_min) q.mode_share_min = relative;
        if (relative < kModeMissedFactor) ++q.modes_missed;
      }
      q.drops_modes = q.modes_missed > 0;
    }
    // Near-copies of real sprites, in pixels.
    if (pixels.defined() && copy_pool.defined() && pixels.size(0) == features.size(0)) {
      const auto [dist, source] = PixelDistances(pixels.index_select(0, rows), copy_pool).min(1);
      const torch::Tensor copied = dist < copy_threshold_;
      q.copy_share = copied.to(torch::kFloat64).mean().item<double>();
      q.copied_sources = q.copy_share > 0 ? std::get<0>(torch::_unique(source.masked_select(copied))).numel() : 0;
      q.copy_share_real = real_copy_share_.size() == static_cast<size_t>(k) ? real_copy_share_[c] : 0.0;
      q.copies = q.copy_share > kCopyFlagShare && q.copy_share > 2 * q.copy_share_real;
    }
    q.opaque_share = q.opaque_share_real = q.partial_alpha_share = kNaN;
    if (options_.channels == 4 && pixels.defined() && pixels.size(0) == features.size(0)) {
      const int64_t area = static_cast<int64_t>(options_.height) * options_.height;
      const torch::Tensor alpha = pixels.index_select(0, rows).slice(1, 3 * area, 4 * area);
      q.opaque_share = alpha.ge(0.0).to(torch::kFloat64).mean().item<double>();
      q.partial_alpha_share = alpha.gt(-1.0).logical_and(alpha.lt(1.0)).to(torch::kFloat64).mean().item<double>();
      q.opaque_share_real = real_opaque_share_[c];
    }
    if (q.drops_modes) {
      report.flags.push_back(q.label + " drops modes (" + std::to_string(q.modes_missed) + " of " +
                             std::to_string(q.modes_judged) + " judged missed)");
    }
    if (q.copies) {
      report.flags.push_back(q.label + " copies training sprites (" + std::to_string(std::lround(100 * q.copy_share)) +
                             "% near-copies of " + std::to_string(q.copied_sources) + " sprites)");
    }
    report.classes.push_back(q);
  }
  // Pooled: every class at its m_c, against the training splits of those classes.
  report.frechet = report.frechet_real = report.frechet_ratio = kNaN;
  if (!pooled_gen.empty()) {
    const torch::Tensor train = torch::cat(pooled_train);
    Result<double> fd = FrechetDistance(torch::cat(pooled_gen), train);
    Result<double> fd_real = FrechetDistance(torch::cat(pooled_held), train);
    if (fd.ok() && fd_real.ok()) {
      report.frechet = *fd;
      report.frechet_real = *fd_real;
      report.frechet_ratio = report.frechet_real > 0 ? report.frechet / report.frechet_real : kNaN;
    }
  }
  report.precision = report.recall = kNaN;
  const torch::Tensor all_real = torch::cat(pooled_real);
  if (features.size(0) > options_.knn_k && all_real.size(0) > options_.knn_k) {
    Result<PrecisionRecall> pr = ManifoldPrecisionRecall(all_real, features, options_.knn_k);
    if (!pr.ok()) return pr.status();
    report.precision = pr->precision;
    report.recall = pr->recall;
  }
  return report;
}

Result<QualityReport> QualityMeter::Measure(const torch::Tensor& images, const std::vector<int64_t>& classes) const {
  if (!images.defined() || images.dim() != 4 || (images.size(1) != 3 && images.size(1) != 4) ||
      images.size(2) != options_.height || images.size(3) != options_.height) {
    return Status::InvalidArgument("images must be [N, 3 or 4, " + std::to_string(options_.height) + ", " +
                                   std::to_string(options_.height) + "]");
  }
  if (images.size(0) == 0) return Status::InvalidArgument("no images to judge");
  try {
    const torch::Tensor x = AsStored(images, options_.channels);
    SpriteClassifier net = net_;
    ClassifierOutput out = RunClassifier(net, x);
    return MeasureFeatures(out.features, out.predicted, classes, x.flatten(1), real_pixels_);
  } catch (const std::exception& e) {
    return Status::Internal(std::string("quality meter: ") + e.what());
  }
}

Result<QualityReport> QualityMeter::MeasureHeldOutReal(int64_t per_class) const {
  std::vector<torch::Tensor> feats, pixels;
  std::vector<int64_t> classes;
  for (int c = 0; c < static_cast<int>(labels_.size()); ++c) {
    const torch::Tensor rows = RowsOf(held_out_classes_, c).slice(0, 0, per_class);
    feats.push_back(held_out_features_.index_select(0, rows));
    if (held_out_pixels_.defined()) pixels.push_back(held_out_pixels_.index_select(0, rows));
    classes.insert(classes.end(), rows.numel(), c);
  }
  const torch::Tensor features = torch::cat(feats);
  SpriteClassifier net = net_;
  torch::NoGradGuard no_grad;
  const torch::Tensor predicted = net->logits_from_features(features).argmax(1);
  // Real held-out sprites are checked for copies against the training split: the full set
  // holds them themselves.
  return MeasureFeatures(features, predicted, classes, pixels.empty() ? torch::Tensor() : torch::cat(pixels),
                         train_pixels_);
}

Result<GeneratedSet> GenerateForMeter(const QualityMeter& meter, ContextUnet& net, const ModelConfig& arch,
                                      const std::vector<std::string>& model_labels, const NoiseSchedule& schedule,
                                      const EvalSampling& sampling, torch::Device device,
                                      const std::function<bool()>& stop) {
  if (sampling.per_class < 1 || sampling.per_class > 100000) {
    return Status::InvalidArgument("--per-class must be in [1, 100000], got " + std::to_string(sampling.per_class));
  }
  if (sampling.batch_rows < 1) return Status::InvalidArgument("batch rows must be >= 1");
  if (arch.height != meter.height()) {
    return Status::FailedPrecondition("the model makes " + std::to_string(arch.height) + "px sprites; the meter judges " +
                                      std::to_string(meter.height()) + "px");
  }
  std::vector<RowSpec> specs;
  std::vector<int64_t> classes;
  for (size_t m = 0; m < model_labels.size(); ++m) {
    auto it = std::find(meter.labels().begin(), meter.labels().end(), model_labels[m]);
    if (it == meter.labels().end()) {
      return Status::FailedPrecondition("model label '" + model_labels[m] + "' is not a class of the meter's dataset");
    }
    for (int i = 0; i < sampling.per_class; ++i) {
      RowSpec s = sampling.spec;
      s.context.assign(model_labels.size(), 0.0f);
      s.context[m] = 1.0f;
      s.seed = sampling.seed + static_cast<uint64_t>(i);
      specs.push_back(s);
      classes.push_back(it - meter.labels().begin());
    }
  }
  Status valid = ValidateRowSpec(specs.front(), schedule.timesteps(), arch.n_cfeat);
  if (!valid.ok()) return valid;
  GeneratedSet set;
  set.classes = classes;
  std::vector<torch::Tensor> parts;
  const auto start = std::chrono::steady_clock::now();
  try {
    net->eval();
    for (size_t b = 0; b < specs.size(); b += sampling.batch_rows) {
      if (stop && stop()) return Status::Cancelled("evaluation cancelled");
      const std::vector<RowSpec> chunk(specs.begin() + b, specs.begin() + std::min(specs.size(), b + sampling.batch_rows));
      parts.push_back(SampleAll(net, schedule, chunk, device));
    }
  } catch (const std::exception& e) {
    return Status::Internal(std::string("sampling for the meter: ") + e.what());
  }
  set.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  set.images = torch::cat(parts);
  return set;
}

}  // namespace spritediff
