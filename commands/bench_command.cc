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
#include "core/trainer.h"

namespace spritediff {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void AddBenchCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    std::string model;
    std::vector<int> batches{1, 4, 16, 32, 64};
    std::vector<int> ddim_batches{32};
    int steps = kDefaultDdimSteps;
    int repeats = 20;
    std::string sampler = "ddim";
    bool fold_batchnorm = false;
    int train_batch = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "offline speed figures: forward ms per batch size, DDIM samples/s");
  cmd->add_option("--model", a->model, "model directory or name (default: a fresh n_feat=64 16x16 network)");
  cmd->add_option("--batches", a->batches, "batch sizes for the forward timing")->delimiter(',')->capture_default_str();
  cmd->add_option("--ddim-batch", a->ddim_batches, "batch(es) of the sampling runs, e.g. 32,64; the first one "
                  "fills the single-valued keys")->delimiter(',')->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_flag("--fold-batchnorm", a->fold_batchnorm, "fold BatchNorms into their convolutions first (as serving does "
                "with fold_batchnorm in the config)");
  cmd->add_option("--train-batch", a->train_batch, "also time training steps at this batch (Adam, MSE on the noise, "
                  "as the course's reference times them); 0 = skip")->check(CLI::Range(0, 4096))->capture_default_str();
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
    if (a->fold_batchnorm) net->FuseBatchNormForInference();
    torch::NoGradGuard no_grad;
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    nlohmann::json report = {{"device", device_name}, {"threads", at::get_num_threads()}, {"blas", CpuBlasName()},
                             {"n_feat", info.arch.n_feat}, {"height", info.arch.height},
                             {"parameters", ParameterCount(*net)}, {"fold_batchnorm", a->fold_batchnorm}};
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
    auto make_specs = [&](int batch, double guidance) {
      std::vector<RowSpec> specs(batch);
      for (int i = 0; i < batch; ++i) {
        specs[i].sampler = sampler;
        specs[i].eta = SamplerDefaultEta(sampler);
        specs[i].steps = a->steps;
        specs[i].guidance = guidance;
        specs[i].context.assign(info.arch.n_cfeat, 0.0f);
        specs[i].context[i % info.arch.n_cfeat] = 1.0f;
        specs[i].seed = 1 + i;
      }
      return specs;
    };
    // One request's step on its own: a one-row, unguided run, per step.
    {
      const std::vector<RowSpec> one = make_specs(1, 1.0);
      SampleAll(net, schedule, one, device);  // warm-up
      sync();
      const auto start = Clock::now();
      for (int i = 0; i < a->repeats; ++i) SampleAll(net, schedule, one, device);
      sync();
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count() / (a->repeats * a->steps);
      report["step_ms_batch1"] = std::round(ms * 1000) / 1000;
      std::printf("one row, %s step: %.3f ms\n", SamplerName(sampler), ms);
    }
    for (size_t bi = 0; bi < a->ddim_batches.size(); ++bi) {
      const int batch = a->ddim_batches[bi];
      for (double guidance : {1.0, 2.0}) {
        const std::vector<RowSpec> specs = make_specs(batch, guidance);
        SampleAll(net, schedule, specs, device);  // warm-up
        sync();
        const auto start = Clock::now();
        SampleAll(net, schedule, specs, device);
        sync();
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        const double rate = std::round(batch / s * 100) / 100;
        // "ddim_*" keys as before for DDIM; every run also fills the sampler-neutral keys.
        const std::string key = guidance == 1.0 ? "samples_per_s" : "guided_samples_per_s";
        report[key + "_by_batch"][std::to_string(batch)] = rate;
        if (bi == 0) {
          report[key] = rate;
          if (sampler == SamplerKind::kDdim) report["ddim_" + key] = rate;
        }
        std::printf("%s-%d batch %d guidance %.0f: %.3f s  (%.2f samples/s)\n", SamplerName(sampler), a->steps, batch,
                    guidance, s, batch / s);
      }
    }
    if (a->train_batch > 0) {
      // The course reference's timing: a fresh network in train mode, Adam 1e-3, random images,
      // t uniform in 1..T, MSE on the noise; 2 warm-up steps, 10 timed.
      torch::AutoGradMode enable_grad(true);
      torch::manual_seed(0);
      ContextUnet trained(info.arch);
      trained->to(device);
      trained->train();
      torch::optim::Adam opt(trained->parameters(), torch::optim::AdamOptions(1e-3));
      const int n = a->train_batch;
      const int T = info.schedule.timesteps;
      const torch::Tensor x0 = torch::randn({n, info.arch.in_channels, info.arch.height, info.arch.height}).to(device);
      const torch::Tensor ctx =
          torch::one_hot(torch::randint(0, info.arch.n_cfeat, {n}), info.arch.n_cfeat).to(torch::kFloat32).to(device);
      const std::pair<torch::Tensor, torch::Tensor> tables = ForwardProcessTables(schedule, device);
      const torch::Tensor& sqrt_ab = tables.first;  // named, not bound: lambdas below capture them
      const torch::Tensor& sqrt_1mab = tables.second;
      auto step = [&] {
        opt.zero_grad();
        torch::Tensor noise = torch::randn_like(x0);
        torch::Tensor t = torch::randint(1, T + 1, {n}, torch::kInt64).to(device);
        torch::Tensor pred = trained->forward(ForwardDiffuse(x0, t, noise, sqrt_ab, sqrt_1mab),
                                              t.to(torch::kFloat32) / static_cast<float>(T), ctx);
        torch::mse_loss(pred, noise).backward();
        opt.step();
      };
      for (int i = 0; i < 2; ++i) step();
      sync();
      const auto start = Clock::now();
      for (int i = 0; i < 10; ++i) step();
      sync();
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      report["train_batch"] = n;
      report["train_images_per_s"] = std::round(n * 10 / s * 10) / 10;
      std::printf("training batch %d: %.1f images/s\n", n, n * 10 / s);
    }
    std::printf("%s\n", report.dump().c_str());
  });
}

}  // namespace spritediff
