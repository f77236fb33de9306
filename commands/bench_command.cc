#include "commands/commands.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "core/checkpoint.h"
#include "core/runtime.h"
#include "core/sampler.h"
#include "core/sampling_defaults.h"
#include "core/step_graphs.h"
#include "core/trainer.h"

namespace spritediff {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// n rows at the model's default sampling, one-hot labels in turn, seeds 1000, 1001, ...
std::vector<RowSpec> FixedSeedRows(const SamplingDefaults& d, int n_cfeat, int n) {
  std::vector<RowSpec> specs(n);
  for (int i = 0; i < n; ++i) {
    specs[i].sampler = d.sampler;
    specs[i].steps = d.steps;
    specs[i].eta = d.eta;
    specs[i].guidance = d.guidance;
    specs[i].context.assign(n_cfeat, 0.0f);
    specs[i].context[i % n_cfeat] = 1.0f;
    specs[i].seed = 1000 + i;
  }
  return specs;
}

// Two image sets compared as the PNGs store them ([-1, 1] -> 0..255): printed, and returned as
// {max_pixel_diff, pixels_off_by_more_than_8, mean_abs_diff}.
nlohmann::json ComparePixels(const char* name, const torch::Tensor& p, const torch::Tensor& q) {
  auto pixels = [](const torch::Tensor& x) { return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch::kInt32); };
  const torch::Tensor pc = p.cpu(), qc = q.cpu();
  const torch::Tensor diff = (pixels(pc) - pixels(qc)).abs();
  const int64_t max_diff = diff.max().item<int64_t>();
  const double over8 = (diff > 8).to(torch::kFloat64).mean().item<double>();
  const double mean_abs = (pc - qc).abs().mean().item<double>();
  std::printf("%-22s max pixel difference %3lld / 255, %.4f%% of values off by > 8, mean |diff| %.2e\n", name,
              static_cast<long long>(max_diff), over8 * 100, mean_abs);
  return {{"max_pixel_diff", max_diff}, {"pixels_off_by_more_than_8", over8}, {"mean_abs_diff", mean_abs}};
}

}  // namespace

void AddBenchCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    std::string model;
    std::vector<int> batches{1, 4, 16, 32, 64};
    std::vector<int> ddim_batches{32};
    int steps = kDefaultDdimSteps;
    int repeats = 20;
    int sample_repeats = 1;
    std::string sampler = "ddim";
    bool fold_batchnorm = false;
    bool cudnn_benchmark = false;
    bool nchw = false;
    int train_batch = 0;
    std::string train_precision = "fp32";
    int check_cpu = 0;
    int check_precision = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "offline speed figures: forward ms per batch size, DDIM samples/s");
  cmd->add_option("--model", a->model, "model directory or name (default: a fresh n_feat=64 16x16 network)");
  cmd->add_option("--batches", a->batches, "batch sizes for the forward timing")->delimiter(',')->capture_default_str();
  cmd->add_option("--ddim-batch", a->ddim_batches, "batch(es) of the sampling runs, e.g. 32,64; the first one "
                  "fills the single-valued keys")->delimiter(',')->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_flag("--fold-batchnorm", a->fold_batchnorm, "fold BatchNorms into their convolutions first (as serving does "
                "with fold_batchnorm in the config)");
  cmd->add_flag("--cudnn-benchmark", a->cudnn_benchmark, "on a GPU: let cuDNN time its convolution algorithms per "
                "shape and keep the fastest (first use of a shape is slower)");
  cmd->add_flag("--nchw", a->nchw, "on a GPU: keep the network in the NCHW layout instead of channels-last (what "
                "sample, eval and serve use there), to time the difference");
  cmd->add_option("--train-batch", a->train_batch, "also time training steps at this batch (Adam, MSE on the noise, "
                  "as the course's reference times them); 0 = skip")->check(CLI::Range(0, 4096))->capture_default_str();
  cmd->add_option("--train-precision", a->train_precision, "precision of the timed training steps: fp32, or bf16 "
                  "(mixed: bf16 convolutions, float32 weights, as train --training-precision bf16)")
      ->check(CLI::IsMember({"fp32", "bf16"}))->capture_default_str();
  cmd->add_option("--check-cpu", a->check_cpu, "on a GPU: also sample this many fixed seeds (the model's default "
                  "sampling, labels in turn) on the GPU eagerly, with CUDA graphs and on the CPU, and print the "
                  "largest pixel difference between them (needs --model); 0 = skip")
      ->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_option("--check-precision", a->check_precision, "also sample this many fixed seeds (the model's default "
                  "sampling, labels in turn) in fp32 and in bf16 on this device and print the largest pixel "
                  "difference (needs --model); 0 = skip")
      ->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_option("--steps", a->steps, "sampling steps")->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--sampler", a->sampler, "sampler of the sampling run: " + SamplerNames())
      ->check(CLI::IsMember(SamplerNameList()))
      ->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "timed forwards per batch size")->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd->add_option("--sample-repeats", a->sample_repeats, "timed sampling runs per batch and guidance; the median "
                  "is reported (on a shared machine one run can catch a slow moment)")
      ->check(CLI::Range(1, 100))->capture_default_str();
  cmd->callback([a, &common] {
    AppConfig config = ResolveConfig(common);
    const std::string device_name = PrepareCompute(config);
    const torch::Device device(device_name);
    if (a->cudnn_benchmark && !device.is_cuda()) Fail("--cudnn-benchmark is for a GPU: run it with --device cuda");
    at::globalContext().setBenchmarkCuDNN(a->cudnn_benchmark);
    if (a->nchw && !device.is_cuda()) Fail("--nchw is for a GPU (a CPU network is always NCHW): run it with --device cuda");
    if (a->check_cpu > 0 && a->model.empty()) Fail("--check-cpu needs --model");
    if (a->check_cpu > 0 && !device.is_cuda()) Fail("--check-cpu compares a GPU with the CPU: run it with --device cuda");
    if (a->check_precision > 0 && a->model.empty()) Fail("--check-precision needs --model");
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
    AppConfig bench_config = config;  // bench folds by its flag, not by the config
    bench_config.fold_batchnorm = a->fold_batchnorm ? "true" : "false";
    const bool bf16 = PrepareForInference(net, bench_config, device_name, !a->nchw);
    torch::NoGradGuard no_grad;
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    nlohmann::json report = {{"device", device_name}, {"threads", at::get_num_threads()}, {"blas", CpuBlasName()},
                             {"n_feat", info.arch.n_feat}, {"height", info.arch.height},
                             {"parameters", ParameterCount(*net)}, {"fold_batchnorm", a->fold_batchnorm},
                             {"cudnn_benchmark", a->cudnn_benchmark}, {"channels_last", net->channels_last()},
                             {"precision", bf16 ? "bf16" : "fp32"}};
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
    // On a GPU, every sampling figure is also taken with the step replayed as CUDA graphs.
    std::unique_ptr<StepGraphs> graphs;
    if (device.is_cuda() && StepGraphs::CompiledWithCuda()) {
      int most = 1;
      for (int b : a->ddim_batches) most = std::max(most, b);
      graphs = std::make_unique<StepGraphs>(net, device, most);
    }
    report["cuda_graphs"] = graphs != nullptr;
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
      if (graphs != nullptr) {
        SampleAll(net, schedule, one, device, graphs.get());  // warm-up and capture
        sync();
        const auto gstart = Clock::now();
        for (int i = 0; i < a->repeats; ++i) SampleAll(net, schedule, one, device, graphs.get());
        sync();
        const double gms =
            std::chrono::duration<double, std::milli>(Clock::now() - gstart).count() / (a->repeats * a->steps);
        report["step_ms_batch1_graphs"] = std::round(gms * 1000) / 1000;
        report["graph_speedup_batch1"] = std::round(ms / gms * 100) / 100;
        std::printf("one row, %s step, CUDA graph: %.3f ms (%.2fx eager)\n", SamplerName(sampler), gms, ms / gms);
      }
      // The same steps as the daemon's scheduler runs them: each one waited for before the next is
      // prepared (no overlap of host and device), so a step's time is its latency.
      auto waited_step_ms = [&](StepGraphs* g) {
        double total = 0;
        int counted = 0;
        for (int i = 0; i <= a->repeats; ++i) {  // run 0 is a warm-up
          SampleRow row(one.front(), schedule, info.arch, device);
          WaitForDevice(device);
          while (!row.done()) {
            const auto s0 = Clock::now();
            DenoiseStep(net, schedule, {&row}, false, g);
            WaitForDevice(device);
            if (i > 0) {
              total += std::chrono::duration<double, std::milli>(Clock::now() - s0).count();
              ++counted;
            }
          }
        }
        return total / counted;
      };
      const double lat = waited_step_ms(nullptr);
      report["step_latency_ms_batch1"] = std::round(lat * 1000) / 1000;
      std::printf("one row, %s step waited for: %.3f ms\n", SamplerName(sampler), lat);
      if (graphs != nullptr) {
        const double glat = waited_step_ms(graphs.get());
        report["step_latency_ms_batch1_graphs"] = std::round(glat * 1000) / 1000;
        report["graph_latency_speedup_batch1"] = std::round(lat / glat * 100) / 100;
        std::printf("one row, %s step waited for, CUDA graph: %.3f ms (%.2fx eager)\n", SamplerName(sampler), glat,
                    lat / glat);
      }
    }
    for (size_t bi = 0; bi < a->ddim_batches.size(); ++bi) {
      const int batch = a->ddim_batches[bi];
      for (double guidance : {1.0, 2.0}) {
        const std::vector<RowSpec> specs = make_specs(batch, guidance);
        SampleAll(net, schedule, specs, device);  // warm-up
        sync();
        std::vector<double> runs;
        for (int r = 0; r < a->sample_repeats; ++r) {
          const auto start = Clock::now();
          SampleAll(net, schedule, specs, device);
          sync();
          runs.push_back(std::chrono::duration<double>(Clock::now() - start).count());
        }
        std::sort(runs.begin(), runs.end());
        const double s = runs[runs.size() / 2];  // the median (the upper one of an even count)
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
        if (graphs != nullptr) {
          SampleAll(net, schedule, specs, device, graphs.get());  // warm-up and capture
          sync();
          const auto gstart = Clock::now();
          SampleAll(net, schedule, specs, device, graphs.get());
          sync();
          const double gs = std::chrono::duration<double>(Clock::now() - gstart).count();
          report[key + "_graphs_by_batch"][std::to_string(batch)] = std::round(batch / gs * 100) / 100;
          std::printf("%s-%d batch %d guidance %.0f, CUDA graphs: %.3f s  (%.2f samples/s, %.2fx eager)\n",
                      SamplerName(sampler), a->steps, batch, guidance, gs, batch / gs, s / gs);
        }
      }
    }
    if (graphs != nullptr) {
      report["graphs_captured"] = graphs->captured_graphs();
      if (!graphs->capture_error().empty()) report["graph_error"] = graphs->capture_error();
    }
    // A fresh copy of the model for a comparison path: on `where`, folded as `net` is, in bf16 or not.
    auto fresh_copy = [&](const torch::Device& where, bool bf16_copy) {
      Result<LoadedModel> copy = LoadModel(ModelDir(a->model, config));
      if (!copy.ok()) Fail(copy.status().message());
      copy->net->to(where);
      ConvertForInference(copy->net, where, a->fold_batchnorm, bf16_copy, !a->nchw);
      return copy->net;
    };
    if (a->check_cpu > 0) {
      // The same rows on three paths; noise comes from each row's CPU generator on every path.
      const SamplingDefaults d = EffectiveSamplingDefaults(info);
      const std::vector<RowSpec> specs = FixedSeedRows(d, info.arch.n_cfeat, a->check_cpu);
      StepGraphs check_graphs(net, device, a->check_cpu);
      const torch::Tensor gpu = SampleAll(net, schedule, specs, device);
      const torch::Tensor graphed = SampleAll(net, schedule, specs, device, &check_graphs);
      ContextUnet cpu_net = fresh_copy(torch::kCPU, bf16);  // in the precision `net` runs in
      const torch::Tensor cpu = SampleAll(cpu_net, schedule, specs, torch::kCPU);
      report["check_cpu"]["rows"] = a->check_cpu;
      report["check_cpu"]["sampling"] = SamplingDefaultsToJson(d);
      report["check_cpu"]["gpu_eager_vs_cpu"] = ComparePixels("gpu_eager_vs_cpu", gpu, cpu);
      report["check_cpu"]["gpu_graphs_vs_cpu"] = ComparePixels("gpu_graphs_vs_cpu", graphed, cpu);
      report["check_cpu"]["gpu_graphs_vs_eager"] = ComparePixels("gpu_graphs_vs_eager", graphed, gpu);
    }
    if (a->check_precision > 0) {
      // Two fresh copies of the model, one per precision (folded alike), the same rows.
      const SamplingDefaults d = EffectiveSamplingDefaults(info);
      const std::vector<RowSpec> specs = FixedSeedRows(d, info.arch.n_cfeat, a->check_precision);
      ContextUnet fp32_net = fresh_copy(device, false), bf16_net = fresh_copy(device, true);
      const torch::Tensor fp32_images = SampleAll(fp32_net, schedule, specs, device);
      const torch::Tensor bf16_images = SampleAll(bf16_net, schedule, specs, device);
      report["check_precision"] = ComparePixels("bf16_vs_fp32", bf16_images, fp32_images);
      report["check_precision"]["rows"] = a->check_precision;
      report["check_precision"]["sampling"] = SamplingDefaultsToJson(d);
    }
    if (a->train_batch > 0) {
      // The course reference's timing: a fresh network in train mode, Adam 1e-3, random images,
      // t uniform in 1..T, MSE on the noise; 2 warm-up steps, 10 timed.
      torch::AutoGradMode enable_grad(true);
      torch::manual_seed(0);
      ContextUnet trained(info.arch);
      trained->to(device);
      trained->train();
      trained->UseBFloat16Convolutions(a->train_precision == "bf16");
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
      report["train_precision"] = a->train_precision;
      report["train_images_per_s"] = std::round(n * 10 / s * 10) / 10;
      std::printf("training batch %d: %.1f images/s\n", n, n * 10 / s);
    }
    std::printf("%s\n", report.dump().c_str());
  });
}

}  // namespace spritediff
