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
#include <random>
#include <sstream>

#include "core/checkpoint.h"
#include "core/dataset.h"
#include "core/sample_metrics.h"

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
  ClassifierConfig c;
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
                       {"precision", c.precision}, {"recall", c.recall}});
  }
  // nlohmann writes NaN as null: "not measurable for this class".
  return json{{"count", r.count},         {"accuracy", r.accuracy},   {"frechet", r.frechet},
              {"frechet_real", r.frechet_real}, {"frechet_ratio", r.frechet_ratio}, {"precision", r.precision},
              {"recall", r.recall},       {"classes", classes}};
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
      return meter;
    } catch (const std::exception& e) {
      log(std::string("cache ") + meter.cache_path_ + " unusable (" + e.what() + "); retraining");
    }
  }

  Result<Dataset> data = LoadDataset(options.data, options.height);
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
  return meter;
}

std::pair<torch::Tensor, torch::Tensor> QualityMeter::HeldOutHalves(int c) const {
  const torch::Tensor rows = RowsOf(held_out_classes_, c);
  std::vector<int64_t> idx(rows.data_ptr<int64_t>(), rows.data_ptr<int64_t>() + rows.numel());
  std::mt19937_64 rng(options_.split_seed * 1000003ULL + static_cast<uint64_t>(c) + 11);
  for (size_t i = idx.size(); i > 1; --i) std::swap(idx[i - 1], idx[rng() % i]);
  const size_t q = idx.size() / 2;
  const std::vector<int64_t> query(idx.begin(), idx.begin() + q), ref(idx.begin() + q, idx.end());
  return {held_out_features_.index_select(0, torch::tensor(query, torch::kInt64)),
          held_out_features_.index_select(0, torch::tensor(ref, torch::kInt64))};
}

Result<QualityReport> QualityMeter::MeasureFeatures(const torch::Tensor& features, const torch::Tensor& predicted,
                                                    const std::vector<int64_t>& classes) const {
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
  std::vector<torch::Tensor> pooled_real, pooled_gen, pooled_query, pooled_ref;
  for (int64_t c = 0; c < k; ++c) {
    const torch::Tensor rows = RowsOf(cls, c);
    if (rows.numel() == 0) continue;
    ClassQuality q;
    q.label = labels_[c];
    q.count = rows.numel();
    q.accuracy = (predicted.index_select(0, rows) == c).to(torch::kFloat64).mean().item<double>();
    const torch::Tensor gen = features.index_select(0, rows);
    const torch::Tensor real = held_out_features_.index_select(0, RowsOf(held_out_classes_, c));
    pooled_real.push_back(real);
    const std::pair<torch::Tensor, torch::Tensor> halves = HeldOutHalves(static_cast<int>(c));
    const torch::Tensor& query = halves.first;
    const torch::Tensor& ref = halves.second;
    pooled_ref.push_back(ref);
    q.fd_count = std::min<int64_t>(q.count, query.size(0));
    q.frechet = q.frechet_real = q.frechet_ratio = q.precision = q.recall = kNaN;
    if (q.fd_count >= 1) {
      pooled_gen.push_back(gen.slice(0, 0, q.fd_count));
      pooled_query.push_back(query.slice(0, 0, q.fd_count));
    }
    if (q.fd_count >= 2 && ref.size(0) >= 2) {
      Result<double> fd = FrechetDistance(gen.slice(0, 0, q.fd_count), ref);
      Result<double> fd_real = FrechetDistance(query.slice(0, 0, q.fd_count), ref);
      if (!fd.ok()) return fd.status();
      if (!fd_real.ok()) return fd_real.status();
      q.frechet = *fd;
      q.frechet_real = *fd_real;
      q.frechet_ratio = q.frechet_real > 0 ? q.frechet / q.frechet_real : kNaN;
    }
    if (gen.size(0) > options_.knn_k && real.size(0) > options_.knn_k) {
      Result<PrecisionRecall> pr = ManifoldPrecisionRecall(real, gen, options_.knn_k);
      if (!pr.ok()) return pr.status();
      q.precision = pr->precision;
      q.recall = pr->recall;
    }
    report.classes.push_back(q);
  }
  // Overall: one Frechet distance over all classes at once, class-matched by composition (each
  // class contributes the same number of generated and of held-out query sprites) against the
  // reference halves of those classes. A mean of per-class distances would be ruled by the
  // smallest class: with 6 held-out food sprites its covariance, and so its real-vs-real
  // distance, is mostly noise.
  report.frechet = report.frechet_real = report.frechet_ratio = kNaN;
  // A class adds to pooled_ref before it adds to pooled_gen, so both are non-empty here.
  const torch::Tensor gen_all = pooled_gen.empty() ? torch::Tensor() : torch::cat(pooled_gen);
  const torch::Tensor ref = pooled_gen.empty() ? torch::Tensor() : torch::cat(pooled_ref);
  // Like the per-class figures: NaN, not an error, when fewer than 2 sprites stand on a side.
  if (gen_all.defined() && gen_all.size(0) >= 2 && ref.size(0) >= 2) {
    Result<double> fd = FrechetDistance(gen_all, ref);
    Result<double> fd_real = FrechetDistance(torch::cat(pooled_query), ref);
    if (!fd.ok()) return fd.status();
    if (!fd_real.ok()) return fd_real.status();
    report.frechet = *fd;
    report.frechet_real = *fd_real;
    report.frechet_ratio = report.frechet_real > 0 ? report.frechet / report.frechet_real : kNaN;
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
  if (!images.defined() || images.dim() != 4 || images.size(1) != 3 || images.size(2) != options_.height ||
      images.size(3) != options_.height) {
    return Status::InvalidArgument("images must be [N, 3, " + std::to_string(options_.height) + ", " +
                                   std::to_string(options_.height) + "]");
  }
  try {
    // What a PNG of the sprite holds: clamped to [-1, 1], 8 bits per channel.
    const torch::Tensor x = images.to(torch::kCPU, torch::kFloat32).clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
                                .div(127.5).sub(1.0);
    SpriteClassifier net = net_;
    ClassifierOutput out = RunClassifier(net, x);
    return MeasureFeatures(out.features, out.predicted, classes);
  } catch (const std::exception& e) {
    return Status::Internal(std::string("quality meter: ") + e.what());
  }
}

Result<QualityReport> QualityMeter::MeasureHeldOutReal(int64_t per_class) const {
  std::vector<torch::Tensor> feats;
  std::vector<int64_t> classes;
  for (int c = 0; c < static_cast<int>(labels_.size()); ++c) {
    const torch::Tensor query = HeldOutHalves(c).first;
    torch::Tensor f = query.slice(0, 0, std::min<int64_t>(per_class, query.size(0)));
    feats.push_back(f);
    classes.insert(classes.end(), f.size(0), c);
  }
  const torch::Tensor features = torch::cat(feats);
  SpriteClassifier net = net_;
  torch::NoGradGuard no_grad;
  const torch::Tensor predicted = net->logits_from_features(features).argmax(1);
  return MeasureFeatures(features, predicted, classes);
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
