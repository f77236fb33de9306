#include "core/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>
#include <sstream>

#include "common/image.h"
#include "core/sampler.h"

namespace spritediff {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

Status TrainConfig::Validate() const {
  if (data.empty()) return Status::InvalidArgument("--data is required");
  if (out.empty()) return Status::InvalidArgument("--out is required");
  using namespace training;  // NOLINT: the settings' table
  for (const Status& s :
       {CheckImageSize(height, "--height"), CheckChannels(channels, "--channels"), kEpochs.Check(epochs, kEpochs.flag),
        kBatchSize.Check(batch_size, kBatchSize.flag), kLr.Check(lr, kLr.flag),
        kContextDropout.Check(context_dropout, kContextDropout.flag), kEmaDecay.Check(ema_decay, kEmaDecay.flag),
        CheckClassBalance(class_balance, "--class-balance"), kNFeat.Check(n_feat, kNFeat.flag),
        kCheckpointEvery.Check(checkpoint_every, kCheckpointEvery.flag), kEvalPerClass.Check(eval.per_class, kEvalPerClass.flag)}) {
    if (!s.ok()) return s;
  }
  if (simulate_ranks < 1 || simulate_ranks > 64) return Status::InvalidArgument("--simulate-ranks must be in [1, 64]");
  if (simulate_ranks > 1 && distributed.enabled()) {
    return Status::InvalidArgument("--simulate-ranks is for single-process runs; this one has WORLD_SIZE=" +
                                   std::to_string(distributed.world_size));
  }
  if (!(distributed.timeout_s > 0)) return Status::InvalidArgument("--dist-timeout must be > 0 seconds");
  if (!(distributed.bucket_mb > 0 && distributed.bucket_mb <= 1024)) {
    return Status::InvalidArgument("--bucket-mb must be in (0, 1024]");
  }
  if (sample_grid_per_label < 0 || sample_grid_per_label > 64) {
    return Status::InvalidArgument("--grid-per-label must be in [0, 64]");
  }
  ModelConfig arch;
  arch.n_feat = n_feat;
  arch.height = height;
  arch.in_channels = channels;
  return arch.Validate();
}

void UpdateEma(torch::nn::Module& ema, torch::nn::Module& live, double decay) {
  torch::NoGradGuard no_grad;
  auto ema_params = ema.parameters();
  auto live_params = live.parameters();
  for (size_t i = 0; i < ema_params.size(); ++i) ema_params[i].lerp_(live_params[i], 1.0 - decay);
  auto ema_buffers = ema.buffers();
  auto live_buffers = live.buffers();
  for (size_t i = 0; i < ema_buffers.size(); ++i) {
    if (ema_buffers[i].is_floating_point()) ema_buffers[i].lerp_(live_buffers[i], 1.0 - decay);
    else ema_buffers[i].copy_(live_buffers[i]);
  }
}

std::pair<torch::Tensor, torch::Tensor> ForwardProcessTables(const NoiseSchedule& schedule, torch::Device device) {
  const int T = schedule.timesteps();
  std::vector<float> sab(T + 1), s1mab(T + 1);
  for (int t = 0; t <= T; ++t) {
    sab[t] = static_cast<float>(std::sqrt(schedule.alpha_bar(t)));
    s1mab[t] = static_cast<float>(std::sqrt(1.0 - schedule.alpha_bar(t)));
  }
  return {torch::tensor(sab).to(device), torch::tensor(s1mab).to(device)};
}

torch::Tensor ForwardDiffuse(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& noise,
                             const torch::Tensor& sqrt_alpha_bar, const torch::Tensor& sqrt_one_minus_alpha_bar) {
  return sqrt_alpha_bar.index_select(0, t).view({-1, 1, 1, 1}) * x0 +
         sqrt_one_minus_alpha_bar.index_select(0, t).view({-1, 1, 1, 1}) * noise;
}

namespace {

// Everything that changes while training runs; what the state file holds.
struct TrainState {
  int epoch = 0;               // epochs completed
  int64_t batch_in_epoch = 0;  // batches of the current epoch completed
  int64_t step = 0;
  torch::Tensor order;         // sample order of the current epoch
  double epoch_loss_sum = 0;
  int64_t epoch_loss_count = 0;
  std::vector<double> epoch_losses;
  double wall_s = 0;           // across all sessions
};

const char* PrecisionName(const TrainConfig& c) { return c.bf16_convolutions ? "bf16" : "fp32"; }

json RunIdentity(const TrainConfig& c, const ModelInfo& info) {
  return json{{"architecture", ModelInfoToJson(info)["architecture"]},
              {"schedule", ModelInfoToJson(info)["schedule"]},
              {"labels", info.labels},
              {"batch_size", c.batch_size}};
}

torch::Tensor DoubleTensor(const std::vector<double>& v) {
  return torch::tensor(v.empty() ? std::vector<double>{} : v, torch::kFloat64);
}

Status SaveState(const std::string& path, const TrainConfig& c, const ModelInfo& info, ContextUnet& net,
                 ContextUnet& ema, torch::optim::Adam& opt, torch::Generator& gen, const TrainState& st) {
  torch::serialize::OutputArchive archive, net_ar, ema_ar, opt_ar;
  WriteModuleTensors(net_ar, *net);
  WriteModuleTensors(ema_ar, *ema);
  opt.save(opt_ar);
  archive.write("net", net_ar);
  archive.write("ema", ema_ar);
  archive.write("optimizer", opt_ar);
  archive.write("generator", gen.get_state());
  archive.write("order", st.order.defined() ? st.order : torch::empty({0}, torch::kInt64));
  archive.write("counters", torch::tensor({static_cast<int64_t>(st.epoch), st.batch_in_epoch, st.step,
                                           st.epoch_loss_count}, torch::kInt64));
  archive.write("sums", torch::tensor({st.epoch_loss_sum, st.wall_s}, torch::kFloat64));
  archive.write("epoch_losses", DoubleTensor(st.epoch_losses));
  archive.write("identity", c10::IValue(RunIdentity(c, info).dump()));
  archive.write("world_size", torch::tensor({static_cast<int64_t>(c.ranks())}, torch::kInt64));
  archive.write("precision", c10::IValue(std::string(PrecisionName(c))));
  fs::create_directories(fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path());
  return SaveArchiveAtomic(archive, path);
}

Status LoadState(const std::string& path, const TrainConfig& c, const ModelInfo& info, ContextUnet& net,
                 ContextUnet& ema, torch::optim::Adam& opt, torch::Generator& gen, TrainState& st) {
  try {
    torch::serialize::InputArchive archive, net_ar, ema_ar, opt_ar;
    // Every tensor onto this run's device, wherever the state was written: Adam's moments must sit
    // beside the weights (a CPU run resumed on a GPU, or the reverse). The bookkeeping tensors are
    // read back to the CPU below.
    const torch::Device device(c.device);
    archive.load_from(path, device);
    c10::IValue identity;
    archive.read("identity", identity);
    torch::Tensor world;
    const int64_t saved_ranks = archive.try_read("world_size", world) ? world.item<int64_t>() : 1;
    if (saved_ranks != c.ranks()) {
      return Status::FailedPrecondition(
          path + ": this state was written by a run on " + std::to_string(saved_ranks) + " rank(s) (global batch " +
          std::to_string(saved_ranks * c.batch_size) + "); this run has " + std::to_string(c.ranks()) +
          " (global batch " + std::to_string(c.ranks() * c.batch_size) + "). Resume with WORLD_SIZE=" +
          std::to_string(saved_ranks) + ", or start a new run: the sample order, the random draws and the BatchNorm "
          "statistics depend on how the global batch is split over ranks");
    }
    c10::IValue precision;  // absent in states written before 2026-11-26: not checked
    if (archive.try_read("precision", precision) && precision.isString() &&
        precision.toStringRef() != PrecisionName(c)) {
      return Status::FailedPrecondition(path + ": this state was written by a run in " + precision.toStringRef() +
                                        "; this run is " + PrecisionName(c) + ". Resume with --training-precision " +
                                        precision.toStringRef() + ", or start a new run: the optimizer's moments " +
                                        "and the loss curve so far belong to that precision");
    }
    const json saved = json::parse(identity.toStringRef());
    const json now = RunIdentity(c, info);
    if (saved != now) {
      return Status::FailedPrecondition(path + ": the saved run differs from this one (saved " + saved.dump() +
                                        ", now " + now.dump() + ")");
    }
    archive.read("net", net_ar);
    archive.read("ema", ema_ar);
    archive.read("optimizer", opt_ar);
    Status s = ReadModuleTensors(net_ar, *net, path + " [net]");
    if (!s.ok()) return s;
    s = ReadModuleTensors(ema_ar, *ema, path + " [ema]");
    if (!s.ok()) return s;
    opt.load(opt_ar);
    torch::Tensor g, order, counters, sums, losses;
    archive.read("generator", g);
    gen.set_state(g.to(torch::kCPU));
    archive.read("order", order);
    archive.read("counters", counters);
    archive.read("sums", sums);
    archive.read("epoch_losses", losses);
    order = order.to(torch::kCPU);
    counters = counters.to(torch::kCPU);
    sums = sums.to(torch::kCPU);
    losses = losses.to(torch::kCPU).contiguous();
    st.epoch = static_cast<int>(counters[0].item<int64_t>());
    st.batch_in_epoch = counters[1].item<int64_t>();
    st.step = counters[2].item<int64_t>();
    st.epoch_loss_count = counters[3].item<int64_t>();
    st.epoch_loss_sum = sums[0].item<double>();
    st.wall_s = sums[1].item<double>();
    st.order = order.numel() > 0 ? order : torch::Tensor();
    st.epoch_losses.assign(losses.data_ptr<double>(), losses.data_ptr<double>() + losses.numel());
    return Status::Ok();
  } catch (const c10::Error& e) {
    return Status::InvalidArgument(path + ": not a readable training state (" + e.what_without_backtrace() + ")");
  } catch (const json::exception& e) {
    return Status::InvalidArgument(path + ": bad identity record (" + e.what() + ")");
  }
}

Status WriteTrainingLog(const std::string& dir, const TrainState& st) {
  std::ostringstream csv;
  csv << "epoch,loss\n";
  for (size_t i = 0; i < st.epoch_losses.size(); ++i) csv << (i + 1) << "," << st.epoch_losses[i] << "\n";
  return WriteFileAtomic((fs::path(dir) / "training-log.csv").string(), csv.str());
}

// While alive, the live network samples as the saved model will: eval mode (running BatchNorm
// statistics, left untouched) and float32 convolutions. Restores train mode and the training
// precision after. For the sample grid and the meter when there is no EMA network to sample.
class SampleAsSaved {
 public:
  explicit SampleAsSaved(ContextUnet& net) : net_(net), bf16_(net->bfloat16_convolutions()), training_(net->is_training()) {
    net_->eval();
    net_->UseBFloat16Convolutions(false);
  }
  ~SampleAsSaved() {
    net_->UseBFloat16Convolutions(bf16_);
    net_->train(training_);
  }
  SampleAsSaved(const SampleAsSaved&) = delete;
  SampleAsSaved& operator=(const SampleAsSaved&) = delete;

 private:
  ContextUnet& net_;
  bool bf16_, training_;
};

Result<std::string> WriteSampleGrid(const std::string& dir, ContextUnet& ema, const ModelInfo& info, int per_label,
                                    torch::Device device) {
  NoiseSchedule schedule(info.schedule);
  std::vector<RowSpec> specs;
  for (size_t c = 0; c < info.labels.size(); ++c) {
    for (int i = 0; i < per_label; ++i) {
      RowSpec spec;
      spec.sampler = SamplerKind::kDdim;
      spec.steps = DefaultSteps(spec.sampler, info.schedule.timesteps);
      spec.guidance = 2.0;
      spec.context.assign(info.labels.size(), 0.0f);
      spec.context[c] = 1.0f;
      spec.seed = 1000 + i;
      specs.push_back(spec);
    }
  }
  torch::Tensor x = SampleAll(ema, schedule, specs, device);
  std::vector<Image> tiles;
  for (int64_t i = 0; i < x.size(0); ++i) {
    // RGBA sprites on a checkerboard (8-pixel squares after the 4x upscale) so the eye sees alpha.
    tiles.push_back(CompositeOn(UpscaleNearest(TensorToImage(x[i]), 4), Background{true, 8, {0, 0, 0}}));
  }
  Result<Image> grid = MakeGrid(tiles, per_label, 2);
  if (!grid.ok()) return grid.status();
  const std::string path = (fs::path(dir) / "samples.png").string();
  Status s = WritePng(path, *grid);
  if (!s.ok()) return s;
  return path;
}

// The floating-point buffers (BatchNorm running statistics), which each rank updates from its own
// rows and which are averaged over the ranks after every step.
std::vector<torch::Tensor> FloatBuffers(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const torch::Tensor& b : m.buffers()) {
    if (b.is_floating_point()) out.push_back(b);
  }
  return out;
}

torch::Tensor Flatten(const std::vector<torch::Tensor>& v) {
  std::vector<torch::Tensor> flat;
  for (const torch::Tensor& t : v) flat.push_back(t.detach().reshape({-1}));
  return flat.empty() ? torch::zeros({0}) : torch::cat(flat);
}

void Unflatten(const torch::Tensor& flat, std::vector<torch::Tensor>& v) {
  torch::NoGradGuard no_grad;
  int64_t at = 0;
  for (torch::Tensor& t : v) {
    t.copy_(flat.narrow(0, at, t.numel()).view(t.sizes()));
    at += t.numel();
  }
}

Result<TrainSummary> TrainWith(const TrainConfig& c, DataParallel* dp, const std::atomic<bool>* stop,
                               const ProgressFn& progress);

}  // namespace

std::string TrainingStatePath(const TrainConfig& c) {
  return c.state_path.empty() ? (fs::path(c.out) / "train-state.pt").string() : c.state_path;
}

Result<std::string> SavedTrainingPrecision(const std::string& state_path) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(state_path, torch::kCPU);
    c10::IValue precision;
    if (archive.try_read("precision", precision) && precision.isString()) return precision.toStringRef();
    return std::string();
  } catch (const c10::Error& e) {
    return Status::InvalidArgument(state_path + ": not a readable training state (" + e.what_without_backtrace() + ")");
  } catch (const std::exception& e) {
    return Status::InvalidArgument(state_path + ": not a readable training state (" + e.what() + ")");
  }
}

Result<TrainSummary> Train(const TrainConfig& config, const std::atomic<bool>* stop, const ProgressFn& progress) {
  Status valid = config.Validate();
  if (!valid.ok()) return valid;
  TrainConfig c = config;
  std::unique_ptr<DataParallel> dp;
  if (c.distributed.enabled()) {
    Result<std::unique_ptr<DataParallel>> joined = DataParallel::Connect(c.distributed, torch::Device(c.device));
    if (!joined.ok()) return joined.status();
    dp = std::move(*joined);
  }
  Result<TrainSummary> result = TrainWith(c, dp.get(), stop, progress);
  if (!result.ok() && dp) dp->ReportFailure(result.status().message());
  return result;
}

namespace {

Result<TrainSummary> TrainWith(const TrainConfig& config, DataParallel* dp, const std::atomic<bool>* stop,
                               const ProgressFn& progress) {
  TrainConfig c = config;
  const int rank = dp ? dp->rank() : 0;
  const int64_t ranks = c.ranks();
  c.state_path = TrainingStatePath(c);
  if (c.name.empty()) c.name = fs::path(c.out).lexically_normal().filename().string();
  if (c.name.empty() || c.name == ".") c.name = fs::path(c.out).lexically_normal().parent_path().filename().string();
  if (c.resume && !fs::exists(c.state_path)) {
    return Status::NotFound(c.state_path + ": no training state to resume from");
  }

  Result<Dataset> data = LoadDataset(c.data, c.height, c.channels);
  if (!data.ok()) return data.status();
  const int64_t n = data->size();
  if (n < c.batch_size * ranks) {
    return Status::FailedPrecondition(c.data + ": " + std::to_string(n) + " images, fewer than one batch of " +
                                      std::to_string(c.batch_size * ranks) +
                                      (ranks > 1 ? " (" + std::to_string(ranks) + " ranks x " +
                                                       std::to_string(c.batch_size) + ")"
                                                 : std::string()));
  }
  const torch::Device device(c.device);

  ModelInfo info;
  info.name = c.name;
  info.arch.n_feat = c.n_feat;
  info.arch.height = c.height;
  info.arch.in_channels = c.channels;
  info.arch.n_cfeat = static_cast<int>(data->labels.size());
  info.schedule = c.schedule;
  info.labels = data->labels;
  Status s = ValidateModelInfo(info);
  if (!s.ok()) return s;

  torch::manual_seed(c.seed);  // weight initialisation
  ContextUnet net(info.arch);
  ContextUnet ema(info.arch);
  UpdateEma(*ema, *net, 0.0);
  net->to(device);
  ema->to(device);
  ema->eval();
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(c.lr));
  torch::Generator gen = at::detail::createCPUGenerator(c.seed * 2654435761ULL + 1);

  if (!c.init_from.empty() && !c.resume) {
    Result<LoadedModel> base = LoadModel(c.init_from);
    if (!base.ok()) return base.status();
    const ModelConfig& b = base->info.arch;
    if (b.n_feat != info.arch.n_feat || b.height != info.arch.height || b.n_cfeat != info.arch.n_cfeat ||
        b.in_channels != info.arch.in_channels) {
      return Status::FailedPrecondition(
          c.init_from + ": base model has n_feat " + std::to_string(b.n_feat) + ", height " +
          std::to_string(b.height) + ", " + std::to_string(b.n_cfeat) + " labels; this run needs n_feat " +
          std::to_string(info.arch.n_feat) + ", height " + std::to_string(info.arch.height) + ", " +
          std::to_string(info.arch.n_cfeat) + " labels");
    }
    if (base->info.labels != info.labels) {
      auto join = [](const std::vector<std::string>& v) {
        std::string out;
        for (const auto& l : v) out += (out.empty() ? "" : ",") + l;
        return out;
      };
      return Status::FailedPrecondition(c.init_from + ": base model's labels (" + join(base->info.labels) +
                                        ") differ from the dataset's (" + join(info.labels) +
                                        "); context slot i must mean the same class in both (set the dataset's "
                                        "order with labels.txt)");
    }
    torch::NoGradGuard no_grad;
    auto src = base->net->named_parameters();
    for (auto& p : net->named_parameters()) p.value().copy_(src[p.key()]);
    auto src_buffers = base->net->named_buffers();
    for (auto& b2 : net->named_buffers()) b2.value().copy_(src_buffers[b2.key()]);
    UpdateEma(*ema, *net, 0.0);
  }

  TrainState st;
  if (c.resume) {
    s = LoadState(c.state_path, c, info, net, ema, opt, gen, st);
    if (!s.ok()) return s;
  }

  const int T = c.schedule.timesteps;
  NoiseSchedule schedule(c.schedule);
  const std::pair<torch::Tensor, torch::Tensor> tables = ForwardProcessTables(schedule, device);
  const torch::Tensor& sqrt_ab = tables.first;  // named, not bound: lambdas below capture them
  const torch::Tensor& sqrt_1mab = tables.second;
  const torch::Tensor images = data->images.to(device);
  const torch::Tensor contexts = data->contexts.to(device);
  torch::Tensor sample_weights;
  if (c.class_balance == "sqrt") {
    torch::Tensor counts = torch::tensor(data->class_counts, torch::kFloat64);
    sample_weights = counts.index_select(0, data->contexts.argmax(1)).rsqrt();
  }

  const int64_t B = c.batch_size;     // rows per rank
  const int64_t G = B * ranks;        // rows per optimizer step, over all ranks
  const int64_t steps_per_epoch = n / G;
  const int64_t H = c.height;
  const int64_t C = info.arch.in_channels;

  json provenance = {{"data", c.data},
                     {"data_format", data->format},
                     {"images", n},
                     {"class_counts", data->class_counts},
                     {"channels", c.channels},
                     {"epochs", c.epochs},
                     {"batch_size", c.batch_size},
                     {"lr", c.lr},
                     {"lr_schedule", "linear decay to 0 over the epochs"},
                     {"context_dropout", c.context_dropout},
                     {"ema_decay", c.ema_decay},
                     {"flip", c.flip},
                     {"class_balance", c.class_balance},
                     {"seed", c.seed},
                     {"threads", at::get_num_threads()},
                     {"device", c.device},
                     {"precision", c.bf16_convolutions ? "bf16 convolutions, float32 weights" : "fp32"},
                     {"command", c.command_line}};
  if (!c.init_from.empty()) provenance["fine_tuned_from"] = c.init_from;

  // Opened before training so that a bad cache dir fails the run at once, not at a checkpoint.
  std::optional<QualityMeter> meter;
  QualityReport quality;
  if (c.eval.per_class > 0 && ranks > 1) {
    // The meter samples for minutes on rank 0 while the others would wait in an all-reduce.
    return Status::InvalidArgument("the quality meter at checkpoints (eval per_class) runs in single-process "
                                   "training only; judge a data-parallel run's model with spritediffd eval");
  }
  if (c.eval.per_class > 0) {
    MeterOptions mo = c.eval.meter;
    mo.data = c.data;
    mo.height = c.height;
    mo.channels = c.channels;
    mo.cache_dir = c.eval.cache_dir;
    Result<QualityMeter> opened = QualityMeter::Open(mo, nullptr);
    if (!opened.ok()) return opened.status();
    meter.emplace(std::move(*opened));
  }

  TrainSummary summary;
  const auto session_start = Clock::now();
  const double wall_before = st.wall_s;
  auto wall_now = [&] { return wall_before + std::chrono::duration<double>(Clock::now() - session_start).count(); };
  double report_loss = 0;
  int64_t report_count = 0;
  auto report_time = Clock::now();
  const int64_t start_step = st.step;

  auto save_all = [&](bool write_grid) -> Result<std::string> {
    st.wall_s = wall_now();
    Status ss = SaveState(c.state_path, c, info, net, ema, opt, gen, st);
    if (!ss.ok()) return ss;
    ModelInfo out = info;
    out.provenance = provenance;
    out.provenance["epochs_done"] = st.epoch;
    out.provenance["steps"] = st.step;
    out.provenance["images_seen"] = st.step * G;
    out.provenance["ranks"] = ranks;
    out.provenance["wall_s"] = std::round(st.wall_s);
    out.provenance["final_loss"] = st.epoch_losses.empty() ? 0.0 : st.epoch_losses.back();
    out.provenance["weights"] = c.ema_decay > 0 ? "ema" : "live";
    ContextUnet& to_save = c.ema_decay > 0 ? ema : net;
    to_save->to(torch::kCPU);
    ss = SaveModel(c.out, out, to_save);
    to_save->to(device);
    if (!ss.ok()) return ss;
    ss = WriteTrainingLog(c.out, st);
    if (!ss.ok()) return ss;
    if (write_grid && c.sample_grid_per_label > 0) {
      SampleAsSaved as_saved(to_save);
      return WriteSampleGrid(c.out, to_save, info, c.sample_grid_per_label, device);
    }
    return std::string();
  };

  // Every rank starts from rank 0's weights and must agree on what it is about to do.
  std::unique_ptr<GradientBuckets> buckets;
  if (dp) {
    s = dp->Agree({{"the number of images", n},
                   {"the number of labels", static_cast<int64_t>(info.labels.size())},
                   {"--batch-size", c.batch_size},
                   {"--epochs", c.epochs},
                   {"--seed", static_cast<int64_t>(c.seed)},
                   {"--n-feat", c.n_feat},
                   {"--training-precision (1 = bf16 convolutions)", c.bf16_convolutions ? 1 : 0},
                   {"completed epochs (state file)", st.epoch},
                   {"completed steps (state file)", st.step},
                   {"batches into the epoch (state file)", st.batch_in_epoch}});
    if (!s.ok()) return s;
    std::vector<torch::Tensor> replica = net->parameters();
    for (const torch::Tensor& b : net->buffers()) replica.push_back(b);
    for (const torch::Tensor& p : ema->parameters()) replica.push_back(p);
    for (const torch::Tensor& b : ema->buffers()) replica.push_back(b);
    {
      torch::NoGradGuard no_grad;
      s = dp->Broadcast(replica, "broadcasting rank 0's weights");
    }
    if (!s.ok()) return s;
    buckets = std::make_unique<GradientBuckets>(*dp, net->parameters(), c.distributed.bucket_mb);
    dp->MarkStep(st.step);
  }
  std::vector<torch::Tensor> float_buffers = FloatBuffers(*net);
  const double inv_ranks = 1.0 / static_cast<double>(ranks);
  bool agreed_stop = false;
  double report_comm_s = 0;

  net->train();
  net->UseBFloat16Convolutions(c.bf16_convolutions);
  for (; st.epoch < c.epochs; ++st.epoch) {
    const double lr = c.lr * (1.0 - static_cast<double>(st.epoch) / c.epochs);
    for (auto& group : opt.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
    if (st.batch_in_epoch == 0 || !st.order.defined()) {
      st.order = sample_weights.defined() ? torch::multinomial(sample_weights, n, /*replacement=*/true, gen)
                                          : torch::randperm(n, gen, torch::kInt64);
      st.batch_in_epoch = 0;
      st.epoch_loss_sum = 0;
      st.epoch_loss_count = 0;
    }
    for (; st.batch_in_epoch < steps_per_epoch; ++st.batch_in_epoch) {
      const bool stop_now = dp ? agreed_stop : (stop != nullptr && stop->load());
      if (stop_now) {
        if (rank == 0) {
          Result<std::string> saved = save_all(false);
          if (!saved.ok()) return saved.status();
        }
        if (dp) {
          s = dp->Barrier("waiting for rank 0 to save the state");
          if (!s.ok()) return s;
        }
        summary.stopped_early = true;
        summary.epochs_done = st.epoch;
        summary.steps = st.step;
        summary.wall_s = wall_now();
        summary.epoch_losses = st.epoch_losses;
        return summary;
      }
      // The distributed sampler: every rank draws the same global batch of G rows from the shared
      // generator (so the order, class balance and noise are those of a single process with
      // batch G) and trains on its own B rows of it.
      double comm_s = 0;
      torch::Tensor idx = st.order.slice(0, st.batch_in_epoch * G, (st.batch_in_epoch + 1) * G).to(device);
      torch::Tensor flip_rows = torch::rand({G}, gen) < 0.5;
      torch::Tensor keep = (torch::rand({G}, gen) >= c.context_dropout).to(torch::kFloat32);
      torch::Tensor t_all = torch::randint(1, T + 1, {G}, gen, torch::kInt64);
      torch::Tensor noise_all = torch::randn({G, C, H, H}, gen, torch::kFloat32).to(device);
      auto rows_loss = [&](int64_t part) {
        const int64_t lo = part * B, hi = (part + 1) * B;
        torch::Tensor rows = idx.slice(0, lo, hi);
        torch::Tensor x0 = images.index_select(0, rows);
        torch::Tensor ctx = contexts.index_select(0, rows);
        torch::Tensor noise = noise_all.slice(0, lo, hi);
        if (c.flip) x0 = torch::where(flip_rows.slice(0, lo, hi).to(device).view({-1, 1, 1, 1}), x0.flip({3}), x0);
        ctx = ctx * keep.slice(0, lo, hi).to(device).view({-1, 1});
        torch::Tensor t = t_all.slice(0, lo, hi).to(device);
        torch::Tensor xt = ForwardDiffuse(x0, t, noise, sqrt_ab, sqrt_1mab);
        torch::Tensor pred = net->forward(xt, t.to(torch::kFloat32) / static_cast<float>(T), ctx);
        return torch::mse_loss(pred, noise);
      };
      double l = 0;
      opt.zero_grad();
      if (dp) {
        buckets->Begin();
        torch::Tensor loss = rows_loss(rank);
        // BatchNorm statistics from this rank's rows travel while backward runs.
        torch::Tensor buffers = Flatten(float_buffers);
        Result<c10::intrusive_ptr<c10d::Work>> buffer_work = dp->StartAllReduceSum(buffers, "all-reduce of buffers");
        if (!buffer_work.ok()) return buffer_work.status();
        loss.backward();
        const auto wait_start = Clock::now();
        s = buckets->Finish();
        if (!s.ok()) return s;
        s = dp->Wait(*buffer_work, "all-reduce of buffers");
        if (!s.ok()) return s;
        comm_s += std::chrono::duration<double>(Clock::now() - wait_start).count();
        Unflatten(buffers.mul_(inv_ranks), float_buffers);
        l = loss.item<double>();
      } else if (ranks > 1) {
        // What `ranks` processes would compute: each part's BatchNorm sees only its own rows,
        // gradients and statistics are summed over the parts and divided by their number, in the
        // same order as the all-reduce adds them.
        torch::NoGradGuard outer_no_grad;
        const torch::Tensor before = Flatten(float_buffers).clone();
        torch::Tensor buffer_sum = torch::zeros_like(before);
        double loss_sum = 0;
        for (int64_t part = 0; part < ranks; ++part) {
          Unflatten(before, float_buffers);
          torch::AutoGradMode enable_grad(true);
          torch::Tensor loss = rows_loss(part);
          loss.backward();
          buffer_sum.add_(Flatten(float_buffers));
          loss_sum += loss.item<double>();
        }
        for (torch::Tensor& p : net->parameters()) {
          if (p.grad().defined()) p.mutable_grad().mul_(inv_ranks);
        }
        Unflatten(buffer_sum.mul_(inv_ranks), float_buffers);
        l = loss_sum * inv_ranks;
      } else {
        torch::Tensor loss = rows_loss(0);
        loss.backward();
        l = loss.item<double>();
      }
      opt.step();
      // Warm-up keeps early EMA from dragging the random initial weights along.
      const double decay = std::min(c.ema_decay, (1.0 + st.step) / (10.0 + st.step));
      UpdateEma(*ema, *net, c.ema_decay > 0 ? decay : 0.0);
      ++st.step;
      if (dp) {
        // The mean loss over all ranks, and whether any rank was asked to stop.
        const auto wait_start = Clock::now();
        torch::Tensor tail =
            torch::tensor({l, (stop != nullptr && stop->load()) ? 1.0 : 0.0}, torch::kFloat64).to(device);
        s = dp->AllReduceSum(tail, "all-reduce of loss and stop flag");
        if (!s.ok()) return s;
        tail = tail.to(torch::kCPU);
        comm_s += std::chrono::duration<double>(Clock::now() - wait_start).count();
        l = tail[0].item<double>() * inv_ranks;
        agreed_stop = tail[1].item<double>() > 0;
        if (c.verify_replicas) {
          std::vector<torch::Tensor> replica = net->parameters();
          for (const torch::Tensor& b : net->buffers()) replica.push_back(b);
          s = dp->Agree({{"the weights' checksum after step " + std::to_string(st.step), TensorChecksum(replica)}});
          if (!s.ok()) return s;
          ++summary.replicas_verified;
        }
        dp->MarkStep(st.step);
      }
      report_comm_s += comm_s;
      st.epoch_loss_sum += l;
      st.epoch_loss_count++;
      report_loss += l;
      report_count++;
      if (progress && rank == 0 && c.log_every > 0 && st.step % c.log_every == 0) {
        const double dt = std::chrono::duration<double>(Clock::now() - report_time).count();
        const double session_s = std::chrono::duration<double>(Clock::now() - session_start).count();
        const int64_t remaining = (c.epochs - st.epoch) * steps_per_epoch - st.batch_in_epoch - 1;
        TrainProgress p;
        p.epoch = st.epoch + 1;
        p.epochs = c.epochs;
        p.step = st.step;
        p.steps_per_epoch = steps_per_epoch;
        p.loss = report_loss / report_count;
        p.images_per_s = report_count * G / std::max(dt, 1e-9);
        p.comm_share = report_comm_s / std::max(dt, 1e-9);
        p.lr = lr;
        p.elapsed_s = wall_now();
        p.eta_s = remaining * session_s / std::max<int64_t>(1, st.step - start_step);
        progress(p);
        report_loss = 0;
        report_count = 0;
        report_comm_s = 0;
        report_time = Clock::now();
      }
    }
    st.batch_in_epoch = 0;
    st.order = torch::Tensor();
    st.epoch_losses.push_back(st.epoch_loss_sum / std::max<int64_t>(1, st.epoch_loss_count));
    const bool last = st.epoch + 1 == c.epochs;
    const bool checkpoint = last || (st.epoch + 1) % c.checkpoint_every == 0;
    TrainProgress p;
    p.epoch = st.epoch + 1;
    p.epochs = c.epochs;
    p.step = st.step + 0;
    p.steps_per_epoch = steps_per_epoch;
    p.loss = st.epoch_losses.back();
    p.epoch_losses = &st.epoch_losses;
    p.lr = lr;
    p.elapsed_s = wall_now();
    p.epoch_end = true;
    if (checkpoint && meter && rank == 0) {  // data-parallel runs refuse the meter (train command)
      ContextUnet& judged = c.ema_decay > 0 ? ema : net;
      EvalSampling sampling = c.eval.sampling;
      sampling.per_class = c.eval.per_class;
      Result<GeneratedSet> set = [&] {
        SampleAsSaved as_saved(judged);  // the meter samples in eval mode
        return GenerateForMeter(*meter, judged, info.arch, info.labels, schedule, sampling, device);
      }();
      if (!set.ok()) return set.status();
      Result<QualityReport> q = meter->Measure(set->images, set->classes);
      if (!q.ok()) return q.status();
      quality = *q;
      provenance["quality"] = QualityReportToJson(quality);
      provenance["quality"]["sampling"] = {{"sampler", SamplerName(sampling.spec.sampler)},
                                           {"steps", sampling.spec.steps},
                                           {"eta", sampling.spec.eta},
                                           {"guidance", sampling.spec.guidance},
                                           {"per_class", sampling.per_class},
                                           {"seed", sampling.seed},
                                           {"epoch", st.epoch + 1}};
      p.quality = &quality;
    }
    if (checkpoint && rank == 0) {  // rank 0 alone writes; the others go on and wait in the next all-reduce
      ++st.epoch;  // the state on disk says this epoch is complete
      Result<std::string> grid = save_all(true);
      --st.epoch;
      if (!grid.ok()) return grid.status();
      p.checkpoint = true;
      p.grid_path = *grid;
    }
    if (progress && rank == 0) progress(p);
  }
  if (dp) {
    s = dp->Barrier("waiting for rank 0 to write the model");
    if (!s.ok()) return s;
  }
  summary.epochs_done = st.epoch;
  summary.steps = st.step;
  summary.final_loss = st.epoch_losses.empty() ? 0.0 : st.epoch_losses.back();
  summary.wall_s = wall_now();
  summary.epoch_losses = st.epoch_losses;
  return summary;
}

}  // namespace

}  // namespace spritediff
