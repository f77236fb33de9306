#include "commands/commands.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "core/checkpoint.h"
#include "core/runtime.h"
#include "core/sampler.h"
#include "core/sampling_defaults.h"

namespace spritediff {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void AddBenchCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    std::string model;
    std::vector<int> batches{1, 4, 16, 32, 64};
    int ddim_batch = 32;
    int steps = kDefaultDdimSteps;
    int repeats = 20;
    std::string sampler = "ddim";
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "offline speed figures: forward ms per batch size, DDIM samples/s");
  cmd->add_option("--model", a->model, "model directory or name (default: a fresh n_feat=64 16x16 network)");
  cmd->add_option("--batches", a->batches, "batch sizes for the forward timing")->delimiter(',')->capture_default_str();
  cmd->add_option("--ddim-batch", a->ddim_batch, "batch of the DDIM sampling run")->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--steps", a->steps, "sampling steps")->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--sampler", a->sampler, "sampler of the sampling run: " + SamplerNames())
      ->check(CLI::IsMember({"ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde"}))
      ->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "timed forwards per batch size")->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd->callback([a, &common] {
    AppConfig config = ResolveConfig(common);
    const std::string device_name = PrepareCompute(config);
    const torch::Device device(device_name);
    ContextUnet net{nullptr};
    ModelInfo info;
    if (!a->model.empty()) {
      Result<LoadedModel> model = LoadModel(ModelDir(a->model, config));
      if (!model.ok()) Fail(model.status().message());
      net = model->net;
      info = model->info;
    } else {
      torch::manual_seed(0);
      net = ContextUnet(info.arch);
      info.labels = {"a", "b", "c", "d", "e"};
    }
    if (a->steps > info.schedule.timesteps) Fail("--steps must be at most T=" + std::to_string(info.schedule.timesteps));
    net->to(device);
    net->eval();
    torch::NoGradGuard no_grad;
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    nlohmann::json report = {{"device", device_name}, {"threads", at::get_num_threads()}, {"blas", CpuBlasName()},
                             {"n_feat", info.arch.n_feat}, {"height", info.arch.height},
                             {"parameters", ParameterCount(*net)}};
    for (int b : a->batches) {
      if (b < 1 || b > 4096) Fail("--batches values must be in [1, 4096]");
      torch::Tensor x = torch::randn({b, info.arch.in_channels, info.arch.height, info.arch.height}).to(device);
      torch::Tensor t = torch::full({b}, 0.5f).to(device);
      torch::Tensor c = torch::zeros({b, info.arch.n_cfeat}).to(device);
      for (int i = 0; i < 3; ++i) net->forward(x, t, c);
      sync();
      const auto start = Clock::now();
      for (int i = 0; i < a->repeats; ++i) net->forward(x, t, c);
      sync();
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count() / a->repeats;
      report["forward_ms"][std::to_string(b)] = std::round(ms * 100) / 100;
      std::printf("forward batch %4d: %8.2f ms  (%7.1f rows/s)\n", b, ms, b * 1000.0 / ms);
    }
    NoiseSchedule schedule(info.schedule);
    SamplerKind sampler = SamplerKind::kDdim;
    if (!ParseSamplerName(a->sampler, &sampler)) Fail("--sampler must be one of " + SamplerNames());
    report["sampler"] = a->sampler;
    report["steps"] = a->steps;
    for (double guidance : {1.0, 2.0}) {
      std::vector<RowSpec> specs(a->ddim_batch);
      for (int i = 0; i < a->ddim_batch; ++i) {
        specs[i].sampler = sampler;
        specs[i].eta = SamplerDefaultEta(sampler);
        specs[i].steps = a->steps;
        specs[i].guidance = guidance;
        specs[i].context.assign(info.arch.n_cfeat, 0.0f);
        specs[i].context[i % info.arch.n_cfeat] = 1.0f;
        specs[i].seed = 1 + i;
      }
      SampleAll(net, schedule, specs, device);  // warm-up
      sync();
      const auto start = Clock::now();
      SampleAll(net, schedule, specs, device);
      sync();
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      // "ddim_*" keys as before for DDIM; every run also fills the sampler-neutral keys.
      const std::string key = guidance == 1.0 ? "samples_per_s" : "guided_samples_per_s";
      report[key] = std::round(a->ddim_batch / s * 100) / 100;
      if (sampler == SamplerKind::kDdim) report["ddim_" + key] = report[key];
      std::printf("%s-%d batch %d guidance %.0f: %.3f s  (%.2f samples/s)\n", SamplerName(sampler), a->steps,
                  a->ddim_batch, guidance, s, a->ddim_batch / s);
    }
    std::printf("%s\n", report.dump().c_str());
  });
}

}  // namespace spritediff
