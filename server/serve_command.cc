#include "server/serve_command.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <iostream>

#include "core/runtime.h"
#include "server/model_registry.h"
#include "server/model_watcher.h"
#include "server/auth.h"
#include "server/job_runner.h"
#include "server/listen_security.h"
#include "server/metrics.h"
#include "server/sprites_service.h"
#include "server/startup_sweep.h"
#include "server/training_service.h"

namespace spritediff {

void AddServeCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    int port = -1;
    int metrics_port = -1;
    std::string bind;
    std::string models_dir;
    std::string default_model;
    std::string data_root;
    std::string state_dir;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("serve", "serve every model under the models dir over gRPC");
  cmd->add_option("--port", a->port, "TCP port (overrides config; default 50051)")->check(CLI::Range(0, 65535));
  cmd->add_option("--metrics-port", a->metrics_port, "Prometheus /metrics HTTP port; 0 = off (overrides config)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--bind", a->bind, "bind address (overrides config; default 127.0.0.1)");
  cmd->add_option("--models-dir", a->models_dir, "directory of model directories (overrides config)");
  cmd->add_option("--default-model", a->default_model, "model used when a request names none (overrides config)");
  cmd->add_option("--data-root", a->data_root, "folder that training datasets must lie under (overrides config)");
  cmd->add_option("--state-dir", a->state_dir, "training job records and checkpoints (overrides config)");
  cmd->callback([a, &common] {
    // Signals are taken by sigwait below; every thread started from here on inherits the mask.
    // First thing, before anything can start a thread: making gRPC's credentials runs
    // grpc_init, which can start gRPC's timer and executor threads, and a SIGTERM the kernel
    // hands to an unmasked thread takes the default action, ending the daemon with status 143
    // instead of draining it (MemoryTest saw 143 once, under load, with the mask set later).
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);  // must not kill the daemon: operators send it after renewing certificates
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    const std::string allocator = HeapAllocatorName();
#ifdef __GLIBC__
    // With glibc's malloc (a build without tcmalloc): two arenas unless the operator set
    // MALLOC_ARENA_MAX. With glibc's default (8 per core) the threads that build a large batch
    // each keep their own arena's peak, and RSS stepped up by 8% in the second half of a
    // 10-minute load (scripts/rss-soak.sh); with 2 it stayed within 1.3%, at the same latency.
    if (allocator == "glibc" && std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
#endif
    AppConfig config = ResolveConfig(common);
    if (a->port >= 0) config.port = a->port;
    if (a->metrics_port >= 0) config.metrics_port = a->metrics_port;
    if (!a->bind.empty()) config.bind = a->bind;
    if (!a->models_dir.empty()) config.models_dir = a->models_dir;
    if (!a->default_model.empty()) config.default_model = a->default_model;
    if (!a->data_root.empty()) config.data_root = a->data_root;
    if (!a->state_dir.empty()) config.state_dir = a->state_dir;
    Status valid = config.Validate();
    if (!valid.ok()) Fail(valid.message());
    const std::string refusal = config.InsecurePublicRefusal();
    if (!refusal.empty()) Fail(refusal);
    Authorizer auth;
    if (!config.auth_token_file.empty()) {
      Result<Authorizer> loaded = Authorizer::FromFile(config.auth_token_file);
      if (!loaded.ok()) Fail(loaded.status().message());
      auth = *loaded;
      spdlog::info("authentication: tokens from {} (SIGHUP re-reads it)", config.auth_token_file);
    }
    Result<ServerCredentials> credentials = MakeServerCredentials(config);
    if (!credentials.ok()) Fail(credentials.status().message());
    TlsFiles* tls = credentials->files.get();

    Result<std::string> device = ResolveDevice(config.device);
    if (!device.ok()) Fail(device.status().message());
    const int threads = ConfigureThreads(config.threads);
    const std::string blas_warning = SlowBlasWarning(*device);
    if (!blas_warning.empty()) spdlog::warn(blas_warning);
    const SweepReport swept = SweepStartup(config.models_dir, config.state_dir);
    if (swept.temporaries + swept.orphan_weights > 0) {
      spdlog::warn("start-up sweep: removed {} temporaries and {} orphan weights files ({} bytes) left by a crash",
                   swept.temporaries, swept.orphan_weights, swept.bytes);
    }
    SchedulerLimits limits;  // by name: max_overtakes keeps its default
    limits.max_batch_rows = config.max_batch_rows;
    limits.cpu_batch_rows = config.cpu_batch_rows;
    limits.cpu_batch_wait_steps = config.cpu_batch_wait_steps;
    limits.cpu_overload_batch_rows = config.cpu_overload_batch_rows;
    limits.max_queued_rows = config.max_queued_rows;
    limits.threads = threads;
    Result<bool> fold = ResolveFoldBatchNorm(config.fold_batchnorm, *device);
    if (!fold.ok()) Fail(fold.status().message());
    limits.fold_batchnorm = *fold;
    limits.cuda_graphs = config.cuda_graphs;
    Result<bool> bf16 = ResolveBFloat16(config.precision, *device);
    if (!bf16.ok()) Fail(bf16.status().message());
    limits.bf16 = *bf16;
    limits.max_queue_wait_s = config.max_queue_wait_s;
    limits.max_frames_in_delivery = config.max_pending_frames;
    ModelRegistry registry(config.models_dir, config.default_model, torch::Device(*device), limits);
    Status loaded = registry.LoadAll();
    if (!loaded.ok()) Fail(loaded.message());
    std::unique_ptr<ModelWatcher> watcher;
    if (config.watch_models_dir) {
      // A change must stay put this long before it is loaded: a copy still writing is not.
      constexpr std::chrono::milliseconds kSettle{1000};
      watcher = std::make_unique<ModelWatcher>(registry, config.models_dir,
                                               std::chrono::seconds(config.models_poll_s), kSettle);
      watcher->Start();
    }

    TrainingLimits training;
    training.data_root = config.data_root;
    training.state_dir = config.state_dir;
    training.models_dir = config.models_dir;
    training.device = *device;
    training.max_concurrent_jobs = config.max_concurrent_jobs;
    training.threads = config.training_threads;
    training.resume_interrupted = config.resume_interrupted_jobs;
    training.max_queued_jobs = config.max_queued_jobs;
    training.max_n_feat_x_image_size = config.max_n_feat_x_image_size;
    training.max_epochs_x_images = config.max_epochs_x_images;
    training.finished_job_retention_h = config.finished_job_retention_h;
    training.training_precision = config.training_precision;
    JobRunner jobs(training, registry);
    Status started = jobs.Start();
    if (!started.ok()) Fail(started.message());

    RequestMetrics request_metrics;
    MetricsServer metrics(registry, jobs, request_metrics);
    metrics.SetDiskPaths(config.models_dir, config.state_dir);
    if (config.metrics_port > 0) {
      Status listening = metrics.Start(config.metrics_bind, config.metrics_port);
      if (!listening.ok()) Fail(listening.message());
    }
    SpritesService sprites(registry, config, request_metrics, auth);
    TrainingService trainer(jobs, auth);
    grpc::EnableDefaultHealthCheckService(true);
    if (config.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    const std::string address = config.bind + ":" + std::to_string(config.port);
    int bound_port = 0;
    builder.AddListeningPort(address, credentials->credentials, &bound_port);
    ApplyConnectionPolicy(config, builder);
    builder.RegisterService(&sprites);
    builder.RegisterService(&trainer);
    builder.SetMaxSendMessageSize(64 << 20);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (!server || bound_port == 0) Fail("cannot listen on " + address + " (address in use or not permitted?)");
    grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
    health->SetServingStatus("spritediff.v1.Sprites", true);
    health->SetServingStatus("spritediff.v1.Training", config.max_concurrent_jobs > 0);
    spdlog::info("spritediffd listening on {}:{} (device {}, {}, {} threads, CPU BLAS {}, heap {}, default model {}, "
                 "metrics {}, TLS {}, tokens {}, config {})",
                 config.bind, bound_port, *device, limits.bf16 ? "bf16" : "fp32", threads, CpuBlasName(), allocator,
                 registry.default_model(),
                 config.metrics_port > 0
                     ? "http://" + config.metrics_bind + ":" + std::to_string(config.metrics_port) + "/metrics"
                     : std::string("off"),
                 config.tls_cert_file.empty() ? "off" : (config.tls_client_ca_file.empty() ? "on" : "mutual"),
                 auth.enabled() ? "required" : "off", config.loaded_from);

    // SIGHUP re-reads the token file and the TLS files; the TLS files are also polled every
    // tls_reload_s, so a renewal that sends no signal is picked up too.
    // A signal always gets a log line; the poll logs changes and each new error once.
    std::string last_tls_error;
    auto reload_tls = [&](bool on_signal) {
      const char* why = on_signal ? "SIGHUP" : "TLS file check";
      Result<bool> changed = tls->Reload();
      if (changed.ok()) {
        if (*changed) spdlog::info("{}: TLS certificate reloaded from {}", why, config.tls_cert_file);
        else if (on_signal) spdlog::info("SIGHUP: TLS files unchanged");
        last_tls_error.clear();
      } else if (on_signal || changed.status().message() != last_tls_error) {
        last_tls_error = changed.status().message();
        spdlog::error("{}: keeping the TLS certificate in use: {}", why, last_tls_error);
      }
    };
    // The main thread waits for signals and, once a second, does the periodic work: handing
    // free heap pages back (release_idle_s, release_memory_s) and the TLS file check (tls_reload_s).
    using Clock = std::chrono::steady_clock;
    Clock::time_point next_release = Clock::now() + std::chrono::seconds(config.release_memory_s);
    Clock::time_point next_tls_check = Clock::now() + std::chrono::seconds(config.tls_reload_s);
    int received = 0;
    // Whether the daemon did anything since the last call: a sampling step finished, a row is
    // queued or running (one step may outlast the idle time), or a training job is busy.
    int64_t last_steps = -1;
    auto active = [&] {
      int64_t steps = 0;
      bool rows = false;
      for (const std::shared_ptr<ServedModel>& m : registry.List()) {
        const SchedulerStats stats = m->scheduler->stats();
        steps += stats.steps;
        rows = rows || stats.queued_rows > 0 || stats.running_rows > 0;
      }
      const bool stepped = steps != last_steps;
      last_steps = steps;
      return stepped || rows || jobs.busy_workers() > 0;
    };
    Clock::time_point idle_since = Clock::now();  // active() false at every tick since then
    bool released = false;                        // free pages handed back since then
    for (;;) {
      const timespec tick{1, 0};
      received = sigtimedwait(&signals, nullptr, &tick);
      if (received < 0) {  // the tick (EAGAIN) or EINTR
        const Clock::time_point now = Clock::now();
        if (!watcher) registry.ReapRetired();  // a model a job replaced (the watcher's thread does it otherwise)
        if (allocator == "tcmalloc") {
          // Once the daemon has been idle for release_idle_s (AppConfig says why not sooner).
          if (active()) {
            idle_since = now;
            released = false;
          }
          if (config.release_idle_s > 0 && !released && now - idle_since >= std::chrono::seconds(config.release_idle_s)) {
            ReleaseFreeHeapMemory();
            released = true;
          }
        } else if (config.release_memory_s > 0 && now >= next_release) {
          ReleaseFreeHeapMemory();
          next_release = now + std::chrono::seconds(config.release_memory_s);
        }
        if (tls && now >= next_tls_check) {
          reload_tls(/*on_signal=*/false);
          next_tls_check = now + std::chrono::seconds(config.tls_reload_s);
        }
        continue;
      }
      if (received != SIGHUP) break;
      if (auth.enabled()) {
        Result<size_t> reloaded = auth.Reload();
        if (reloaded.ok()) spdlog::info("SIGHUP: {} tokens in use from {}", *reloaded, config.auth_token_file);
        else spdlog::error("SIGHUP: keeping the previous tokens: {}", reloaded.status().message());
      }
      if (tls) reload_tls(/*on_signal=*/true);
    }
    spdlog::info("signal {}: draining (grace {}s)", received == SIGINT ? "SIGINT" : "SIGTERM", config.shutdown_grace_s);
    health->SetServingStatus(false);
    jobs.Stop();  // running jobs save their state; their watchers are told to come back later
    // New calls are refused at once; calls in flight get the grace period, then are cancelled.
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(config.shutdown_grace_s));
    if (watcher) watcher->Stop();
    registry.StopAll();
    server->Wait();
    metrics.Stop();
    spdlog::info("stopped");
  });
}

}  // namespace spritediff
